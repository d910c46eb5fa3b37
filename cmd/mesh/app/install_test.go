package app

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/google/go-cmp/cmp"
	rcommon "helm.sh/helm/v4/pkg/release/common"
	release "helm.sh/helm/v4/pkg/release/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/trellis-mesh/trellis/charts"
	"github.com/trellis-mesh/trellis/controlplane/identity"
	"github.com/trellis-mesh/trellis/injector/webhook"
	"github.com/trellis-mesh/trellis/internal/kubetest"
)

// runMesh runs the mesh command line and returns its standard output and error.
func runMesh(ctx context.Context, args ...string) (string, string, error) {
	var out, errOut bytes.Buffer
	cmd := NewCommand(DefaultOptions())
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(append(args, "--log-level=warn"))
	err := cmd.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

// writeKubeconfig writes a kubeconfig for cfg, as a user of the cluster has one.
func writeKubeconfig(t *testing.T, cfg *rest.Config) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["envtest"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "envtest"}
	kc.CurrentContext = "envtest"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// releaseObjects are the chart's objects in namespace ns.
func releaseObjects(ns string) []client.Object {
	meta := func(name string) metav1.ObjectMeta { return metav1.ObjectMeta{Namespace: ns, Name: name} }
	return []client.Object{
		&appsv1.Deployment{ObjectMeta: meta("trellis-controlplane")},
		&corev1.Service{ObjectMeta: meta("trellis-controlplane")},
		&corev1.ServiceAccount{ObjectMeta: meta("trellis-controlplane")},
		&rbacv1.Role{ObjectMeta: meta("trellis-controlplane")},
		&rbacv1.RoleBinding{ObjectMeta: meta("trellis-controlplane")},
		&policyv1.PodDisruptionBudget{ObjectMeta: meta("trellis-controlplane")},
		&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "trellis-controlplane"}},
		&rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "trellis-controlplane"}},
		&admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: webhook.ConfigurationName}},
	}
}

func exists(ctx context.Context, t *testing.T, c client.Client, obj client.Object) bool {
	t.Helper()
	err := c.Get(ctx, client.ObjectKeyFromObject(obj), obj)
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("get %T %s: %v", obj, client.ObjectKeyFromObject(obj), err)
	}
	return err == nil
}

func chartCRDNames(t *testing.T) []string {
	t.Helper()
	ch, err := charts.LoadTrellis()
	if err != nil {
		t.Fatal(err)
	}
	crds, err := chartCRDs(ch)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range crds {
		names = append(names, c.crd.Name)
	}
	if len(names) < 4 {
		t.Fatalf("the chart has %d CRDs: %v", len(names), names)
	}
	return names
}

// runInjector runs the control plane's webhook certificate manager (webhook.Setup, as the
// control plane does) until the returned stop is called. Its options are the chart's
// defaults for namespace ns.
func runInjector(t *testing.T, env *kubetest.Env, ns string) (webhook.Options, func()) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctrl.SetLogger(logr.FromSlogHandler(log.Handler()))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	opts := webhook.DefaultOptions()
	opts.Namespace = ns
	opts.Host, opts.Port = "127.0.0.1", port
	opts.Resync = 100 * time.Millisecond
	opts.DetectNativeSidecars = false
	opts.Logger = log
	mgr, err := ctrl.NewManager(env.Config, manager.Options{
		Scheme: env.Scheme, Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := webhook.Setup(mgr, opts); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("manager: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	return opts, stop
}

func TestMeshInstallUpgradeAndUninstall(t *testing.T) {
	env := kubetest.Start(t)
	c := testClient(t, env)
	ctx := context.Background()
	kubeconfig := writeKubeconfig(t, env.Config)
	const ns = "trellis-mesh"

	t.Run("install creates the namespace, the CRDs and the release's objects", func(t *testing.T) {
		out, errOut, err := runMesh(ctx, "install", "--kubeconfig", kubeconfig, "--namespace", ns)
		if err != nil {
			t.Fatalf("mesh install: %v\n%s\n%s", err, out, errOut)
		}
		for _, want := range []string{"created namespace " + ns, "applied CustomResourceDefinitions", "installed release trellis in namespace " + ns + ": revision 1", "trellis.dev/inject=enabled"} {
			if !strings.Contains(out, want) {
				t.Errorf("the output does not say %q:\n%s", want, out)
			}
		}
		var nsObj corev1.Namespace
		if err := c.Get(ctx, client.ObjectKey{Name: ns}, &nsObj); err != nil || nsObj.Labels[CreatedByLabel] != CreatedByMesh {
			t.Errorf("namespace %s: labels %v, err %v", ns, nsObj.Labels, err)
		}
		for _, obj := range releaseObjects(ns) {
			if !exists(ctx, t, c, obj) {
				t.Errorf("%T %s was not created", obj, client.ObjectKeyFromObject(obj))
			}
		}
		for _, name := range chartCRDNames(t) {
			var crd apiextensionsv1.CustomResourceDefinition
			if err := c.Get(ctx, client.ObjectKey{Name: name}, &crd); err != nil {
				t.Errorf("CRD %s: %v", name, err)
			} else if !hasManager(crd.ManagedFields, fieldManager) {
				t.Errorf("CRD %s was not applied by mesh: managers %v", name, managers(crd.ManagedFields))
			}
		}
	})

	var caBundle []byte
	t.Run("the control plane fills in caBundle and keeps Helm's ownership, and then leaves the configuration alone", func(t *testing.T) {
		opts, stop := runInjector(t, env, ns)
		defer stop()
		var mwc admissionregistrationv1.MutatingWebhookConfiguration
		err := poll(ctx, 100*time.Millisecond, 30*time.Second, func(ctx context.Context) (bool, error) {
			if err := c.Get(ctx, client.ObjectKey{Name: webhook.ConfigurationName}, &mwc); err != nil {
				return false, err
			}
			return len(mwc.Webhooks[0].ClientConfig.CABundle) > 0, nil
		})
		if err != nil {
			t.Fatalf("the control plane did not write its CA into the chart's configuration: %v", err)
		}
		caBundle = mwc.Webhooks[0].ClientConfig.CABundle
		if d := cmp.Diff(webhook.Configuration(opts, caBundle).Webhooks, mwc.Webhooks); d != "" {
			t.Errorf("the live webhooks differ from what the control plane keeps (-want +got):\n%s", d)
		}
		time.Sleep(time.Second) // ten resyncs
		var later admissionregistrationv1.MutatingWebhookConfiguration
		if err := c.Get(ctx, client.ObjectKey{Name: webhook.ConfigurationName}, &later); err != nil {
			t.Fatal(err)
		}
		if later.ResourceVersion != mwc.ResourceVersion {
			t.Errorf("the control plane keeps rewriting the chart's configuration (resourceVersion %s -> %s)", mwc.ResourceVersion, later.ResourceVersion)
		}
		if later.Labels[managedByLabel] != helmManagedBy || later.Annotations[helmReleaseName] != charts.ReleaseName || later.Annotations[helmReleaseNamespace] != ns {
			t.Errorf("the configuration lost Helm's ownership (Helm would neither upgrade nor delete it): labels %v, annotations %v", later.Labels, later.Annotations)
		}
	})

	t.Run("a second install is an upgrade that changes the chart's fields and keeps the caBundle", func(t *testing.T) {
		if len(caBundle) == 0 {
			t.Skip("no caBundle from the previous step")
		}
		out, errOut, err := runMesh(ctx, "install", "--kubeconfig", kubeconfig, "--namespace", ns,
			"--set", "controlplane.replicas=2", "--set", "injector.failurePolicy=Ignore")
		if err != nil {
			t.Fatalf("mesh install again: %v\n%s\n%s", err, out, errOut)
		}
		if !strings.Contains(out, "upgraded release trellis in namespace "+ns+": revision 2") || strings.Contains(out, "created namespace") {
			t.Errorf("the output does not report an upgrade:\n%s", out)
		}
		var dep appsv1.Deployment
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "trellis-controlplane"}, &dep); err != nil || *dep.Spec.Replicas != 2 {
			t.Errorf("the upgrade did not set 2 replicas (err %v)", err)
		}
		var mwc admissionregistrationv1.MutatingWebhookConfiguration
		if err := c.Get(ctx, client.ObjectKey{Name: webhook.ConfigurationName}, &mwc); err != nil {
			t.Fatal(err)
		}
		if got := *mwc.Webhooks[0].FailurePolicy; got != admissionregistrationv1.Ignore {
			t.Errorf("failurePolicy %s after the upgrade, want Ignore", got)
		}
		if !bytes.Equal(mwc.Webhooks[0].ClientConfig.CABundle, caBundle) {
			t.Errorf("the upgrade replaced the control plane's caBundle (%d bytes, had %d)", len(mwc.Webhooks[0].ClientConfig.CABundle), len(caBundle))
		}
	})

	t.Run("the same install twice changes nothing", func(t *testing.T) {
		args := []string{"install", "--kubeconfig", kubeconfig, "--namespace", ns, "--set", "controlplane.replicas=2", "--set", "injector.failurePolicy=Ignore"}
		var dep appsv1.Deployment
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "trellis-controlplane"}, &dep); err != nil {
			t.Fatal(err)
		}
		if out, errOut, err := runMesh(ctx, args...); err != nil {
			t.Fatalf("mesh install: %v\n%s\n%s", err, out, errOut)
		}
		var again appsv1.Deployment
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "trellis-controlplane"}, &again); err != nil {
			t.Fatal(err)
		}
		if again.Generation != dep.Generation {
			t.Errorf("the Deployment changed (generation %d -> %d)", dep.Generation, again.Generation)
		}
	})

	t.Run("uninstall removes the release and everything the control plane made", func(t *testing.T) {
		// Stand-ins for what a running control plane makes (the webhook's Secret is real:
		// the certificate manager above made it).
		managed := map[string]string{identity.ManagedByLabel: identity.ManagedByValue}
		standIns := []client.Object{
			&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "trellis-ca", Labels: managed}},
			&coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "trellis-controlplane"}},
		}
		for _, app := range []string{"shop", "blog"} {
			standIns = append(standIns,
				&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: app, Labels: map[string]string{identity.InjectLabel: identity.InjectEnabled}}},
				&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: app, Name: identity.RootCertConfigMap, Labels: managed}})
		}
		for _, obj := range standIns {
			if err := c.Create(ctx, obj); err != nil {
				t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
			}
		}
		usersConfigMap := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: identity.RootCertConfigMap}}
		if err := c.Create(ctx, usersConfigMap); err != nil {
			t.Fatal(err)
		}
		split := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
			"metadata": map[string]any{"namespace": "shop", "name": "canary"},
			"spec": map[string]any{"service": "backend", "backends": []any{
				map[string]any{"service": "backend-v1", "weight": int64(90)}, map[string]any{"service": "backend-v2", "weight": int64(10)}}},
		}}
		if err := c.Create(ctx, split); err != nil {
			t.Fatalf("create a TrafficSplit: %v", err)
		}
		webhookSecret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: webhook.CertSecretName}}
		if !exists(ctx, t, c, webhookSecret) {
			t.Fatal("the certificate manager made no webhook Secret")
		}

		out, errOut, err := runMesh(ctx, "uninstall", "--kubeconfig", kubeconfig, "--namespace", ns)
		if err != nil {
			t.Fatalf("mesh uninstall: %v\n%s\n%s", err, out, errOut)
		}
		t.Logf("mesh uninstall:\n%s%s", out, errOut)
		for _, want := range []string{
			"uninstalled Helm release trellis in namespace " + ns, "deleted Deployment " + ns + "/trellis-controlplane",
			"deleted Secret " + ns + "/trellis-ca", "deleted Secret " + ns + "/" + webhook.CertSecretName,
			"deleted Lease " + ns + "/trellis-controlplane",
			"deleted ConfigMap shop/" + identity.RootCertConfigMap, "deleted ConfigMap blog/" + identity.RootCertConfigMap,
			"deleted CustomResourceDefinition trafficsplits.split.smi-spec.io", "deleted namespace " + ns,
			"still labelled trellis.dev/inject=enabled: blog, shop",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("the output does not say %q", want)
			}
		}
		if !strings.Contains(errOut, "1 trafficsplits") || !strings.Contains(errOut, "--keep-crds") {
			t.Errorf("no warning that deleting the CRDs deletes the TrafficSplit:\n%s", errOut)
		}
		for _, obj := range append(releaseObjects(ns), standIns[0], standIns[1], standIns[3], standIns[5], webhookSecret) {
			if exists(ctx, t, c, obj) {
				t.Errorf("%T %s is left", obj, client.ObjectKeyFromObject(obj))
			}
		}
		if !exists(ctx, t, c, usersConfigMap) {
			t.Error("a ConfigMap Trellis did not make was deleted")
		}
		for _, name := range chartCRDNames(t) {
			if err := c.Get(ctx, client.ObjectKey{Name: name}, &apiextensionsv1.CustomResourceDefinition{}); !apierrors.IsNotFound(err) {
				t.Errorf("CRD %s: err %v, want it deleted", name, err)
			}
		}
		var nsObj corev1.Namespace
		if err := c.Get(ctx, client.ObjectKey{Name: ns}, &nsObj); err == nil && nsObj.DeletionTimestamp.IsZero() {
			t.Errorf("namespace %s, which mesh install created, is not being deleted", ns)
		}
		var releases corev1.SecretList
		if err := c.List(ctx, &releases, client.InNamespace(ns), client.MatchingLabels{"owner": "helm"}); err != nil || len(releases.Items) != 0 {
			t.Errorf("Helm release records left: %d (err %v)", len(releases.Items), err)
		}

		out, errOut, err = runMesh(ctx, "uninstall", "--kubeconfig", kubeconfig, "--namespace", ns)
		if err != nil || !strings.Contains(out, "nothing to remove") {
			t.Errorf("a second uninstall: err %v\n%s%s", err, out, errOut)
		}
	})
}

func TestMeshInstallStatesAndKeepCRDs(t *testing.T) {
	env := kubetest.Start(t)
	c := testClient(t, env)
	ctx := context.Background()
	kubeconfig := writeKubeconfig(t, env.Config)
	const ns = "mesh-2"
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	// A control plane that started before the chart's configuration existed made its own.
	leftOpts := webhook.DefaultOptions()
	leftOpts.Namespace = ns
	left := webhook.Configuration(leftOpts, []byte("a CA bundle"))
	if err := c.Create(ctx, left); err != nil {
		t.Fatal(err)
	}
	if out, errOut, err := runMesh(ctx, "install", "--kubeconfig", kubeconfig, "-n", ns); err != nil {
		t.Fatalf("mesh install: %v\n%s\n%s", err, out, errOut)
	} else if strings.Contains(out, "created namespace") {
		t.Errorf("install says it created namespace %s, which existed:\n%s", ns, out)
	} else if !strings.Contains(out, "adopted MutatingWebhookConfiguration trellis-injector") {
		t.Errorf("install does not say it adopted the control plane's webhook configuration:\n%s", out)
	}
	var adopted admissionregistrationv1.MutatingWebhookConfiguration
	if err := c.Get(ctx, client.ObjectKey{Name: webhook.ConfigurationName}, &adopted); err != nil {
		t.Fatal(err)
	}
	if adopted.Annotations[helmReleaseNamespace] != ns || string(adopted.Webhooks[0].ClientConfig.CABundle) != "a CA bundle" {
		t.Errorf("the adopted configuration: annotations %v, caBundle %q", adopted.Annotations, adopted.Webhooks[0].ClientConfig.CABundle)
	}

	t.Run("a second mesh in another namespace is refused, and that namespace is not created", func(t *testing.T) {
		_, _, err := runMesh(ctx, "install", "--kubeconfig", kubeconfig, "-n", "mesh-3")
		if err == nil || !strings.Contains(err.Error(), "already installed in namespace "+ns) {
			t.Fatalf("err %v, want one saying the mesh is installed in %s", err, ns)
		}
		if exists(ctx, t, c, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mesh-3"}}) {
			t.Error("the refused install created its namespace")
		}
	})

	setStatus := func(t *testing.T, status rcommon.Status) {
		t.Helper()
		cl, err := (&clusterOptions{Kubeconfig: kubeconfig}).connect(ns)
		if err != nil {
			t.Fatal(err)
		}
		hcfg, err := cl.helm(ns, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		last, err := hcfg.Releases.Last(charts.ReleaseName)
		if err != nil {
			t.Fatal(err)
		}
		rel := last.(*release.Release)
		rel.Info.Status = status
		if err := hcfg.Releases.Update(rel); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("a release stuck in pending-upgrade gets an error that says what to do", func(t *testing.T) {
		setStatus(t, rcommon.StatusPendingUpgrade)
		_, _, err := runMesh(ctx, "install", "--kubeconfig", kubeconfig, "-n", ns)
		if err == nil {
			t.Fatal("install over a pending release succeeded")
		}
		for _, want := range []string{"pending-upgrade", "helm -n " + ns + " rollback trellis", "mesh uninstall --namespace " + ns} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
	})

	t.Run("a failed release is upgraded", func(t *testing.T) {
		setStatus(t, rcommon.StatusFailed)
		out, errOut, err := runMesh(ctx, "install", "--kubeconfig", kubeconfig, "-n", ns)
		if err != nil {
			t.Fatalf("install over a failed release: %v\n%s", err, errOut)
		}
		if !strings.Contains(out, "failed") || !strings.Contains(out, "upgraded release trellis") {
			t.Errorf("the output does not say it upgrades a failed release:\n%s", out)
		}
	})

	t.Run("uninstall --keep-crds keeps the CRDs and a namespace mesh did not create", func(t *testing.T) {
		// A control-plane pod that does not stop (envtest has no kubelet and no garbage
		// collector): uninstall waits --timeout, warns, and goes on.
		stray := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "trellis-controlplane-stuck", Labels: map[string]string{
				"app.kubernetes.io/name": "trellis", "app.kubernetes.io/component": "controlplane"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "controlplane", Image: "trellis/controlplane:dev"}}},
		}
		if err := c.Create(ctx, stray); err != nil {
			t.Fatal(err)
		}
		out, errOut, err := runMesh(ctx, "uninstall", "--kubeconfig", kubeconfig, "-n", ns, "--keep-crds", "--timeout", "2s")
		if !strings.Contains(errOut, "1 control-plane pods still run in namespace "+ns) {
			t.Errorf("no warning about the control-plane pod that still runs:\n%s", errOut)
		}
		if err != nil {
			t.Fatalf("mesh uninstall --keep-crds: %v\n%s\n%s", err, out, errOut)
		}
		if !strings.Contains(out, "kept the CustomResourceDefinitions") || !strings.Contains(out, "kept namespace "+ns) {
			t.Errorf("the output does not say what it kept:\n%s", out)
		}
		for _, name := range chartCRDNames(t) {
			if err := c.Get(ctx, client.ObjectKey{Name: name}, &apiextensionsv1.CustomResourceDefinition{}); err != nil {
				t.Errorf("CRD %s: %v", name, err)
			}
		}
		var nsObj corev1.Namespace
		if err := c.Get(ctx, client.ObjectKey{Name: ns}, &nsObj); err != nil || !nsObj.DeletionTimestamp.IsZero() {
			t.Errorf("namespace %s, which the user made, was deleted (err %v)", ns, err)
		}
		for _, obj := range releaseObjects(ns) {
			if exists(ctx, t, c, obj) {
				t.Errorf("%T %s is left", obj, client.ObjectKeyFromObject(obj))
			}
		}
	})
}

func TestMeshInstallDryRunNeedsNoCluster(t *testing.T) {
	t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "none"))
	out, errOut, err := runMesh(context.Background(), "install", "--dry-run", "-n", "mesh", "--set", "image.registry=ghcr.io/me", "--set", "image.tag=v9")
	if err != nil {
		t.Fatalf("mesh install --dry-run: %v\n%s", err, errOut)
	}
	for _, want := range []string{"kind: Namespace\nmetadata:\n  name: mesh", "kind: CustomResourceDefinition", "name: trafficsplits.split.smi-spec.io",
		"kind: Deployment", "image: \"ghcr.io/me/trellis/controlplane:v9\"", "--proxy-image=ghcr.io/me/trellis/proxy:v9", "kind: MutatingWebhookConfiguration"} {
		if !strings.Contains(out, want) {
			t.Errorf("the manifests do not contain %q", want)
		}
	}
	if _, _, err := runMesh(context.Background(), "install", "--dry-run", "--set", "controlplane.replicas=two"); err == nil || !strings.Contains(err.Error(), "replicas") {
		t.Errorf("a bad value: err %v, want one naming replicas", err)
	}
}

func TestMeshInstallExplainsAMissingOrUnreachableCluster(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	dir := t.TempDir()
	unreachable := filepath.Join(dir, "unreachable")
	kc := clientcmdapi.NewConfig()
	kc.Clusters["c"] = &clientcmdapi.Cluster{Server: "https://127.0.0.1:1"}
	kc.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: "x"}
	kc.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	kc.CurrentContext = "c"
	if err := clientcmd.WriteToFile(*kc, unreachable); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		env  string // $KUBECONFIG
		args []string
		want []string
	}{
		{"no kubeconfig at all", filepath.Join(dir, "none"), nil, []string{"no cluster to talk to", "--kubeconfig"}},
		{"a kubeconfig file that is not there", "", []string{"--kubeconfig", filepath.Join(dir, "missing")}, []string{"read the kubeconfig", "missing"}},
		{"a context that is not there", "", []string{"--kubeconfig", unreachable, "--context", "nope"}, []string{`context "nope" does not exist`}},
		{"a cluster that does not answer", "", []string{"--kubeconfig", unreachable}, []string{"cannot reach the Kubernetes API server at https://127.0.0.1:1", "check that the cluster is running"}},
	} {
		for _, command := range []string{"install", "uninstall"} {
			t.Run(command+": "+tt.name, func(t *testing.T) {
				t.Setenv("HOME", dir)
				t.Setenv("KUBECONFIG", tt.env)
				_, _, err := runMesh(context.Background(), append([]string{command}, tt.args...)...)
				if err == nil {
					t.Fatal("no error")
				}
				for _, want := range tt.want {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not say %q", err, want)
					}
				}
			})
		}
	}
}

// testClient is a client of env that knows CRDs too.
func testClient(t *testing.T, env *kubetest.Env) client.Client {
	t.Helper()
	sch := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, apiextensionsv1.AddToScheme} {
		if err := add(sch); err != nil {
			t.Fatal(err)
		}
	}
	c, err := client.New(env.Config, client.Options{Scheme: sch})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func hasManager(fields []metav1.ManagedFieldsEntry, name string) bool {
	for _, f := range fields {
		if f.Manager == name {
			return true
		}
	}
	return false
}

func managers(fields []metav1.ManagedFieldsEntry) []string {
	var out []string
	for _, f := range fields {
		out = append(out, f.Manager+"/"+string(f.Operation))
	}
	return out
}
