package agent

import (
	"os/exec"
	"strings"
	"testing"
)

// TestTheSidecarImportsNoKubernetes keeps the design's promise: the sidecar only knows xDS
// and its certificates. It must not link Kubernetes' client libraries (they would triple
// its size and memory) nor the control plane's or the injector's packages.
func TestTheSidecarImportsNoKubernetes(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/trellis-mesh/trellis/cmd/trellis-proxy").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "k8s.io/") || strings.HasPrefix(pkg, "sigs.k8s.io/") ||
			strings.HasPrefix(pkg, "github.com/trellis-mesh/trellis/controlplane") ||
			strings.HasPrefix(pkg, "github.com/trellis-mesh/trellis/injector") {
			t.Errorf("trellis-proxy depends on %s", pkg)
		}
	}
}
