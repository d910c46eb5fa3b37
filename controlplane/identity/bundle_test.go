package identity_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/trellis-mesh/trellis/controlplane/identity"
	"github.com/trellis-mesh/trellis/internal/kubetest"
)

func TestBundlePublisher(t *testing.T) {
	env := kubetest.Start(t)
	c := env.Client
	ca := newCA(t)
	bundle := string(ca.TrustBundlePEM())

	skip := true
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme:     env.Scheme,
		Metrics:    metricsserver.Options{BindAddress: "0"},
		Controller: config.Controller{SkipNameValidation: &skip},
	})
	if err != nil {
		t.Fatal(err)
	}
	publisher := &identity.BundlePublisher{Client: mgr.GetClient(), Bundle: ca}
	if err := publisher.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})

	enabled := map[string]string{identity.InjectLabel: identity.InjectEnabled}
	getCM := func(ns string) (*corev1.ConfigMap, error) {
		var cm corev1.ConfigMap
		err := c.Get(testContext(t), client.ObjectKey{Namespace: ns, Name: identity.RootCertConfigMap}, &cm)
		return &cm, err
	}
	published := func(ns string) func() string {
		return func() string {
			cm, err := getCM(ns)
			switch {
			case err != nil:
				return "no ConfigMap in " + ns + ": " + err.Error()
			case cm.Data[identity.RootCertKey] != bundle:
				return "the ConfigMap in " + ns + " does not hold the trust bundle"
			case cm.Labels[identity.ManagedByLabel] != identity.ManagedByValue:
				return "the ConfigMap in " + ns + " is not labelled as Trellis's"
			}
			return ""
		}
	}
	gone := func(ns string) func() string {
		return func() string {
			if _, err := getCM(ns); !apierrors.IsNotFound(err) {
				return "the ConfigMap in " + ns + " is still there"
			}
			return ""
		}
	}
	setLabels := func(name string, labels map[string]string) {
		t.Helper()
		var ns corev1.Namespace
		if err := c.Get(testContext(t), client.ObjectKey{Name: name}, &ns); err != nil {
			t.Fatal(err)
		}
		ns.Labels = labels
		if err := c.Update(testContext(t), &ns); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("a labelled namespace gets the ConfigMap with the root", func(t *testing.T) {
		createNamespace(t, c, "shop", enabled)
		eventually(t, published("shop"))
	})

	t.Run("a ConfigMap edited by hand is put back", func(t *testing.T) {
		cm, err := getCM("shop")
		if err != nil {
			t.Fatal(err)
		}
		cm.Data[identity.RootCertKey] = "tampered"
		if err := c.Update(testContext(t), cm); err != nil {
			t.Fatal(err)
		}
		eventually(t, published("shop"))
	})

	t.Run("a namespace that is not labelled gets none", func(t *testing.T) {
		createNamespace(t, c, "plain", nil)
		createNamespace(t, c, "witness", enabled) // reconciled after plain was
		eventually(t, published("witness"))
		if _, err := getCM("plain"); !apierrors.IsNotFound(err) {
			t.Fatalf("unlabelled namespace has the ConfigMap (err %v)", err)
		}
	})

	t.Run("removing the label removes the ConfigMap", func(t *testing.T) {
		setLabels("shop", nil)
		eventually(t, gone("shop"))
	})

	t.Run("a user's ConfigMap of the same name is left alone and reported", func(t *testing.T) {
		createNamespace(t, c, "legacy", nil)
		mine := &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: "legacy", Name: identity.RootCertConfigMap},
			Data:       map[string]string{identity.RootCertKey: "the user's own"},
		}
		if err := c.Create(testContext(t), mine); err != nil {
			t.Fatal(err)
		}
		setLabels("legacy", enabled)
		// The publisher reads through the manager's cache, which sees the new label a little
		// later: reconcile until it does (a nil error means it still saw no label).
		var err error
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if _, err = publisher.Reconcile(testContext(t), reconcile.Request{NamespacedName: types.NamespacedName{Name: "legacy"}}); err != nil {
				break
			}
		}
		if err == nil || !strings.Contains(err.Error(), "was not created by Trellis") || !errors.Is(err, reconcile.TerminalError(nil)) {
			t.Errorf("Reconcile error = %v, want a terminal error saying the ConfigMap is not Trellis's", err)
		}
		setLabels("legacy", nil) // and unlabelling must not delete it either
		createNamespace(t, c, "witness2", enabled)
		eventually(t, published("witness2"))
		time.Sleep(500 * time.Millisecond)
		cm, err := getCM("legacy")
		if err != nil {
			t.Fatalf("the user's ConfigMap is gone: %v", err)
		}
		if cm.Data[identity.RootCertKey] != "the user's own" || len(cm.Labels) != 0 {
			t.Errorf("the user's ConfigMap was changed: %v %v", cm.Labels, cm.Data)
		}
	})
}
