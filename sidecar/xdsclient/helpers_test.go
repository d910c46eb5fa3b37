package xdsclient

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/sidecar/config"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
	"github.com/trellis-mesh/trellis/controlplane/translate"
)

// goldenDir holds the control plane's own translation inputs: the sidecar is tested
// against exactly what the control plane emits.
var goldenDir = filepath.Join("..", "..", "controlplane", "translate", "testdata", "in")

// goldenInput is a translate testdata/in file (see controlplane/translate/golden_test.go).
type goldenInput struct {
	About string `json:"about"`
	Proxy struct {
		Pod meshstate.Key `json:"pod"`
	} `json:"proxy"`
	State meshstate.State `json:"state"`
}

func readGolden(t testing.TB, name string) *goldenInput {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(goldenDir, name+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var in goldenInput
	if err := yaml.UnmarshalStrict(b, &in); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return &in
}

// goldenNames lists the translate inputs.
func goldenNames(t testing.TB) []string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(goldenDir, "*.yaml"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no golden inputs in %s (err %v)", goldenDir, err)
	}
	var out []string
	for _, p := range paths {
		out = append(out, strings.TrimSuffix(filepath.Base(p), ".yaml"))
	}
	return out
}

// build translates a golden input with the control plane's own builder.
func build(t testing.TB, in *goldenInput) (*translate.Resources, error) {
	t.Helper()
	return translate.NewBuilder(meshstate.NewIndex(&in.State)).Build(translate.Proxy{Pod: in.Proxy.Pod})
}

func mustBuild(t testing.TB, name string) *translate.Resources {
	t.Helper()
	res, err := build(t, readGolden(t, name))
	if err != nil {
		t.Fatalf("translate %s: %v", name, err)
	}
	return res
}

func convertResources(r *translate.Resources) (*config.Config, error) {
	return Convert(r.Listeners, r.Routes, r.Clusters, r.Endpoints)
}
