package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// AuthorizationPolicy says which callers may reach the selected workloads, and on which
// ports. Once at least one AuthorizationPolicy selects a workload, the workload's sidecar
// denies every caller that no rule of those policies allows (default deny). Callers are
// recognised by the SPIFFE identity of their mTLS certificate, so plaintext callers, which
// have none, are denied too.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=authz,categories=trellis
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AuthorizationPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec   AuthorizationPolicySpec `json:"spec"`
	Status PolicyStatus            `json:"status,omitempty"`
}

// AuthorizationPolicySpec selects workloads and lists who may call them.
type AuthorizationPolicySpec struct {
	// Selector picks the pods, in the policy's namespace, that the policy protects.
	// {} selects every pod in the namespace.
	// +required
	Selector WorkloadSelector `json:"selector"`

	// Rules allow callers in; a call is allowed when any rule allows it. A policy with no
	// rules denies every call to the selected pods.
	// +optional
	// +kubebuilder:validation:MaxItems=32
	Rules []AuthorizationRule `json:"rules,omitempty"`
}

// AuthorizationRule allows the callers in From to reach Ports.
type AuthorizationRule struct {
	// From lists the callers this rule allows; matching any entry is enough.
	// +required
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	From []AuthorizationSource `json:"from"`

	// Ports are the workload's own (container) ports this rule opens. Empty: every port.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:Minimum=1
	// +kubebuilder:validation:items:Maximum=65535
	Ports []int32 `json:"ports,omitempty"`
}

// AuthorizationSource is one kind of caller: set exactly one field.
//
// +kubebuilder:validation:XValidation:rule="[has(self.serviceAccount), has(self.__namespace__), has(self.identity)].filter(x, x).size() == 1",message="set exactly one of serviceAccount, namespace or identity in each from entry"
type AuthorizationSource struct {
	// ServiceAccount allows the pods that run as this ServiceAccount.
	// +optional
	ServiceAccount *ServiceAccountReference `json:"serviceAccount,omitempty"`

	// Namespace allows every meshed pod in this namespace.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="must be a namespace name: lowercase letters, digits and '-'"
	Namespace *string `json:"namespace,omitempty"`

	// Identity allows the caller whose certificate carries exactly this SPIFFE ID, for
	// example spiffe://cluster.local/ns/shop/sa/frontend.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:XValidation:rule="self.matches('^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)+$')",message="must be a SPIFFE ID such as spiffe://cluster.local/ns/shop/sa/frontend: scheme spiffe, a lowercase trust domain, and a path of letters, digits, '.', '_' and '-'"
	Identity *string `json:"identity,omitempty"`
}

// ServiceAccountReference names a ServiceAccount.
type ServiceAccountReference struct {
	// Name of the ServiceAccount.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')",message="must be a ServiceAccount name: lowercase letters, digits, '-' and '.'"
	Name string `json:"name"`

	// Namespace of the ServiceAccount. Empty: the policy's namespace.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="must be a namespace name: lowercase letters, digits and '-'"
	Namespace string `json:"namespace,omitempty"`
}

// AuthorizationPolicyList is a list of AuthorizationPolicies.
//
// +kubebuilder:object:root=true
type AuthorizationPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AuthorizationPolicy `json:"items"`
}
