package webhook_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/trellis-mesh/trellis/injector/podspec"
	"github.com/trellis-mesh/trellis/injector/webhook"
	"github.com/trellis-mesh/trellis/injector/webhook/webhooktest"
	"github.com/trellis-mesh/trellis/internal/kubetest"
)

func namespace(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func appPod(ns, name string, mutate func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "app", Image: "example.com/app:1",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: "/ready", Port: intstr.FromString("http"),
			}}},
		}}},
	}
	if mutate != nil {
		mutate(p)
	}
	return p
}

// TestWebhookThroughTheAPIServer registers the webhook with a real apiserver (through its
// own certificate manager) and creates pods as a user would.
func TestWebhookThroughTheAPIServer(t *testing.T) {
	env := kubetest.Start(t)
	ctx := context.Background()
	c := env.Client
	enabled := map[string]string{podspec.InjectKey: "enabled"}
	for _, ns := range []*corev1.Namespace{
		namespace("shop", enabled),
		namespace("plain", nil),
		// labelled too, to show that the control plane's namespace is excluded anyway
		namespace("trellis-system", enabled),
	} {
		if err := c.Create(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	opts := webhooktest.Start(t, env, nil)

	tests := []struct {
		name         string
		pod          *corev1.Pod
		wantInjected bool
		wantErr      string
	}{
		{name: "a pod in a labelled namespace comes back injected", pod: appPod("shop", "web", nil), wantInjected: true},
		{name: "a pod in an unlabelled namespace is left alone", pod: appPod("plain", "web", nil)},
		{
			name: "a pod labelled trellis.dev/inject=false is left alone",
			pod:  appPod("shop", "opt-out-label", func(p *corev1.Pod) { p.Labels[podspec.InjectKey] = "false" }),
		},
		{
			name: "a pod annotated trellis.dev/inject: \"false\" is left alone",
			pod: appPod("shop", "opt-out-annotation", func(p *corev1.Pod) {
				p.Annotations = map[string]string{podspec.InjectKey: "false"}
			}),
		},
		{name: "a pod on the host's network is left alone", pod: appPod("shop", "host", func(p *corev1.Pod) { p.Spec.HostNetwork = true })},
		{name: "a pod in the control plane's namespace is left alone, even though it is labelled", pod: appPod("trellis-system", "cp", nil)},
		{
			name: "invalid annotations are refused with the injector's message",
			pod: appPod("shop", "broken", func(p *corev1.Pod) {
				p.Annotations = map[string]string{
					podspec.InboundExcludePortsAnnotation: "80,http",
					podspec.LogLevelAnnotation:            "verbose",
				}
			}),
			wantErr: `admission webhook "inject.trellis.dev" denied the request: annotation trellis.dev/inbound-exclude-ports="80,http": "http" is not a port; write a comma-separated list of ports 1-65535, such as "8080,9090"; annotation trellis.dev/log-level="verbose": use debug, info, warn or error`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := tt.pod.DeepCopy()
			err := c.Create(ctx, tt.pod)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("create: error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("create: %v", err)
			}
			var got corev1.Pod
			if err := c.Get(ctx, client.ObjectKeyFromObject(tt.pod), &got); err != nil {
				t.Fatal(err)
			}
			if injected := podspec.Injected(&got); injected != tt.wantInjected {
				t.Fatalf("injected = %v, want %v; init containers %v", injected, tt.wantInjected, names(got.Spec.InitContainers))
			}
			if !tt.wantInjected {
				if _, ok := got.Annotations[podspec.StatusAnnotation]; ok {
					t.Errorf("a pod left alone has the status annotation")
				}
				if got.Spec.Containers[0].ReadinessProbe.HTTPGet.Path != orig.Spec.Containers[0].ReadinessProbe.HTTPGet.Path {
					t.Errorf("a pod left alone had its probe rewritten")
				}
				return
			}
			if want := []string{podspec.InitContainerName, podspec.ProxyContainerName}; strings.Join(names(got.Spec.InitContainers), ",") != strings.Join(want, ",") {
				t.Errorf("init containers = %v, want %v", names(got.Spec.InitContainers), want)
			}
			if rp := got.Spec.InitContainers[1].RestartPolicy; rp == nil || *rp != corev1.ContainerRestartPolicyAlways {
				t.Errorf("the proxy is not a native sidecar: restartPolicy %v", rp)
			}
			var st podspec.Status
			if err := json.Unmarshal([]byte(got.Annotations[podspec.StatusAnnotation]), &st); err != nil || st.Mode != podspec.ModeNativeSidecar || st.RewrittenProbes != 1 {
				t.Errorf("status annotation %q (err %v)", got.Annotations[podspec.StatusAnnotation], err)
			}
			if p := got.Spec.Containers[0].ReadinessProbe.HTTPGet; p.Path != "/app-health/app/readyz" || p.Port.IntValue() != podspec.StatusPort {
				t.Errorf("readiness probe = %+v, want it rewritten", p)
			}
			probes, err := podspec.ParseAppProbes(got.Annotations[podspec.OriginalProbesAnnotation])
			if err != nil || probes["/app-health/app/readyz"].HTTPGet == nil || probes["/app-health/app/readyz"].HTTPGet.Port != 8080 {
				t.Errorf("original probes %v (err %v)", probes, err)
			}
		})
	}

	t.Run("the configuration selects labelled namespaces but the control plane's, and opted-out pods", func(t *testing.T) {
		var mwc admissionregistrationv1.MutatingWebhookConfiguration
		if err := c.Get(ctx, types.NamespacedName{Name: webhook.ConfigurationName}, &mwc); err != nil {
			t.Fatal(err)
		}
		wh := mwc.Webhooks[0]
		if *wh.FailurePolicy != admissionregistrationv1.Fail || *wh.SideEffects != admissionregistrationv1.SideEffectClassNone {
			t.Errorf("failurePolicy %v, sideEffects %v", *wh.FailurePolicy, *wh.SideEffects)
		}
		if len(mwc.OwnerReferences) != 1 || mwc.OwnerReferences[0].Kind != "Namespace" || mwc.OwnerReferences[0].Name != opts.Namespace {
			t.Errorf("owner references %+v, want the namespace %s", mwc.OwnerReferences, opts.Namespace)
		}
		if len(wh.ClientConfig.CABundle) == 0 {
			t.Error("no caBundle")
		}
	})

	t.Run("a steady state writes nothing, and a second replica serves the same certificate", func(t *testing.T) {
		before := versions(ctx, t, c, opts)
		second := webhooktest.Start(t, env, func(o *webhook.Options) { o.URL = opts.URL })
		time.Sleep(3 * opts.Resync)
		if after := versions(ctx, t, c, opts); after != before {
			t.Errorf("resource versions changed from %s to %s with nothing to renew", before, after)
		}
		first, err := servedCertificate(ctx, c, opts)
		if err != nil {
			t.Fatal(err)
		}
		other, err := servedCertificate(ctx, c, second)
		if err != nil {
			t.Fatalf("the second replica: %v", err)
		}
		if first.SerialNumber.Cmp(other.SerialNumber) != 0 {
			t.Errorf("the replicas serve different certificates: %x and %x", first.SerialNumber, other.SerialNumber)
		}
	})
}

func versions(ctx context.Context, t *testing.T, c client.Client, opts webhook.Options) string {
	t.Helper()
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := c.Get(ctx, types.NamespacedName{Name: opts.ConfigurationName}, &mwc); err != nil {
		t.Fatal(err)
	}
	var sec corev1.Secret
	if err := c.Get(ctx, types.NamespacedName{Namespace: opts.Namespace, Name: opts.CertSecret}, &sec); err != nil {
		t.Fatal(err)
	}
	return mwc.ResourceVersion + "/" + sec.ResourceVersion
}

func names(cs []corev1.Container) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Name
	}
	return out
}

// TestCertificateRotation runs the webhook with lifetimes of seconds: the serving
// certificate and then the CA are renewed while the apiserver keeps calling the webhook,
// and no call fails.
func TestCertificateRotation(t *testing.T) {
	if testing.Short() {
		t.Skip("rotation takes about 10 seconds")
	}
	env := kubetest.Start(t)
	opts := webhooktest.Start(t, env, func(o *webhook.Options) {
		o.CATTL = 9 * time.Second
		o.CertTTL = 2 * time.Second
		o.Resync = 200 * time.Millisecond
	})
	ctx := context.Background()

	leaves := map[string]bool{}
	issuers := map[string]bool{}
	var calls, failures atomic.Int32
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		calls.Add(1)
		pod := appPod(webhooktest.ReadyNamespace, "", func(p *corev1.Pod) { p.GenerateName = "rotation-" })
		if err := env.Client.Create(ctx, pod, client.DryRunAll); err != nil || !podspec.Injected(pod) {
			failures.Add(1)
			t.Errorf("call %d: the apiserver could not inject (err %v)", calls.Load(), err)
		}
		if leaf, err := servedCertificate(ctx, env.Client, opts); err != nil {
			t.Errorf("the served certificate is not trusted by the configuration's caBundle: %v", err)
		} else {
			leaves[leaf.SerialNumber.String()] = true
			issuers[leaf.Issuer.CommonName] = true
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("%d calls, %d failures, %d serving certificates, %d CAs", calls.Load(), failures.Load(), len(leaves), len(issuers))
	if len(leaves) < 3 {
		t.Errorf("served %d serving certificates in 10s with a 2s lifetime, want at least 3", len(leaves))
	}
	if len(issuers) < 2 {
		t.Errorf("served certificates from %d CAs in 10s with a 9s CA lifetime, want at least 2", len(issuers))
	}
}

// servedCertificate dials the webhook as the apiserver does: trusting only the caBundle of
// the configuration.
func servedCertificate(ctx context.Context, c client.Client, opts webhook.Options) (*x509.Certificate, error) {
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := c.Get(ctx, types.NamespacedName{Name: opts.ConfigurationName}, &mwc); err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(mwc.Webhooks[0].ClientConfig.CABundle) {
		return nil, fmt.Errorf("caBundle holds no certificate")
	}
	conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", opts.Port), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}
