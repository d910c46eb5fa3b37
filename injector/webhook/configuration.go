package webhook

import (
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/trellis-mesh/trellis/injector/podspec"
)

const (
	managedByLabel = "app.kubernetes.io/managed-by"
	managedByValue = "trellis"
	// namespaceNameLabel is set by Kubernetes on every namespace to its name.
	namespaceNameLabel = "kubernetes.io/metadata.name"
)

// Configuration is the MutatingWebhookConfiguration the control plane keeps, with caBundle
// as the CA the apiserver trusts for it. Every field the apiserver would default is set,
// so that comparing it with the live object finds no difference when there is none.
//
//   - namespaceSelector: namespaces labelled trellis.dev/inject=enabled, except the control
//     plane's own (so that the control plane can always start, even with failurePolicy
//     Fail and no replica running);
//   - objectSelector: pods not labelled trellis.dev/inject=false or =disabled (the same
//     values as an annotation are read by the injector itself, since an objectSelector
//     cannot see annotations);
//   - only pod CREATE; sideEffects None, so dry runs are injected too.
func Configuration(o Options, caBundle []byte) *admissionregistrationv1.MutatingWebhookConfiguration {
	cc := admissionregistrationv1.WebhookClientConfig{CABundle: caBundle}
	if o.URL != "" {
		cc.URL = ptr.To(o.URL)
	} else {
		cc.Service = &admissionregistrationv1.ServiceReference{
			Namespace: o.Namespace,
			Name:      o.ServiceName,
			Path:      ptr.To(o.Path),
			Port:      ptr.To(o.ServicePort),
		}
	}
	return &admissionregistrationv1.MutatingWebhookConfiguration{
		TypeMeta: metav1.TypeMeta{APIVersion: "admissionregistration.k8s.io/v1", Kind: "MutatingWebhookConfiguration"},
		ObjectMeta: metav1.ObjectMeta{
			Name:   o.ConfigurationName,
			Labels: map[string]string{managedByLabel: managedByValue},
		},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    WebhookName,
			AdmissionReviewVersions: []string{"v1"},
			ClientConfig:            cc,
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule: admissionregistrationv1.Rule{
					APIGroups:   []string{""},
					APIVersions: []string{"v1"},
					Resources:   []string{"pods"},
					Scope:       ptr.To(admissionregistrationv1.NamespacedScope),
				},
			}},
			FailurePolicy: ptr.To(o.FailurePolicy),
			MatchPolicy:   ptr.To(admissionregistrationv1.Equivalent),
			NamespaceSelector: &metav1.LabelSelector{
				MatchLabels: map[string]string{podspec.InjectKey: "enabled"},
				MatchExpressions: []metav1.LabelSelectorRequirement{{
					Key: namespaceNameLabel, Operator: metav1.LabelSelectorOpNotIn, Values: []string{o.Namespace},
				}},
			},
			ObjectSelector: &metav1.LabelSelector{
				MatchExpressions: []metav1.LabelSelectorRequirement{{
					Key: podspec.InjectKey, Operator: metav1.LabelSelectorOpNotIn, Values: []string{"false", "disabled"},
				}},
			},
			SideEffects:    ptr.To(admissionregistrationv1.SideEffectClassNone),
			TimeoutSeconds: ptr.To(o.TimeoutSeconds),
			// Inject is idempotent and adds the proxy once; a later webhook's additions
			// need nothing from it.
			ReinvocationPolicy: ptr.To(admissionregistrationv1.NeverReinvocationPolicy),
		}},
	}
}

// ownerNamespace makes the configuration belong to the control plane's namespace: deleting
// the installation's namespace deletes the webhook too, instead of leaving a webhook with
// failurePolicy Fail that nothing answers.
func ownerNamespace(ns *corev1.Namespace) metav1.OwnerReference {
	return metav1.OwnerReference{APIVersion: "v1", Kind: "Namespace", Name: ns.Name, UID: ns.UID}
}
