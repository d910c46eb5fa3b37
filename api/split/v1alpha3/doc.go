// Package v1alpha3 holds the SMI TrafficSplit API at split.smi-spec.io/v1alpha3, served for clients
// such as Flagger. It has the same schema as v1alpha4. Objects are stored as v1alpha4; see
// docs/crds/trafficsplit.md for why no conversion webhook is needed.
//
// +kubebuilder:object:generate=true
// +groupName=split.smi-spec.io
package v1alpha3

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is the group and version of this package's kinds.
var GroupVersion = schema.GroupVersion{Group: "split.smi-spec.io", Version: "v1alpha3"}

// AddToScheme adds this package's kinds to a runtime.Scheme.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &TrafficSplit{}, &TrafficSplitList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
