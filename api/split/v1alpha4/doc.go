// Package v1alpha4 holds the SMI TrafficSplit API (split.smi-spec.io/v1alpha4), the version
// Trellis stores. v1alpha2 and v1alpha3 are served from the same stored objects; see
// docs/crds/trafficsplit.md for why no conversion webhook is needed.
//
// +kubebuilder:object:generate=true
// +groupName=split.smi-spec.io
package v1alpha4

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is the group and version of this package's kinds.
var GroupVersion = schema.GroupVersion{Group: "split.smi-spec.io", Version: "v1alpha4"}

// AddToScheme adds this package's kinds to a runtime.Scheme.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &TrafficSplit{}, &TrafficSplitList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
