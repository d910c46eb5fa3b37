// Package agent runs the sidecar: it obtains the workload certificate, opens the xDS stream,
// serves the data path on 15001/15006 with the configuration it receives, and the admin and
// status ports; on SIGTERM it stops accepting, drains, and exits. cmd/trellis-proxy calls Run.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/trellis-mesh/trellis/sidecar/admin"
	"github.com/trellis-mesh/trellis/sidecar/config"
	"github.com/trellis-mesh/trellis/sidecar/probes"
	"github.com/trellis-mesh/trellis/sidecar/proxy"
	"github.com/trellis-mesh/trellis/sidecar/redirect"
	"github.com/trellis-mesh/trellis/sidecar/svid"
	"github.com/trellis-mesh/trellis/sidecar/telemetry"
	"github.com/trellis-mesh/trellis/sidecar/xdsclient"
)

// Options configure the sidecar. The injector sets them from the pod (downward API).
type Options struct {
	PodName, PodNamespace, ServiceAccount string
	TrustDomain                           string

	// ControlPlaneAddr serves xDS and certificates. ControlPlaneServerName is the DNS name
	// its certificate must carry for the certificate request (made before the sidecar has
	// an identity); ControlPlaneIdentity is the SPIFFE ID it must present on the xDS stream.
	ControlPlaneAddr, ControlPlaneServerName, ControlPlaneIdentity string
	// TokenPath is the projected ServiceAccount token (audience trellis-ca); RootCertPath the
	// trust bundle that authenticates the control plane.
	TokenPath, RootCertPath string

	OutboundAddr, InboundAddr, AdminAddr, StatusAddr string
	// DrainDuration is how long in-flight requests may finish after SIGTERM or /drain.
	DrainDuration time.Duration
	// AppProbes is the app's original probes, as the injector wrote them
	// (TRELLIS_APP_PROBES); the status port runs them for the kubelet.
	AppProbes string

	Logger *slog.Logger
}

// DefaultOptions are the injector's defaults.
func DefaultOptions() Options {
	return Options{
		TrustDomain:            "cluster.local",
		ControlPlaneAddr:       "trellis-controlplane.trellis-system.svc:15012",
		ControlPlaneServerName: "trellis-controlplane.trellis-system.svc",
		TokenPath:              "/var/run/secrets/trellis/tokens/trellis-ca-token",
		RootCertPath:           "/var/run/secrets/trellis/ca/root-cert.pem",
		OutboundAddr:           ":15001",
		InboundAddr:            ":15006",
		AdminAddr:              "127.0.0.1:15000",
		StatusAddr:             ":15020",
		DrainDuration:          5 * time.Second,
	}
}

func (o Options) validate() (id, cp spiffeid.ID, err error) {
	if o.PodName == "" || o.PodNamespace == "" || o.ServiceAccount == "" {
		return id, cp, errors.New("--pod-name, --pod-namespace and --service-account are required (the injector sets them from the downward API)")
	}
	td, err := spiffeid.TrustDomainFromString(o.TrustDomain)
	if err != nil {
		return id, cp, fmt.Errorf("--trust-domain %q: %w", o.TrustDomain, err)
	}
	if id, err = spiffeid.FromSegments(td, "ns", o.PodNamespace, "sa", o.ServiceAccount); err != nil {
		return id, cp, fmt.Errorf("workload identity: %w", err)
	}
	cpID := o.ControlPlaneIdentity
	if cpID == "" {
		cpID = "spiffe://" + td.Name() + "/ns/trellis-system/sa/trellis-controlplane"
	}
	if cp, err = spiffeid.FromString(cpID); err != nil {
		return id, cp, fmt.Errorf("--control-plane-identity %q: %w", cpID, err)
	}
	return id, cp, nil
}

// Run runs the sidecar until ctx ends (SIGTERM) or /quitquitquit, then drains and returns.
func Run(ctx context.Context, o Options) error {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	id, cpID, err := o.validate()
	if err != nil {
		return err
	}
	appProbes, err := probes.Parse(o.AppProbes)
	if err != nil {
		return fmt.Errorf("TRELLIS_APP_PROBES: %w", err)
	}
	node := o.PodNamespace + "/" + o.PodName
	log = log.With("node", node)

	runCtx, quit := context.WithCancel(ctx)
	defer quit()

	certs, err := svid.New(svid.Options{
		CAAddr: o.ControlPlaneAddr, CAServerName: o.ControlPlaneServerName,
		TokenPath: o.TokenPath, RootCertPath: o.RootCertPath, ID: id, Logger: log.With("component", "svid"),
	})
	if err != nil {
		return err
	}
	tel, err := telemetry.New()
	if err != nil {
		return err
	}
	var current atomic.Pointer[config.Config]
	px := proxy.New(proxy.Options{
		Observer:            tel,
		Config:              current.Load,
		TLS:                 certs,
		TrustDomain:         id.TrustDomain(),
		OriginalDestination: originalDestination,
		Dial:                dial,
		Logger:              log.With("component", "proxy"),
	})
	xc := xdsclient.New(xdsclient.Options{
		Node: node,
		Dial: func(ctx context.Context) (*grpc.ClientConn, error) {
			creds := credentials.NewTLS(tlsconfig.MTLSClientConfig(certs, certs, tlsconfig.AuthorizeID(cpID)))
			// Keepalive pings (the control plane permits one every 10s) notice a control plane
			// that vanished without closing the stream, so the client reconnects elsewhere.
			return grpc.NewClient(o.ControlPlaneAddr, grpc.WithTransportCredentials(creds),
				grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}))
		},
		OnConfig: func(c *config.Config) {
			current.Store(c)
			log.Info("configuration applied", "version", c.Version)
		},
		Logger: log.With("component", "xds"),
	})

	var draining atomic.Bool
	var drainOnce sync.Once
	drain := func() {
		drainOnce.Do(func() {
			draining.Store(true)
			log.Info("draining: not ready, finishing in-flight work", "for", o.DrainDuration)
			dctx, cancel := context.WithTimeout(context.Background(), o.DrainDuration)
			defer cancel()
			if err := px.Shutdown(dctx); err != nil {
				log.Warn("drain ended with connections still open; closing them", "error", err)
			}
		})
	}
	state := admin.State{
		Ready: func() (bool, string) {
			switch {
			case draining.Load():
				return false, "draining"
			case !certs.Ready():
				return false, "no workload certificate yet"
			case current.Load() == nil:
				return false, "no configuration from the control plane yet"
			}
			return true, ""
		},
		Config:   func() any { return current.Load() },
		Clusters: func() any { return px.ClusterStats() },
		Certs:    func() any { return certs.Status() },
		XDS:      func() any { return xc.Status() },
		Drain:    drain,
		Quit:     quit,
	}

	var wg sync.WaitGroup
	errc := make(chan error, 8)
	goRun := func(name string, fn func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(); err != nil && runCtx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	goRun("certificates", func() error { return certs.Start(runCtx) })
	goRun("xds", func() error {
		if err := certs.WaitReady(runCtx); err != nil {
			return nil // stopping
		}
		return xc.Run(runCtx)
	})

	lc := net.ListenConfig{}
	outL, err := lc.Listen(runCtx, "tcp", o.OutboundAddr)
	if err != nil {
		return fmt.Errorf("listen for outbound traffic on %s: %w", o.OutboundAddr, err)
	}
	inL, err := lc.Listen(runCtx, "tcp", o.InboundAddr)
	if err != nil {
		return fmt.Errorf("listen for inbound traffic on %s: %w", o.InboundAddr, err)
	}
	goRun("outbound", func() error { return px.ServeOutbound(outL) })
	goRun("inbound", func() error { return px.ServeInbound(inL) })
	adminSrv := &http.Server{Addr: o.AdminAddr, Handler: admin.Handler(state, log), ReadHeaderTimeout: 5 * time.Second}
	statusSrv := &http.Server{Addr: o.StatusAddr, Handler: admin.StatusHandler(state, probes.Handler(appProbes, dialer.DialContext), tel.Handler()), ReadHeaderTimeout: 5 * time.Second}
	for name, srv := range map[string]*http.Server{"admin": adminSrv, "status": statusSrv} {
		goRun(name, func() error {
			if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	log.Info("sidecar started", "identity", id.String(), "controlPlane", o.ControlPlaneAddr,
		"outbound", o.OutboundAddr, "inbound", o.InboundAddr, "admin", o.AdminAddr, "status", o.StatusAddr)

	var runErr error
	select {
	case <-runCtx.Done():
	case runErr = <-errc:
		log.Error("stopping", "error", runErr)
	}
	drain()
	quit()
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = adminSrv.Shutdown(sctx)
	_ = statusSrv.Shutdown(sctx)
	wg.Wait()
	log.Info("sidecar stopped")
	return runErr
}

// originalDestination is where a redirected connection was going. A connection that reached
// the listener directly (not through the redirect rules) reports the listener itself: that
// is refused, or the proxy would dial itself in a loop.
func originalDestination(c net.Conn) (netip.AddrPort, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("original destination of a %T: not a TCP connection", c)
	}
	dst, err := redirect.OriginalDestination(tc)
	if err != nil {
		return dst, err
	}
	if local, ok := tc.LocalAddr().(*net.TCPAddr); ok && local.AddrPort().Port() == dst.Port() &&
		local.AddrPort().Addr().Unmap() == dst.Addr().Unmap() {
		return netip.AddrPort{}, fmt.Errorf("connection to %s was not redirected (it was sent to the proxy's own port); refusing it", dst)
	}
	return dst, nil
}

var dialer = &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}

func dial(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	return dialer.DialContext(ctx, "tcp", addr.String())
}
