// Package controlplane assembles the Trellis control plane: controllers fill the mesh model,
// the xDS server turns it into per-proxy configuration, the CA signs workload certificates,
// and the status writer reports on users' objects. cmd/trellis-controlplane calls Run.
package controlplane

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/trellis-mesh/trellis/api/scheme"
	"github.com/trellis-mesh/trellis/controlplane/controllers"
	"github.com/trellis-mesh/trellis/controlplane/identity"
	"github.com/trellis-mesh/trellis/controlplane/meshstate"
	"github.com/trellis-mesh/trellis/controlplane/status"
	"github.com/trellis-mesh/trellis/controlplane/xds"
	"github.com/trellis-mesh/trellis/injector/webhook"
	"github.com/trellis-mesh/trellis/internal/memlimit"
)

// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch

// Options configure the control plane. DefaultOptions gives every default.
type Options struct {
	// Kubeconfig is a kubeconfig file; empty means in-cluster or $KUBECONFIG.
	Kubeconfig string
	// RestConfig, when set, is used instead of Kubeconfig (tests).
	RestConfig *rest.Config

	// Namespace and ServiceAccount the control plane runs as, and the Service in front of it;
	// they name its own identity and the DNS names of its serving certificate.
	Namespace, ServiceAccount, ServiceName string
	TrustDomain                            string

	// CASecret holds the CA key pair. When CAUserSupplied, the control plane never creates
	// it and refuses to start without it.
	CASecret       string
	CAUserSupplied bool
	// CertTTL is the default lifetime of workload certificates; MaxCertTTL caps requests.
	CertTTL, MaxCertTTL time.Duration

	// Listen addresses: xDS and certificates (TLS gRPC), metrics, health probes.
	GRPCAddr, MetricsAddr, HealthAddr string

	LeaderElection bool
	// Debounce is how long the snapshot loop waits for quiet after a change.
	Debounce time.Duration
	// ShutdownTimeout bounds the graceful stop of streams and runnables.
	ShutdownTimeout time.Duration

	// Injector is the sidecar-injection webhook (:15017). Run fills in its namespace,
	// Service, trust domain and control-plane address from the fields above.
	Injector webhook.Options

	Logger *slog.Logger
}

// DefaultOptions are the defaults of the chart.
func DefaultOptions() Options {
	return Options{
		Namespace:       "trellis-system",
		ServiceAccount:  "trellis-controlplane",
		ServiceName:     "trellis-controlplane",
		TrustDomain:     meshstate.DefaultTrustDomain,
		CASecret:        "trellis-ca",
		CertTTL:         24 * time.Hour,
		MaxCertTTL:      7 * 24 * time.Hour,
		GRPCAddr:        ":15012",
		MetricsAddr:     ":15014",
		HealthAddr:      ":15021",
		LeaderElection:  true,
		Debounce:        100 * time.Millisecond,
		ShutdownTimeout: 15 * time.Second,
		Injector:        webhook.DefaultOptions(),
	}
}

// Run runs the control plane until ctx ends.
func Run(ctx context.Context, opts Options) error {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	ctrl.SetLogger(logr.FromSlogHandler(log.Handler()))
	if limit, from := memlimit.Set(); limit > 0 {
		log.Info("Go memory limit", "bytes", limit, "from", from)
	}
	td, err := spiffeid.TrustDomainFromString(opts.TrustDomain)
	if err != nil {
		return fmt.Errorf("--trust-domain %q: %w", opts.TrustDomain, err)
	}
	cfg, err := restConfig(opts)
	if err != nil {
		return err
	}
	sch, err := scheme.New()
	if err != nil {
		return err
	}

	exporter, err := otelprom.New(otelprom.WithRegisterer(ctrlmetrics.Registry), otelprom.WithoutScopeInfo())
	if err != nil {
		return fmt.Errorf("metrics exporter: %w", err)
	}
	meter := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter)).Meter("trellis.dev/controlplane")

	mgr, err := ctrl.NewManager(cfg, manager.Options{
		Scheme:                        sch,
		Metrics:                       metricsserver.Options{BindAddress: opts.MetricsAddr},
		HealthProbeBindAddress:        opts.HealthAddr,
		LeaderElection:                opts.LeaderElection,
		LeaderElectionID:              "trellis-controlplane",
		LeaderElectionNamespace:       opts.Namespace,
		LeaderElectionReleaseOnCancel: true,
		GracefulShutdownTimeout:       &opts.ShutdownTimeout,
		Cache:                         cache.Options{DefaultTransform: cache.TransformStripManagedFields()},
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}

	store := meshstate.NewStore()
	mesh := meshstate.DefaultMesh()
	mesh.TrustDomain = td.Name()
	store.SetMesh(mesh)
	ctrls, err := controllers.Setup(mgr, store, controllers.Options{TrustDomain: td.Name(), Logger: log})
	if err != nil {
		return err
	}

	// The CA is loaded before anything serves: without it nothing can be trusted.
	direct, err := client.New(cfg, client.Options{Scheme: sch})
	if err != nil {
		return fmt.Errorf("create client: %w", err)
	}
	ca, err := identity.LoadOrCreate(ctx, direct, opts.Namespace, opts.CASecret, td, opts.CAUserSupplied,
		identity.WithDefaultTTL(opts.CertTTL), identity.WithMaxTTL(opts.MaxCertTTL))
	if err != nil {
		return fmt.Errorf("load the mesh CA: %w", err)
	}
	selfID, err := identity.WorkloadID(td, opts.Namespace, opts.ServiceAccount)
	if err != nil {
		return err
	}
	dnsNames := []string{
		opts.ServiceName,
		opts.ServiceName + "." + opts.Namespace,
		opts.ServiceName + "." + opts.Namespace + ".svc",
		opts.ServiceName + "." + opts.Namespace + ".svc.cluster.local",
	}
	rotator, err := identity.NewCertRotator(func() (*tls.Certificate, error) {
		return ca.ServingCertificate(selfID, dnsNames, opts.CertTTL)
	}, identity.RotatorErrorHandler(func(err error) { log.Error("renew the control plane's serving certificate", "error", err) }))
	if err != nil {
		return fmt.Errorf("issue the control plane's serving certificate: %w", err)
	}

	if err := setupInjector(mgr, opts, td.Name(), selfID.String(), log); err != nil {
		return err
	}

	xdsMetrics, err := xds.NewMetrics(meter)
	if err != nil {
		return err
	}
	xdsServer := xds.New(store, xds.Options{
		PeerIdentity: identity.PeerIdentity,
		Debounce:     opts.Debounce,
		Logger:       log.With("component", "xds"),
		Metrics:      xdsMetrics,
	})
	caObserver, err := newCAMetrics(meter)
	if err != nil {
		return err
	}
	grpcServer := grpc.NewServer(append(xdsServer.ServerOptions(),
		grpc.Creds(credentials.NewTLS(identity.ServerTLSConfig(ca, rotator))),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// Every proxy holds a connection: no read buffer of gRPC's own on top of TLS's (32 KiB
		// per connection, 64 MB at 2000 proxies), and half the default write buffer.
		grpc.ReadBufferSize(0),
		grpc.WriteBufferSize(16<<10),
	)...)
	xdsServer.Register(grpcServer)
	identity.NewServer(ca, identity.NewKubeTokenReviewer(direct), caObserver).Register(grpcServer)

	var serving atomic.Bool
	for _, r := range []manager.Runnable{
		rotator,
		&serveGRPC{
			mgr: mgr, ctrls: ctrls, xds: xdsServer, grpc: grpcServer, addr: opts.GRPCAddr,
			timeout: opts.ShutdownTimeout, serving: &serving, log: log,
		},
		&status.Writer{Client: mgr.GetClient(), Store: store, TrustDomain: td.Name(), Logger: log.With("component", "status")},
	} {
		if err := mgr.Add(r); err != nil {
			return fmt.Errorf("add runnable: %w", err)
		}
	}
	if err := (&identity.BundlePublisher{Client: mgr.GetClient(), Bundle: ca}).SetupWithManager(mgr); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("xds", func(*http.Request) error {
		if !serving.Load() {
			return errors.New("the mesh model is not primed yet; xDS is not served")
		}
		return nil
	}); err != nil {
		return err
	}
	log.Info("starting the control plane", "trustDomain", td.Name(), "grpc", opts.GRPCAddr,
		"metrics", opts.MetricsAddr, "health", opts.HealthAddr, "identity", selfID.String())
	return mgr.Start(ctx)
}

func restConfig(opts Options) (*rest.Config, error) {
	if opts.RestConfig != nil {
		return opts.RestConfig, nil
	}
	if opts.Kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", opts.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("read kubeconfig %s: %w", opts.Kubeconfig, err)
		}
		return cfg, nil
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return nil, fmt.Errorf("find the cluster (in-cluster, $KUBECONFIG or ~/.kube/config): %w", err)
	}
	return cfg, nil
}

// serveGRPC waits for the caches, primes the model, builds the first snapshots, then serves
// xDS and certificates. It runs on every replica.
type serveGRPC struct {
	mgr     manager.Manager
	ctrls   *controllers.Controllers
	xds     *xds.Server
	grpc    *grpc.Server
	addr    string
	timeout time.Duration
	serving *atomic.Bool
	log     *slog.Logger
}

func (s *serveGRPC) NeedLeaderElection() bool { return false }

func (s *serveGRPC) Start(ctx context.Context) error {
	if !s.mgr.GetCache().WaitForCacheSync(ctx) {
		return errors.New("the informer caches did not sync")
	}
	if err := s.ctrls.Prime(ctx, s.mgr.GetCache()); err != nil {
		return fmt.Errorf("prime the mesh model: %w", err)
	}
	s.xds.Rebuild()
	lis, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("listen on %s for xDS: %w", s.addr, err)
	}
	loopDone := make(chan error, 1)
	go func() { loopDone <- s.xds.Run(ctx) }()
	serveDone := make(chan error, 1)
	go func() { serveDone <- s.grpc.Serve(lis) }()
	s.serving.Store(true)
	s.log.Info("serving xDS and certificates", "addr", lis.Addr().String())

	select {
	case err := <-serveDone:
		return fmt.Errorf("gRPC server on %s: %w", s.addr, err)
	case <-ctx.Done():
	}
	s.serving.Store(false)
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(s.timeout):
		s.grpc.Stop() // ADS streams never end by themselves; proxies reconnect elsewhere
	}
	<-loopDone
	return nil
}

// setupInjector adds the sidecar-injection webhook, pointing injected proxies at this
// control plane. The identity flag is injected only when it differs from the proxy's default
// (trellis-system/trellis-controlplane), so that `mesh inject` with its defaults makes the
// same pod as the webhook.
func setupInjector(mgr manager.Manager, opts Options, trustDomain, selfID string, log *slog.Logger) error {
	_, grpcPort, err := net.SplitHostPort(opts.GRPCAddr)
	if err != nil {
		return fmt.Errorf("--grpc-addr %q: %w", opts.GRPCAddr, err)
	}
	inj := opts.Injector
	inj.Namespace, inj.ServiceName = opts.Namespace, opts.ServiceName
	inj.Config.TrustDomain = trustDomain
	inj.Config.ControlPlaneServerName = opts.ServiceName + "." + opts.Namespace + ".svc"
	inj.Config.ControlPlaneAddr = net.JoinHostPort(inj.Config.ControlPlaneServerName, grpcPort)
	if opts.Namespace != "trellis-system" || opts.ServiceAccount != "trellis-controlplane" {
		inj.Config.ControlPlaneIdentity = selfID
	}
	inj.Logger = log
	return webhook.Setup(mgr, inj)
}
