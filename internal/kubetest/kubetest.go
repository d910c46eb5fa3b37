// Package kubetest starts a real kube-apiserver and etcd (controller-runtime's envtest) with
// Trellis's CRDs installed, for tests of CRD validation, controllers and the webhook.
//
// The binaries come from hack/k8s-binaries.sh, which builds kube-apiserver from the Go module
// proxy and caches it; `make test` exports KUBEBUILDER_ASSETS for you. A plain `go test`
// without KUBEBUILDER_ASSETS skips these tests with a message saying how to run them, unless
// TRELLIS_REQUIRE_ENVTEST=1 (set by `make test` and CI), where a missing apiserver fails.
package kubetest

import (
	"os"
	"path/filepath"
	goruntime "runtime"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/trellis-mesh/trellis/api/scheme"
)

// Env is a running apiserver with the CRDs installed.
type Env struct {
	Config *rest.Config
	Client client.Client
	Scheme *runtime.Scheme
}

// RepoRoot is the repository's top directory.
func RepoRoot() string {
	_, file, _, _ := goruntime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Scheme returns the scheme of every Trellis component.
func Scheme() (*runtime.Scheme, error) { return scheme.New() }

// Start starts an apiserver for the test and stops it when the test ends.
func Start(t testing.TB) *Env {
	t.Helper()
	return StartWith(t, nil)
}

// StartWith is Start for a test that needs its own apiserver setup: configure, when not nil,
// is called with the environment just before it starts, e.g. to set apiserver flags with
// env.ControlPlane.GetAPIServer().Configure().Set(name, value).
func StartWith(t testing.TB, configure func(env *envtest.Environment)) *Env {
	t.Helper()
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		msg := "KUBEBUILDER_ASSETS is not set, so there is no kube-apiserver for this test: " +
			"run `make test`, or `export KUBEBUILDER_ASSETS=$(hack/k8s-binaries.sh)` first"
		if os.Getenv("TRELLIS_REQUIRE_ENVTEST") == "1" {
			t.Fatal(msg)
		}
		t.Skip("SKIPPED envtest: " + msg)
	}
	scheme, err := Scheme()
	if err != nil {
		t.Fatalf("build scheme: %v", err)
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(RepoRoot(), "charts", "trellis", "crds")},
		ErrorIfCRDPathMissing: true,
		Scheme:                scheme,
	}
	if configure != nil {
		configure(env)
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start kube-apiserver and etcd from %s: %v", os.Getenv("KUBEBUILDER_ASSETS"), err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stop envtest: %v", err)
		}
	})
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	return &Env{Config: cfg, Client: c, Scheme: scheme}
}
