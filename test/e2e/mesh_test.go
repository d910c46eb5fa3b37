//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	policyv1alpha1 "github.com/trellis-mesh/trellis/api/policy/v1alpha1"
	splitv1alpha4 "github.com/trellis-mesh/trellis/api/split/v1alpha4"
	"github.com/trellis-mesh/trellis/injector/podspec"
)

func intstrPort(p int) intstr.IntOrString { return intstr.FromInt(p) }

// --- 1. Injection -------------------------------------------------------------------

func TestInjectionByNamespaceLabel(t *testing.T) {
	ctx := ctxFor(t)
	for _, app := range []string{"frontend", "backend", "echo", "greeter"} {
		pods, err := k.kube.CoreV1().Pods(shopNS).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
		if err != nil {
			t.Fatal(err)
		}
		if len(pods.Items) == 0 {
			t.Fatalf("no pod of app=%s in %s", app, shopNS)
		}
		for i := range pods.Items {
			p := &pods.Items[i]
			proxy, native := proxyContainer(p)
			if proxy == nil {
				t.Errorf("pod %s has no %s container: the namespace is labelled for injection", p.Name, podspec.ProxyContainerName)
				continue
			}
			if p.Annotations[podspec.StatusAnnotation] == "" {
				t.Errorf("pod %s has no %s annotation", p.Name, podspec.StatusAnnotation)
			}
			appStarted, proxyStarted := startedAt(p, "app"), startedAt(p, podspec.ProxyContainerName)
			if appStarted.IsZero() || proxyStarted.IsZero() {
				t.Errorf("pod %s: app started %v, proxy started %v", p.Name, appStarted, proxyStarted)
				continue
			}
			if appStarted.Before(proxyStarted) {
				t.Errorf("pod %s: the app started (%v) before the proxy (%v)", p.Name, appStarted, proxyStarted)
			}
			if native && proxy.StartupProbe == nil {
				t.Errorf("pod %s: the native sidecar has no startup probe, so nothing holds the app back until the proxy is ready", p.Name)
			}
			t.Logf("pod %s: proxy started %s, app %s later (native sidecar: %v)", p.Name, proxyStarted.Format(time.RFC3339), appStarted.Sub(proxyStarted), native)
		}
	}
}

func TestOptOutPodsHaveNoSidecar(t *testing.T) {
	ctx := ctxFor(t)
	byLabel := demoPod(shopNS, "e2e-optout-label", k.demoImage, map[string]string{podspec.InjectKey: "false"})
	byAnnotation := demoPod(shopNS, "e2e-optout-annotation", k.demoImage, nil)
	byAnnotation.Annotations = map[string]string{podspec.InjectKey: "false"}
	for _, p := range []*corev1.Pod{byLabel, byAnnotation} {
		_ = k.c.Delete(ctx, p, client.GracePeriodSeconds(0))
		eventually(t, time.Minute, "old pod gone", func() error { return absent(ctx, p) })
		if err := k.c.Create(ctx, p); err != nil {
			t.Fatalf("create %s: %v", p.Name, err)
		}
		t.Cleanup(func() { _ = k.c.Delete(context.Background(), p, client.GracePeriodSeconds(0)) })
		if c, _ := proxyContainer(p); c != nil {
			t.Errorf("pod %s opted out but got a sidecar", p.Name)
		}
		if err := k.waitPodReady(ctx, shopNS, p.Name); err != nil {
			t.Errorf("opted-out pod %s: %v", p.Name, err)
		}
	}
}

func TestJobCompletesWithItsSidecar(t *testing.T) {
	ctx := ctxFor(t)
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Namespace: shopNS, Name: "e2e-job"},
		Spec: batchv1.JobSpec{
			BackoffLimit:            ptr.To[int32](0), // the first pod must succeed
			TTLSecondsAfterFinished: ptr.To[int32](600),
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				RestartPolicy: corev1.RestartPolicyNever,
				Containers: []corev1.Container{{
					Name: "app", Image: k.demoImage, ImagePullPolicy: corev1.PullIfNotPresent,
					// Its first request goes out at once: it only succeeds if the proxy was
					// ready before the app started.
					Args:            []string{"job", "--url", "http://frontend:8080/", "--n", "5"},
					SecurityContext: &corev1.SecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](10001)},
				}},
			}},
		},
	}
	_ = k.c.Delete(ctx, job, client.PropagationPolicy(metav1.DeletePropagationForeground))
	eventually(t, 2*time.Minute, "old job gone", func() error { return absent(ctx, job) })
	if err := k.c.Create(ctx, job); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = k.c.Delete(context.Background(), job, client.PropagationPolicy(metav1.DeletePropagationBackground))
	})
	eventually(t, 3*time.Minute, "the job completes", func() error {
		if err := k.c.Get(ctx, client.ObjectKeyFromObject(job), job); err != nil {
			return err
		}
		for _, c := range job.Status.Conditions {
			if c.Status == corev1.ConditionTrue && c.Type == batchv1.JobFailed {
				return fmt.Errorf("job failed: %s", c.Message) // not retried: BackoffLimit 0
			}
		}
		if job.Status.Succeeded != 1 {
			return fmt.Errorf("succeeded %d, failed %d, active %d", job.Status.Succeeded, job.Status.Failed, job.Status.Active)
		}
		return nil
	})
	pods, err := k.kube.CoreV1().Pods(shopNS).List(ctx, metav1.ListOptions{LabelSelector: "job-name=e2e-job"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("job pods: %v, %d", err, len(pods.Items))
	}
	p := &pods.Items[0]
	if c, _ := proxyContainer(p); c == nil {
		t.Fatalf("the job's pod has no sidecar")
	}
	eventually(t, time.Minute, "the job's pod completes (the sidecar stops with it)", func() error {
		p, err := k.kube.CoreV1().Pods(shopNS).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodSucceeded {
			return fmt.Errorf("pod %s: %s", p.Name, describePod(p))
		}
		return nil
	})
}

// --- 2. mTLS ------------------------------------------------------------------------

func TestMTLSBothSidesSeeTheOthersIdentity(t *testing.T) {
	frontend := k.podOf(t, shopNS, "app=frontend")
	var r getResult
	k.exec(t, shopNS, frontend, &r, "get", "--url", "http://backend-v1:8080/", "--n", "10")
	r.requireAll(t, 200)
	if want := []string{spiffeID(shopNS, "frontend")}; !slices.Equal(r.PeerIdentities, want) {
		t.Errorf("the backend saw caller identities %q, want %q", r.PeerIdentities, want)
	}
	if want := []string{spiffeID(shopNS, "backend")}; !slices.Equal(r.UpstreamIdentities, want) {
		t.Errorf("the frontend's sidecar reports upstream identities %q, want %q", r.UpstreamIdentities, want)
	}
}

func TestStrictRefusesPlaintextAndPermissiveAcceptsIt(t *testing.T) {
	ctx := ctxFor(t)
	const url = "http://frontend.shop:8080/healthz"
	outside := "outside"
	plaintext := func() getResult {
		var r getResult
		k.exec(t, outsideNS, outside, &r, "get", "--url", url, "--n", "3", "--timeout", "2s")
		return r
	}
	// The example's MeshConfig makes shop STRICT.
	setShopMode(t, ctx, policyv1alpha1.MTLSStrict)
	eventually(t, 20*time.Second, "STRICT refuses a plaintext request from outside the mesh", func() error {
		if r := plaintext(); r.ok() != 0 {
			return fmt.Errorf("%d of %d plaintext requests got through: %v", r.ok(), r.Requests, r.Statuses)
		}
		return nil
	})
	setShopMode(t, ctx, policyv1alpha1.MTLSPermissive)
	t.Cleanup(func() { setShopMode(t, context.Background(), policyv1alpha1.MTLSStrict) })
	eventually(t, 20*time.Second, "PERMISSIVE accepts a plaintext request", func() error {
		if r := plaintext(); r.ok() != r.Requests || r.Requests == 0 {
			return fmt.Errorf("%d of %d plaintext requests got through: %v %v", r.ok(), r.Requests, r.Statuses, r.Errors)
		}
		return nil
	})
}

func setShopMode(t *testing.T, ctx context.Context, mode policyv1alpha1.MTLSMode) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var mc policyv1alpha1.MeshConfig
		if err := k.c.Get(ctx, types.NamespacedName{Name: "default"}, &mc); err != nil {
			return fmt.Errorf("the example's MeshConfig: %w", err)
		}
		overrides := slices.DeleteFunc(mc.Spec.MTLS.NamespaceOverrides, func(o policyv1alpha1.NamespaceMTLS) bool { return o.Namespace == shopNS })
		mc.Spec.MTLS.NamespaceOverrides = append(overrides, policyv1alpha1.NamespaceMTLS{Namespace: shopNS, Mode: mode})
		return k.c.Update(ctx, &mc)
	})
	if err != nil {
		t.Fatalf("set %s to %s: %v", shopNS, mode, err)
	}
}

// --- 3. TrafficSplit ----------------------------------------------------------------

const canarySplit = "backend-canary"

func TestTrafficSplitWeightsAndChanges(t *testing.T) {
	ctx := ctxFor(t)
	restoreCanary(t)
	frontend := k.podOf(t, shopNS, "app=frontend")

	var r getResult
	k.exec(t, shopNS, frontend, &r, "get", "--url", "http://backend:8080/", "--n", "2000", "--concurrency", "8")
	r.requireAll(t, 200)
	share := 100 * float64(r.Versions["v1"]) / float64(r.Requests)
	t.Logf("90/10 split: v1 %d, v2 %d of %d requests: %.1f%% to v1", r.Versions["v1"], r.Versions["v2"], r.Requests, share)
	if share < 87 || share > 93 {
		t.Errorf("v1 got %.1f%% of the requests, want 90 ± 3", share)
	}

	// Move everything to v2: the change must be in effect within 2 s.
	setCanaryWeights(t, ctx, 0, 100)
	elapsed := untilOnly(t, frontend, "http://backend:8080/", "v2", 30*time.Second)
	t.Logf("the weight change was in effect %s after the update was accepted", elapsed.Round(time.Millisecond))
	if elapsed > 2*time.Second {
		t.Errorf("the weight change took %s to take effect, want within 2s", elapsed)
	}
}

// setCanaryWeights sets the example split's weights for backend-v1 and backend-v2.
func setCanaryWeights(t *testing.T, ctx context.Context, v1, v2 int) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var split splitv1alpha4.TrafficSplit
		if err := k.c.Get(ctx, types.NamespacedName{Namespace: shopNS, Name: canarySplit}, &split); err != nil {
			return err
		}
		split.Spec.Backends = []splitv1alpha4.TrafficSplitBackend{{Service: "backend-v1", Weight: v1}, {Service: "backend-v2", Weight: v2}}
		return k.c.Update(ctx, &split)
	})
	if err != nil {
		t.Fatalf("set the canary weights to %d/%d: %v", v1, v2, err)
	}
}

// untilOnly sends small batches until one is answered by version alone, and returns how
// long after the call that was (measured to the end of that batch, so it includes the
// exec round trip: an upper bound).
func untilOnly(t *testing.T, pod, url, version string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var last getResult
	for time.Since(start) < timeout {
		var r getResult
		k.exec(t, shopNS, pod, &r, "get", "--url", url, "--n", "20", "--concurrency", "20")
		if r.Requests > 0 && r.Versions[version] == r.Requests {
			return time.Since(start)
		}
		last = r
	}
	t.Fatalf("after %s, still not only %s: %v (status %v)", timeout, version, last.Versions, last.Statuses)
	return 0
}

// restoreCanary puts the example's 90/10 split back when the test ends (and now, in case
// an earlier run left it changed).
func restoreCanary(t *testing.T) {
	t.Helper()
	put := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		want := []splitv1alpha4.TrafficSplitBackend{{Service: "backend-v1", Weight: 90}, {Service: "backend-v2", Weight: 10}}
		var s splitv1alpha4.TrafficSplit
		err := k.c.Get(ctx, types.NamespacedName{Namespace: shopNS, Name: canarySplit}, &s)
		if apierrors.IsNotFound(err) {
			s = splitv1alpha4.TrafficSplit{
				ObjectMeta: metav1.ObjectMeta{Namespace: shopNS, Name: canarySplit},
				Spec:       splitv1alpha4.TrafficSplitSpec{Service: "backend", Backends: want},
			}
			return k.c.Create(ctx, &s)
		}
		if err != nil {
			return err
		}
		s.Spec.Backends = want
		return k.c.Update(ctx, &s)
	}
	if err := put(); err != nil {
		t.Fatalf("restore the canary split: %v", err)
	}
	t.Cleanup(func() {
		if err := put(); err != nil {
			t.Errorf("restore the canary split: %v", err)
		}
	})
}

// Flagger drives splits through v1alpha2 (and v1alpha3 with --smi-version): it creates
// one, then moves the weights step by step. The same objects must steer traffic the same.
func TestFlaggerStyleSplitsInOlderVersions(t *testing.T) {
	ctx := ctxFor(t)
	restoreCanary(t)
	frontend := k.podOf(t, shopNS, "app=frontend")
	// Only one split per service is honoured (the oldest): the example's must go for this.
	if err := k.c.Delete(ctx, &splitv1alpha4.TrafficSplit{ObjectMeta: metav1.ObjectMeta{Namespace: shopNS, Name: canarySplit}}); err != nil {
		t.Fatal(err)
	}
	for _, version := range []string{"v1alpha2", "v1alpha3"} {
		t.Run(version, func(t *testing.T) {
			u := &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "split.smi-spec.io/" + version,
				"kind":       "TrafficSplit",
				"metadata":   map[string]any{"name": "backend-flagger", "namespace": shopNS},
				"spec": map[string]any{
					"service": "backend",
					"backends": []any{
						map[string]any{"service": "backend-v1", "weight": int64(0)},
						map[string]any{"service": "backend-v2", "weight": int64(100)},
					},
				},
			}}
			if err := k.c.Create(ctx, u); err != nil {
				t.Fatalf("create a %s split: %v", version, err)
			}
			t.Cleanup(func() { _ = k.c.Delete(context.Background(), u) })
			untilOnly(t, frontend, "http://backend:8080/", "v2", 30*time.Second)

			// Promotion: all weight back to the primary, written through the same version
			// (read first: the control plane writes the status in between).
			err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
				if err := k.c.Get(ctx, client.ObjectKeyFromObject(u), u); err != nil {
					return err
				}
				if err := unstructured.SetNestedSlice(u.Object, []any{
					map[string]any{"service": "backend-v1", "weight": int64(100)},
					map[string]any{"service": "backend-v2", "weight": int64(0)},
				}, "spec", "backends"); err != nil {
					return err
				}
				return k.c.Update(ctx, u)
			})
			if err != nil {
				t.Fatalf("update the %s split: %v", version, err)
			}
			untilOnly(t, frontend, "http://backend:8080/", "v1", 30*time.Second)
			if err := k.c.Delete(ctx, u); err != nil {
				t.Fatal(err)
			}
			eventually(t, time.Minute, "the split is gone", func() error { return absent(ctx, u) })
		})
	}
}

// --- 4. AuthorizationPolicy -----------------------------------------------------------

func TestAuthorizationPolicyAllowsOnlyTheFrontend(t *testing.T) {
	var allowed, denied getResult
	k.exec(t, shopNS, k.podOf(t, shopNS, "app=frontend"), &allowed, "get", "--url", "http://backend:8080/", "--n", "10")
	allowed.requireAll(t, 200)
	// The echo workload is in the mesh too, with its own identity: the policy denies it.
	k.exec(t, shopNS, k.podOf(t, shopNS, "app=echo"), &denied, "get", "--url", "http://backend:8080/", "--n", "10")
	denied.requireAll(t, 403)
}

// --- 5. Protocols -------------------------------------------------------------------

func TestProtocolsThroughTheMesh(t *testing.T) {
	frontend := k.podOf(t, shopNS, "app=frontend")
	t.Run("HTTP/1.1", func(t *testing.T) {
		var r getResult
		k.exec(t, shopNS, frontend, &r, "get", "--url", "http://backend-v1:8080/", "--n", "20")
		r.requireAll(t, 200)
		if r.Protocols["HTTP/1.1"] != r.Requests {
			t.Errorf("client-side protocols %v, want HTTP/1.1 only", r.Protocols)
		}
	})
	t.Run("HTTP/2", func(t *testing.T) {
		var r getResult
		k.exec(t, shopNS, frontend, &r, "get", "--url", "http://backend-v1:8080/", "--n", "20", "--h2c")
		r.requireAll(t, 200)
		if r.Protocols["HTTP/2.0"] != r.Requests {
			t.Errorf("client-side protocols %v, want HTTP/2.0 only", r.Protocols)
		}
	})
	t.Run("gRPC streaming", func(t *testing.T) {
		var r chatResult
		k.exec(t, shopNS, frontend, &r, "grpc-chat", "--addr", "greeter:9090", "--messages", "10")
		if r.Error != "" || r.Received != 10 {
			t.Fatalf("chat: received %d of 10, error %q", r.Received, r.Error)
		}
		if want := []string{spiffeID(shopNS, "frontend")}; !slices.Equal(r.PeerIdentities, want) {
			t.Errorf("the gRPC server saw %q, want %q", r.PeerIdentities, want)
		}
	})
	t.Run("server-first TCP", func(t *testing.T) {
		var r tcpResult
		k.exec(t, shopNS, frontend, &r, "tcp-hello", "--addr", "echo:7000")
		if r.Error != "" || !strings.HasPrefix(r.Banner, "HELLO ") || !strings.HasPrefix(r.Echo, "ECHO ") {
			t.Fatalf("banner %q, echo %q, error %q", r.Banner, r.Echo, r.Error)
		}
	})
}

// --- 6. Control plane outage ----------------------------------------------------------

func TestTrafficSurvivesTheControlPlaneAndNewConfigArrivesAfter(t *testing.T) {
	ctx := ctxFor(t)
	restoreCanary(t)
	frontend := k.podOf(t, shopNS, "app=frontend")
	untilShare(t, frontend, "v1", 75) // the 90/10 split is in force

	key := types.NamespacedName{Namespace: meshNS, Name: "trellis-controlplane"}
	var d appsv1.Deployment
	if err := k.c.Get(ctx, key, &d); err != nil {
		t.Fatal(err)
	}
	replicas := ptr.Deref(d.Spec.Replicas, 1)
	scale := func(n int32) error {
		var cur appsv1.Deployment
		if err := k.c.Get(context.Background(), key, &cur); err != nil {
			return err
		}
		cur.Spec.Replicas = ptr.To(n)
		return k.c.Update(context.Background(), &cur)
	}
	t.Cleanup(func() {
		if err := scale(replicas); err != nil {
			t.Errorf("scale the control plane back to %d: %v", replicas, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := k.waitDeployment(ctx, key); err != nil {
			t.Errorf("the control plane did not come back: %v", err)
		}
	})
	// Kill it: no replacement, and the running pods are killed at once.
	if err := scale(0); err != nil {
		t.Fatal(err)
	}
	pods, err := k.kube.CoreV1().Pods(meshNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=trellis-controlplane"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		_ = k.kube.CoreV1().Pods(meshNS).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	}
	eventually(t, 2*time.Minute, "every control-plane pod is gone", func() error {
		pods, err := k.kube.CoreV1().Pods(meshNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=trellis-controlplane"})
		if err != nil {
			return err
		}
		if n := len(pods.Items); n > 0 {
			return fmt.Errorf("%d pods left", n)
		}
		return nil
	})

	// Traffic keeps flowing on the last configuration.
	var r getResult
	k.exec(t, shopNS, frontend, &r, "get", "--url", "http://backend:8080/", "--n", "300", "--concurrency", "4")
	r.requireAll(t, 200)

	// A change made now cannot reach the proxies; they keep the 90/10 split.
	setCanaryWeights(t, ctx, 0, 100)
	time.Sleep(3 * time.Second)
	k.exec(t, shopNS, frontend, &r, "get", "--url", "http://backend:8080/", "--n", "300", "--concurrency", "4")
	r.requireAll(t, 200)
	if r.Versions["v1"] == 0 {
		t.Fatalf("with no control plane the proxies changed their split anyway: %v", r.Versions)
	}
	t.Logf("without a control plane: %v (the last configuration, 90/10)", r.Versions)

	// The control plane returns, and the change arrives.
	if err := scale(replicas); err != nil {
		t.Fatal(err)
	}
	elapsed := untilOnly(t, frontend, "http://backend:8080/", "v2", 3*time.Minute)
	t.Logf("the new split was in effect %s after the control plane was scaled back up", elapsed.Round(100*time.Millisecond))
}

// untilShare waits until at least pct% of a batch goes to version.
func untilShare(t *testing.T, pod, version string, pct float64) {
	t.Helper()
	eventually(t, 30*time.Second, fmt.Sprintf("%s gets %.0f%%", version, pct), func() error {
		var r getResult
		k.exec(t, shopNS, pod, &r, "get", "--url", "http://backend:8080/", "--n", "100", "--concurrency", "4")
		if r.Requests == 0 || 100*float64(r.Versions[version])/float64(r.Requests) < pct {
			return fmt.Errorf("versions %v", r.Versions)
		}
		return nil
	})
}

// --- helpers ------------------------------------------------------------------------

// proxyContainer returns the pod's sidecar and whether it is a native sidecar (an init
// container with restartPolicy Always).
func proxyContainer(p *corev1.Pod) (*corev1.Container, bool) {
	for i := range p.Spec.InitContainers {
		if c := &p.Spec.InitContainers[i]; c.Name == podspec.ProxyContainerName {
			return c, true
		}
	}
	for i := range p.Spec.Containers {
		if c := &p.Spec.Containers[i]; c.Name == podspec.ProxyContainerName {
			return c, false
		}
	}
	return nil, false
}

func startedAt(p *corev1.Pod, name string) time.Time {
	for _, cs := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		if cs.Name != name {
			continue
		}
		if cs.State.Running != nil {
			return cs.State.Running.StartedAt.Time
		}
		if cs.State.Terminated != nil {
			return cs.State.Terminated.StartedAt.Time
		}
	}
	return time.Time{}
}

func absent(ctx context.Context, obj client.Object) error {
	err := k.c.Get(ctx, client.ObjectKeyFromObject(obj), obj)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	return fmt.Errorf("%s still exists", obj.GetName())
}
