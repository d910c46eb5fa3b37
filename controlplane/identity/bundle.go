package identity

import (
	"bytes"
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

const (
	// RootCertConfigMap is the ConfigMap, in every meshed namespace, that holds the trust
	// bundle for the sidecars to mount.
	RootCertConfigMap = "trellis-ca-root-cert"
	// RootCertKey is the ConfigMap key of the PEM trust bundle.
	RootCertKey = "root-cert.pem"
	// InjectLabel and InjectEnabled mark a namespace whose pods get the sidecar.
	InjectLabel   = "trellis.dev/inject"
	InjectEnabled = "enabled"
	// ManagedByLabel=ManagedByValue marks objects Trellis created and may change or delete.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedByValue = "trellis"
)

// TrustBundleSource gives the PEM trust bundle to publish; [*Authority] is one.
type TrustBundleSource interface {
	TrustBundlePEM() []byte
}

// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;update;delete

// BundlePublisher keeps ConfigMap [RootCertConfigMap] (key [RootCertKey]) holding the trust
// bundle in every namespace labelled trellis.dev/inject=enabled, and deletes it when the
// label goes. It changes only ConfigMaps it created (labelled
// app.kubernetes.io/managed-by=trellis); a user's ConfigMap of the same name is left alone
// and reported as an error.
type BundlePublisher struct {
	Client client.Client
	Bundle TrustBundleSource
}

// SetupWithManager registers the publisher with mgr. It watches Namespaces, and ConfigMaps
// named [RootCertConfigMap] so that an edited or deleted copy is put back.
func (p *BundlePublisher) SetupWithManager(mgr ctrl.Manager) error {
	byName := predicate.NewPredicateFuncs(func(o client.Object) bool { return o.GetName() == RootCertConfigMap })
	toNamespace := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: o.GetNamespace()}}}
	})
	err := ctrl.NewControllerManagedBy(mgr).
		Named("trellis-ca-bundle").
		For(&corev1.Namespace{}).
		Watches(&corev1.ConfigMap{}, toNamespace, builder.WithPredicates(byName)).
		Complete(p)
	if err != nil {
		return fmt.Errorf("set up the trust bundle publisher: %w", err)
	}
	return nil
}

// Reconcile makes namespace req.Name's trust bundle ConfigMap match its label.
func (p *BundlePublisher) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var ns corev1.Namespace
	if err := p.Client.Get(ctx, req.NamespacedName, &ns); err != nil {
		if apierrors.IsNotFound(err) {
			return reconcile.Result{}, nil // its ConfigMaps go with it
		}
		return reconcile.Result{}, fmt.Errorf("get namespace %s: %w", req.Name, err)
	}
	if !ns.DeletionTimestamp.IsZero() {
		return reconcile.Result{}, nil
	}
	key := client.ObjectKey{Namespace: ns.Name, Name: RootCertConfigMap}
	var cm corev1.ConfigMap
	err := p.Client.Get(ctx, key, &cm)
	exists := err == nil
	if err != nil && !apierrors.IsNotFound(err) {
		return reconcile.Result{}, fmt.Errorf("get ConfigMap %s: %w", key, err)
	}
	ours := exists && cm.Labels[ManagedByLabel] == ManagedByValue
	wanted := ns.Labels[InjectLabel] == InjectEnabled

	switch {
	case !wanted && ours:
		if err := p.Client.Delete(ctx, &cm); err != nil && !apierrors.IsNotFound(err) {
			return reconcile.Result{}, fmt.Errorf("delete ConfigMap %s: %w", key, err)
		}
	case !wanted:
		// Nothing of ours to remove; a user's ConfigMap of that name is none of our business.
	case !exists:
		cm = corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: RootCertConfigMap, Labels: map[string]string{ManagedByLabel: ManagedByValue}},
			Data:       map[string]string{RootCertKey: string(p.Bundle.TrustBundlePEM())},
		}
		if err := p.Client.Create(ctx, &cm); err != nil {
			return reconcile.Result{}, fmt.Errorf("create ConfigMap %s: %w", key, err)
		}
	case !ours:
		// Retrying will not help; the ConfigMap watch brings us back when the user acts.
		return reconcile.Result{}, reconcile.TerminalError(fmt.Errorf(
			"ConfigMap %s exists but was not created by Trellis (no label %s=%s), so the mesh's root certificate cannot be published there "+
				"and sidecars in namespace %s will not start: rename or delete that ConfigMap", key, ManagedByLabel, ManagedByValue, ns.Name))
	case !bytes.Equal([]byte(cm.Data[RootCertKey]), p.Bundle.TrustBundlePEM()) || len(cm.Data) != 1 || len(cm.BinaryData) != 0:
		cm.Data = map[string]string{RootCertKey: string(p.Bundle.TrustBundlePEM())}
		cm.BinaryData = nil
		if err := p.Client.Update(ctx, &cm); err != nil {
			return reconcile.Result{}, fmt.Errorf("update ConfigMap %s: %w", key, err)
		}
	}
	return reconcile.Result{}, nil
}
