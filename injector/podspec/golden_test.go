package podspec

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/internal/golden"
)

var update = flag.Bool("update", false, "rewrite testdata/out from the current injector")

// goldenInput is a testdata/in file: a pod, and the configuration it is injected with.
type goldenInput struct {
	// About says, as a sentence, what the case shows.
	About string `json:"about"`
	// NativeSidecars overrides the default (true) of the configuration.
	NativeSidecars *bool      `json:"nativeSidecars,omitempty"`
	Pod            corev1.Pod `json:"pod"`
}

// testConfig is DefaultConfig with a version that does not depend on the build.
func testConfig() Config {
	cfg := DefaultConfig()
	cfg.ProxyVersion = "v0.0.0-test"
	cfg.ProxyImage = "trellis/proxy:v0.0.0-test"
	return cfg
}

func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob(filepath.Join("testdata", "in", "*.yaml"))
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no golden inputs in testdata/in (err %v)", err)
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			var c goldenInput
			if err := yaml.UnmarshalStrict(raw, &c); err != nil {
				t.Fatalf("read %s: %v", in, err)
			}
			if c.About == "" {
				t.Fatalf("%s: say what the case shows in about:", in)
			}
			cfg := testConfig()
			if c.NativeSidecars != nil {
				cfg.NativeSidecars = *c.NativeSidecars
			}
			before := c.Pod.DeepCopy()
			pod, injectErr := Inject(&c.Pod, cfg)
			if diff := cmp.Diff(before, &c.Pod); diff != "" {
				t.Errorf("%s: Inject changed its input (-before +after):\n%s", c.About, diff)
			}
			var got []byte
			if injectErr != nil {
				got = []byte("# " + c.About + "\nerror: " + injectErr.Error() + "\n")
			} else {
				again, err := Inject(pod, cfg)
				if err != nil {
					t.Errorf("%s: a second pass failed: %v", c.About, err)
				} else if diff := cmp.Diff(pod, again); diff != "" {
					t.Errorf("%s: a second pass changed the pod (-first +second):\n%s", c.About, diff)
				}
				b, err := yaml.Marshal(pod)
				if err != nil {
					t.Fatal(err)
				}
				got = append([]byte("# "+c.About+"\n"), b...)
			}
			golden.Check(t, filepath.Join("testdata", "out", name+".yaml"), got, *update, c.About)
		})
	}
}
