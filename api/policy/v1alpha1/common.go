package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Duration is a span of time written as in Go and Gateway API: one to four groups of a
// number and a unit (h, m, s or ms), for example 250ms, 2s, 1m or 1h30m.
//
// +kubebuilder:validation:MaxLength=24
// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$')",messageExpression="'\"' + self + '\" is not a duration: write a number and a unit (h, m, s, ms), for example 250ms, 2s, 1m or 1h30m'"
type Duration string

// WorkloadSelector selects pods by their labels, like a Kubernetes label selector. An empty
// selector ({}) selects every pod in the namespace. Selectors that could never select a pod
// (In with no values, or requirements that contradict each other) are refused.
//
// +kubebuilder:validation:XValidation:rule="!has(self.matchLabels) || !has(self.matchExpressions) || self.matchExpressions.all(e, !(e.key in self.matchLabels) || e.operator == 'Exists' || (e.operator == 'In' && self.matchLabels[e.key] in e.values) || (e.operator == 'NotIn' && !(self.matchLabels[e.key] in e.values)))",message="matchLabels and matchExpressions contradict each other on the same key, so this selector can never select a pod"
// +kubebuilder:validation:XValidation:rule="!has(self.matchExpressions) || self.matchExpressions.all(e, self.matchExpressions.all(f, e.key != f.key || !(e.operator in ['In', 'Exists'] && f.operator == 'DoesNotExist') && !(e.operator == 'In' && f.operator == 'In' && !e.values.exists(v, v in f.values))))",message="matchExpressions contradict each other on the same key, so this selector can never select a pod"
type WorkloadSelector struct {
	// MatchLabels selects pods that carry every one of these labels.
	// +optional
	// +kubebuilder:validation:MaxProperties=16
	// +kubebuilder:validation:XValidation:rule="self.all(k, k.matches('^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'))",message="label keys must be a name of at most 63 characters (letters, digits, '-', '_', '.') with an optional DNS prefix and '/'"
	MatchLabels map[string]LabelValue `json:"matchLabels,omitempty"`

	// MatchExpressions selects pods whose labels satisfy every requirement.
	// +optional
	// +kubebuilder:validation:MaxItems=8
	MatchExpressions []LabelRequirement `json:"matchExpressions,omitempty"`
}

// LabelValue is the value of a label.
//
// +kubebuilder:validation:MaxLength=63
// +kubebuilder:validation:XValidation:rule="self.matches('^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$')",message="label values are at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
type LabelValue string

// LabelRequirement is one requirement of a WorkloadSelector.
//
// +kubebuilder:validation:XValidation:rule="!(self.operator in ['In', 'NotIn']) || (has(self.values) && size(self.values) > 0)",message="operators In and NotIn need at least one value (In with no values selects no pod)"
// +kubebuilder:validation:XValidation:rule="!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values) || size(self.values) == 0",message="operators Exists and DoesNotExist take no values: remove values or use In/NotIn"
type LabelRequirement struct {
	// Key is the label key the requirement applies to.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=316
	Key string `json:"key"`

	// Operator relates the key to the values.
	// +required
	// +kubebuilder:validation:Enum=In;NotIn;Exists;DoesNotExist
	Operator string `json:"operator"`

	// Values for In and NotIn.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	Values []LabelValue `json:"values,omitempty"`
}

// PolicyStatus is what the control plane observed and did with a policy.
type PolicyStatus struct {
	// ObservedGeneration is the generation the conditions describe.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions: Accepted (the policy is valid and programmed) and ResolvedRefs (what it
	// refers to exists), each with a reason and a message a person can act on.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}
