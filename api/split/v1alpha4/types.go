package v1alpha4

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TrafficSplit splits the traffic that clients send to a root Service across backend
// Services in proportion to their weights.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:storageversion
// +kubebuilder:resource:shortName=ts,categories=smi;trellis
// +kubebuilder:printcolumn:name="Service",type=string,JSONPath=`.spec.service`,description="The root service clients call"
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type TrafficSplit struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec   TrafficSplitSpec   `json:"spec"`
	Status TrafficSplitStatus `json:"status,omitempty"`
}

// TrafficSplitSpec is the desired split.
//
// +kubebuilder:validation:XValidation:rule="self.backends.all(b, b.service != self.service)",message="a backend cannot be the root service itself: list the versioned services (for example web-v1, web-v2) as backends"
// +kubebuilder:validation:XValidation:rule="self.backends.all(b, self.backends.exists_one(c, c.service == b.service))",message="each backend service may be listed only once: merge the duplicate entries into one and add up their weights"
// +kubebuilder:validation:XValidation:rule="self.backends.exists(b, b.weight > 0)",message="at least one backend needs a weight above 0, otherwise the split sends traffic nowhere"
type TrafficSplitSpec struct {
	// Service is the root (apex) Service that clients call, in the TrafficSplit's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",message="must be the name of a Service in this namespace: lowercase letters, digits and '-', starting with a letter"
	Service string `json:"service"`

	// Backends are the Services that receive the root service's traffic, each in
	// proportion to its weight divided by the sum of all weights.
	// +required
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	Backends []TrafficSplitBackend `json:"backends"`

	// Matches restricts the split to requests matching one of the named route groups.
	// Requests that match none go to the root service unsplit.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	Matches []TrafficSplitMatch `json:"matches,omitempty"`
}

// TrafficSplitBackend is one destination of a split.
type TrafficSplitBackend struct {
	// Service is the name of a Service in the TrafficSplit's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",message="must be the name of a Service in this namespace: lowercase letters, digits and '-', starting with a letter"
	Service string `json:"service"`

	// Weight is this backend's share, relative to the other backends' weights.
	// +required
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000000
	Weight int `json:"weight"`
}

// TrafficSplitMatch names a route group whose requests the split applies to.
type TrafficSplitMatch struct {
	// Kind of the referenced object; only HTTPRouteGroup is defined by SMI.
	// +required
	// +kubebuilder:validation:Enum=HTTPRouteGroup
	Kind string `json:"kind"`

	// Name of the referenced object, in the TrafficSplit's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// APIGroup of the referenced object; specs.smi-spec.io when empty.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	APIGroup *string `json:"apiGroup,omitempty"`
}

// TrafficSplitStatus is what the control plane observed and did.
type TrafficSplitStatus struct {
	// ObservedGeneration is the generation the conditions describe.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions: Accepted (the split is valid and programmed) and ResolvedRefs (every
	// referenced Service exists).
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// TrafficSplitList is a list of TrafficSplits.
//
// +kubebuilder:object:root=true
type TrafficSplitList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []TrafficSplit `json:"items"`
}
