// Package scheme builds the runtime.Scheme every Trellis component uses: Kubernetes'
// built-in kinds plus every served version of Trellis's APIs.
package scheme

import (
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	policyv1alpha1 "github.com/trellis-mesh/trellis/api/policy/v1alpha1"
	splitv1alpha2 "github.com/trellis-mesh/trellis/api/split/v1alpha2"
	splitv1alpha3 "github.com/trellis-mesh/trellis/api/split/v1alpha3"
	splitv1alpha4 "github.com/trellis-mesh/trellis/api/split/v1alpha4"
)

// New returns a scheme with the built-in kinds and Trellis's kinds.
func New() (*runtime.Scheme, error) {
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
