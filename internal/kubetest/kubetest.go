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
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	policyv1alpha1 "github.com/trellis-mesh/trellis/api/policy/v1alpha1"
	splitv1alpha2 "github.com/trellis-mesh/trellis/api/split/v1alpha2"
	splitv1alpha3 "github.com/trellis-mesh/trellis/api/split/v1alpha3"
	splitv1alpha4 "github.com/trellis-mesh/trellis/api/split/v1alpha4"
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

// Scheme returns a scheme with the Kubernetes built-in kinds and every Trellis API version.
func Scheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		clientgoscheme.AddToScheme,
		policyv1alpha1.AddToScheme,
		splitv1alpha2.AddToScheme,
		splitv1alpha3.AddToScheme,
		splitv1alpha4.AddToScheme,
	} {
		if err := add(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Start starts an apiserver for the test and stops it when the test ends.
func Start(t testing.TB) *Env {
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
