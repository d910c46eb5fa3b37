package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MeshConfigName is the name of the one MeshConfig the control plane reads.
const MeshConfigName = "default"

// MeshConfig holds the mesh-wide settings. It is cluster-scoped and a singleton: the only
// MeshConfig is named "default". Without one, the defaults below apply.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,categories=trellis
// +kubebuilder:printcolumn:name="Trust Domain",type=string,JSONPath=`.spec.trustDomain`
// +kubebuilder:printcolumn:name="mTLS",type=string,JSONPath=`.spec.mtls.mode`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name == 'default'",message="the MeshConfig must be named \"default\": the control plane reads only that one"
type MeshConfig struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +optional
	// +kubebuilder:default={}
	Spec   MeshConfigSpec `json:"spec,omitempty"`
	Status PolicyStatus   `json:"status,omitempty"`
}

// MeshConfigSpec is the mesh-wide configuration.
type MeshConfigSpec struct {
	// TrustDomain is the trust domain of every SPIFFE ID in the mesh
	// (spiffe://<trustDomain>/ns/<namespace>/sa/<serviceaccount>). It cannot be changed once
	// set, because every workload certificate and authorization rule names it.
	// +optional
	// +kubebuilder:default="cluster.local"
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=255
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9._-]+$')",message="a trust domain may hold only lowercase letters, digits, '.', '_' and '-', for example cluster.local"
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="trustDomain cannot be changed in place: every workload certificate names it. Reinstall the mesh to change it"
	TrustDomain string `json:"trustDomain,omitempty"`

	// MTLS sets whether meshed workloads accept plaintext.
	// +optional
	// +kubebuilder:default={}
	MTLS MeshMTLS `json:"mtls,omitempty"`
}

// MeshMTLS is the mesh-wide mTLS mode with per-namespace overrides.
type MeshMTLS struct {
	// Mode for every namespace without an override.
	// +optional
	// +kubebuilder:default=PERMISSIVE
	Mode MTLSMode `json:"mode,omitempty"`

	// NamespaceOverrides sets another mode for some namespaces; each namespace at most once.
	// +optional
	// +listType=map
	// +listMapKey=namespace
	// +kubebuilder:validation:MaxItems=1024
	NamespaceOverrides []NamespaceMTLS `json:"namespaceOverrides,omitempty"`
}

// NamespaceMTLS overrides the mTLS mode of one namespace.
type NamespaceMTLS struct {
	// Namespace the override applies to.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="must be a namespace name: lowercase letters, digits and '-'"
	Namespace string `json:"namespace"`

	// Mode for that namespace's workloads.
	// +required
	Mode MTLSMode `json:"mode"`
}

// MTLSMode says what a meshed workload accepts inbound.
// PERMISSIVE accepts mTLS from meshed callers and plaintext from others; STRICT accepts only
// mTLS and refuses plaintext.
//
// +kubebuilder:validation:Enum=PERMISSIVE;STRICT
type MTLSMode string

// The mTLS modes.
const (
	MTLSPermissive MTLSMode = "PERMISSIVE"
	MTLSStrict     MTLSMode = "STRICT"
)

// MeshConfigList is a list of MeshConfigs.
//
// +kubebuilder:object:root=true
type MeshConfigList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MeshConfig `json:"items"`
}
