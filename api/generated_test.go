package api_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/trellis-mesh/trellis/internal/kubetest"
)

// TestChartCRDsMatchTheGoTypes regenerates the CRDs from api/ with the pinned controller-gen
// and compares them with the ones the chart ships, so a change to the types without
// `make generate` fails here instead of shipping stale CRDs.
func TestChartCRDsMatchTheGoTypes(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIPPED in -short mode: builds controller-gen")
	}
	root := kubetest.RepoRoot()
	out := t.TempDir()
	cmd := exec.Command("go", "tool", "-modfile=hack/tools/go.mod", "controller-gen",
		"crd", "paths=./api/...", "output:crd:artifacts:config="+out)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("controller-gen: %v\n%s", err, b)
	}
	committed := filepath.Join(root, "charts", "trellis", "crds")
	want, err := filepath.Glob(filepath.Join(out, "*.yaml"))
	if err != nil || len(want) == 0 {
		t.Fatalf("controller-gen wrote no CRDs (%v)", err)
	}
	have, _ := filepath.Glob(filepath.Join(committed, "*.yaml"))
	if len(have) != len(want) {
		t.Errorf("the chart has %d CRD files, the types generate %d: run make generate", len(have), len(want))
	}
	for _, w := range want {
		gen, _ := os.ReadFile(w)
		got, err := os.ReadFile(filepath.Join(committed, filepath.Base(w)))
		if err != nil {
			t.Errorf("%s: %v: run make generate", filepath.Base(w), err)
			continue
		}
		if !bytes.Equal(gen, got) {
			t.Errorf("charts/trellis/crds/%s differs from what api/ generates: run make generate", filepath.Base(w))
		}
	}
}
