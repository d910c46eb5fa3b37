// Package webhooktest runs the injector webhook against an envtest apiserver, the way the
// control plane runs it: its own certificate manager writes the configuration and its CA,
// and the apiserver calls it over TLS on 127.0.0.1.
package webhooktest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/trellis-mesh/trellis/injector/podspec"
	"github.com/trellis-mesh/trellis/injector/webhook"
	"github.com/trellis-mesh/trellis/internal/kubetest"
)

// ReadyNamespace is the labelled namespace Start creates to see the webhook answer.
const ReadyNamespace = "trellis-webhook-ready"

// Start sets up the webhook with webhook.Setup in a manager of its own, served on a free
// port of 127.0.0.1 (the configuration points at it by URL), and returns once the apiserver
// injects pods through it. configure, when not nil, adjusts the options first. It creates
// the control plane's namespace when missing. Everything stops when the test ends.
func Start(t testing.TB, env *kubetest.Env, configure func(*webhook.Options)) webhook.Options {
	t.Helper()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctrl.SetLogger(logr.FromSlogHandler(log.Handler()))

	port := freePort(t)
	opts := webhook.DefaultOptions()
	opts.Host = "127.0.0.1"
	opts.Port = port
	opts.URL = fmt.Sprintf("https://127.0.0.1:%d%s", port, opts.Path)
	opts.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	opts.Resync = time.Second
	opts.Logger = log
	if configure != nil {
		configure(&opts)
	}

	ctx, cancel := context.WithCancel(context.Background())
	ensureNamespace(ctx, t, env.Client, opts.Namespace, nil)
	ensureNamespace(ctx, t, env.Client, ReadyNamespace, map[string]string{podspec.InjectKey: "enabled"})

	mgr, err := ctrl.NewManager(env.Config, manager.Options{
		Scheme:                 env.Scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
	})
	if err != nil {
		cancel()
		t.Fatalf("create manager: %v", err)
	}
	if err := webhook.Setup(mgr, opts); err != nil {
		cancel()
		t.Fatalf("webhook.Setup: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})

	deadline := time.Now().Add(30 * time.Second)
	for {
		err := probe(ctx, env.Client)
		if err == nil {
			return opts
		}
		if time.Now().After(deadline) {
			t.Fatalf("the apiserver did not inject through the webhook within 30s: %v", err)
		}
		select {
		case err := <-done:
			t.Fatalf("the manager stopped: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// probe creates (as a dry run) a pod in ReadyNamespace and checks that it came back injected.
func probe(ctx context.Context, c client.Client) error {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ReadyNamespace, GenerateName: "probe-"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "example.com/app:1"}}},
	}
	if err := c.Create(ctx, pod, client.DryRunAll); err != nil {
		return err
	}
	if !podspec.Injected(pod) {
		return errors.New("the pod came back without the proxy")
	}
	return nil
}

func ensureNamespace(ctx context.Context, t testing.TB, c client.Client, name string, labels map[string]string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if err := c.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create namespace %s: %v", name, err)
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
