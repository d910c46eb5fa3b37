// Package v1alpha1 holds Trellis's own policy API, policy.trellis.dev/v1alpha1:
// TrafficPolicy (resilience for a Service), AuthorizationPolicy (who may call a workload)
// and MeshConfig (mesh-wide settings). docs/crds/ describes each kind for users.
//
// +kubebuilder:object:generate=true
// +groupName=policy.trellis.dev
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is the group and version of this package's kinds.
var GroupVersion = schema.GroupVersion{Group: "policy.trellis.dev", Version: "v1alpha1"}

// AddToScheme adds this package's kinds to a runtime.Scheme.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&TrafficPolicy{}, &TrafficPolicyList{},
		&AuthorizationPolicy{}, &AuthorizationPolicyList{},
		&MeshConfig{}, &MeshConfigList{},
	)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
