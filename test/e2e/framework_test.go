//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	kscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/trellis-mesh/trellis/api/scheme"
)

// The fixtures hack/deploy.sh puts in place before the suite runs.
const (
	shopNS      = "shop"
	meshNS      = "trellis-system"
	outsideNS   = "e2e-outside" // not labelled for injection: a workload outside the mesh
	trustDomain = "cluster.local"
	appPort     = 8080
)

func spiffeID(ns, sa string) string {
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", trustDomain, ns, sa)
}

// cluster is what every test uses: clients for $KUBECONFIG and the demo image.
type cluster struct {
	cfg       *rest.Config
	kube      kubernetes.Interface
	c         client.Client
	demoImage string
}

var k *cluster

func TestMain(m *testing.M) {
	var err error
	k, err = connect()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	err = k.ready(ctx)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: the fixtures are not ready (run `make test-e2e`, which deploys them):", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func connect() (*cluster, error) {
	path := os.Getenv("KUBECONFIG")
	if path == "" {
		return nil, fmt.Errorf("KUBECONFIG is not set: point it at the cluster the mesh is installed in (`make test-e2e` does)")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", path, err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	s, err := scheme.New()
	if err != nil {
		return nil, err
	}
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		return nil, err
	}
	img := os.Getenv("E2E_DEMO_IMAGE")
	if img == "" {
		return nil, fmt.Errorf("E2E_DEMO_IMAGE is not set: the demo app's image, e.g. trellis/demo:dev (`make test-e2e` sets it)")
	}
	return &cluster{cfg: cfg, kube: kube, c: c, demoImage: img}, nil
}

// ready waits for the control plane, every demo Deployment, and a client pod outside the
// mesh (created here: it is the suite's own fixture, not part of the example).
func (k *cluster) ready(ctx context.Context) error {
	for _, d := range []types.NamespacedName{
		{Namespace: meshNS, Name: "trellis-controlplane"},
		{Namespace: shopNS, Name: "frontend"},
		{Namespace: shopNS, Name: "backend-v1"},
		{Namespace: shopNS, Name: "backend-v2"},
		{Namespace: shopNS, Name: "echo"},
		{Namespace: shopNS, Name: "greeter"},
	} {
		if err := k.waitDeployment(ctx, d); err != nil {
			return err
		}
	}
	return k.ensureOutsidePod(ctx)
}

func (k *cluster) waitDeployment(ctx context.Context, key types.NamespacedName) error {
	var last string
	for {
		d, err := k.kube.AppsV1().Deployments(key.Namespace).Get(ctx, key.Name, metav1.GetOptions{})
		switch {
		case err != nil:
			last = err.Error()
		case d.Status.ObservedGeneration >= d.Generation && d.Spec.Replicas != nil &&
			d.Status.UpdatedReplicas == *d.Spec.Replicas && d.Status.AvailableReplicas == *d.Spec.Replicas &&
			d.Status.Replicas == *d.Spec.Replicas:
			return nil
		default:
			last = fmt.Sprintf("%d/%d available, %d updated, %d in all", d.Status.AvailableReplicas, ptr.Deref(d.Spec.Replicas, 1), d.Status.UpdatedReplicas, d.Status.Replicas)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("deployment %s is not ready: %s", key, last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (k *cluster) ensureOutsidePod(ctx context.Context) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: outsideNS}}
	if err := k.c.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	pod := demoPod(outsideNS, "outside", k.demoImage, nil)
	if err := k.c.Create(ctx, pod); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return k.waitPodReady(ctx, outsideNS, "outside")
}

// demoPod runs the demo app's HTTP server, so that the pod stays up and the client tools
// can be run in it with exec.
func demoPod(ns, name, image string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr.To[int64](2),
			Containers: []corev1.Container{{
				Name:            "app",
				Image:           image,
				ImagePullPolicy: corev1.PullIfNotPresent,
				Args:            []string{"http", "--port", fmt.Sprint(appPort), "--version", name},
				Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{
					FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstrPort(appPort)}},
					PeriodSeconds: 1,
				},
				SecurityContext: &corev1.SecurityContext{
					RunAsNonRoot:             ptr.To(true),
					RunAsUser:                ptr.To[int64](10001),
					AllowPrivilegeEscalation: ptr.To(false),
				},
			}},
		},
	}
}

func (k *cluster) waitPodReady(ctx context.Context, ns, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var last string
	for {
		p, err := k.kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			if podReady(p) {
				return nil
			}
			last = describePod(p)
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pod %s/%s is not ready: %s", ns, name, last)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func describePod(p *corev1.Pod) string {
	var b strings.Builder
	fmt.Fprintf(&b, "phase %s", p.Status.Phase)
	for _, cs := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		switch {
		case cs.State.Waiting != nil:
			fmt.Fprintf(&b, "; %s waiting: %s %s", cs.Name, cs.State.Waiting.Reason, cs.State.Waiting.Message)
		case cs.State.Terminated != nil:
			fmt.Fprintf(&b, "; %s terminated: %s (exit %d)", cs.Name, cs.State.Terminated.Reason, cs.State.Terminated.ExitCode)
		case cs.State.Running != nil && !cs.Ready:
			fmt.Fprintf(&b, "; %s running, not ready", cs.Name)
		}
	}
	return b.String()
}

// podOf returns the name of a ready pod with the label app=<app> in ns.
func (k *cluster) podOf(t *testing.T, ns, selector string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		pods, err := k.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err == nil {
			for i := range pods.Items {
				if p := &pods.Items[i]; p.DeletionTimestamp == nil && podReady(p) {
					return p.Name
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no ready pod for %s in %s (last error: %v)", selector, ns, err)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// exec runs the demo binary's tool in the pod's app container and decodes the one JSON
// object it prints into out. The image has no shell: args are the binary's own.
func (k *cluster) exec(t *testing.T, ns, pod string, out any, args ...string) {
	t.Helper()
	stdout, stderr, err := k.execRaw(ns, pod, "app", append([]string{"/trellis-demo"}, args...))
	if err != nil {
		t.Fatalf("exec %s/%s %v: %v\nstderr: %s\nstdout: %s", ns, pod, args, err, stderr, stdout)
	}
	if err := json.Unmarshal(stdout, out); err != nil {
		t.Fatalf("exec %s/%s %v printed no JSON result: %v\nstdout: %s\nstderr: %s", ns, pod, args, err, stdout, stderr)
	}
}

func (k *cluster) execRaw(ns, pod, container string, cmd []string) ([]byte, []byte, error) {
	req := k.kube.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: cmd, Stdout: true, Stderr: true}, kscheme.ParameterCodec)
	ws, err := remotecommand.NewWebSocketExecutor(k.cfg, "GET", req.URL().String())
	if err != nil {
		return nil, nil, err
	}
	spdy, err := remotecommand.NewSPDYExecutor(k.cfg, "POST", req.URL())
	if err != nil {
		return nil, nil, err
	}
	ex, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool { return true })
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr})
	return stdout.Bytes(), stderr.Bytes(), err
}

// eventually polls cond until it returns nil or the timeout passes, and fails with its
// last error.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
