package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/sidecar/config"
	"github.com/trellis-mesh/trellis/sidecar/mtls"
)

// poolKind is one of a cluster's pools, created when first needed: plaintext HTTP/1.1,
// plaintext h2c, and the same two over mTLS. Each pools connections per endpoint (the
// request's URL host is the endpoint address). They all speak "http" and dial themselves:
// the TLS handshake happens in the dialer (see the package documentation).
type poolKind int

const (
	plainH1 poolKind = iota
	plainH2
	tlsH1
	tlsH2
	numPoolKinds
)

type upstreamPool struct {
	cs   *clusterState
	idle time.Duration
	mu   sync.Mutex
	t    [numPoolKinds]roundTripper
}

// roundTripper is an http.Transport (HTTP/1.1) or an h2Pool (HTTP/2).
type roundTripper interface {
	http.RoundTripper
	CloseIdleConnections()
}

func newUpstreamPool(cs *clusterState, idle time.Duration) *upstreamPool {
	return &upstreamPool{cs: cs, idle: idle}
}

func (pl *upstreamPool) transport(k poolKind) roundTripper {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if t := pl.t[k]; t != nil {
		return t
	}
	h2 := k == plainH2 || k == tlsH2
	t := newTransport(h2, pl.idle, pl.cs.brk.MaxRequestsPerConnection, func(ctx context.Context, addr string) (net.Conn, error) {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, fmt.Errorf("upstream address %q: %w", addr, err)
		}
		switch k {
		case tlsH1:
			return pl.cs.dial(ctx, ap, true, pl.cs.h1ALPN(), "")
		case tlsH2:
			alpn := pl.cs.h2ALPN()
			want := ""
			if len(alpn) > 0 {
				want = "h2"
			}
			return pl.cs.dial(ctx, ap, true, alpn, want)
		default:
			return pl.cs.dial(ctx, ap, false, nil, "")
		}
	})
	pl.t[k] = t
	return t
}

// forget closes the idle connections to endpoints that left the cluster (HTTP/1.1 pools
// cannot tell endpoints apart when closing: all their idle connections close).
func (pl *upstreamPool) forget(addrs []string) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	for _, t := range pl.t {
		switch t := t.(type) {
		case *h2Pool:
			t.closeIdleTo(addrs)
		case roundTripper:
			t.CloseIdleConnections()
		}
	}
}

func (pl *upstreamPool) closeIdle() {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	for _, t := range pl.t {
		if t != nil {
			t.CloseIdleConnections()
		}
	}
}

// newTransport returns a pooling transport that dials with dial: HTTP/1.1 (net/http's
// Transport) or HTTP/2 with prior knowledge (h2Pool).
func newTransport(h2 bool, idle time.Duration, maxUses func() uint32, dial func(ctx context.Context, addr string) (net.Conn, error)) roundTripper {
	if h2 {
		return newH2Pool(dial, idle, maxUses)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	return &http.Transport{
		DialContext:            func(ctx context.Context, _, addr string) (net.Conn, error) { return dial(ctx, addr) },
		Protocols:              &protos,
		DisableCompression:     true, // bytes pass as they are
		MaxIdleConnsPerHost:    1024,
		IdleConnTimeout:        idle,
		MaxResponseHeaderBytes: MaxHeaderBytes,
	}
}

// h2ALPN is what to offer for HTTP/2 over mTLS: the cluster's ALPN when it has h2 (the
// peer's HTTP port then agrees on h2), else nothing (prior knowledge inside TLS).
func (cs *clusterState) h2ALPN() []string {
	if alpn := cs.cfg.Load().MTLS.ALPN; slices.Contains(alpn, "h2") {
		return alpn
	}
	return nil
}

// h1ALPN is what to offer for HTTP/1.1 over mTLS.
func (cs *clusterState) h1ALPN() []string {
	if slices.Contains(cs.cfg.Load().MTLS.ALPN, "http/1.1") {
		return []string{"http/1.1"}
	}
	return nil
}

// poolFor returns the transport for a request to endpoint ep.
func (cs *clusterState) poolFor(ep config.Endpoint, r *http.Request) roundTripper {
	cl := cs.cfg.Load()
	upgrade := isUpgrade(r.Header)
	pl := cs.pool.Load()
	if ep.MTLS {
		if !upgrade && wantMeshH2(cl, r) {
			return pl.transport(tlsH2)
		}
		return pl.transport(tlsH1)
	}
	if !upgrade && wantH2(cl.Upstream, r) {
		return pl.transport(plainH2)
	}
	return pl.transport(plainH1)
}

// wantMeshH2 reports whether a request to a peer sidecar travels over HTTP/2. HTTP/2
// requests (gRPC among them) and clusters whose upstream is declared HTTP/2 do; an HTTP/1.x
// request travels as HTTP/1.1 on a keep-alive connection when the cluster offers ALPN
// http/1.1: Go's HTTP/2 costs more per request than HTTP/1.1 on both sidecars (its frame
// writes, WINDOW_UPDATEs and goroutine handoffs; docs/performance.md), and the peer speaks
// HTTP/1.1 to the app of a declared HTTP port anyway. Without ALPN http/1.1 (a cluster that
// offers h2 only), HTTP/2 it is.
func wantMeshH2(cl *config.Cluster, r *http.Request) bool {
	if wantH2(cl.Upstream, r) {
		return true
	}
	return slices.Contains(cl.MTLS.ALPN, "h2") && !slices.Contains(cl.MTLS.ALPN, "http/1.1")
}

func wantH2(u config.UpstreamProtocol, r *http.Request) bool {
	switch u {
	case config.UpstreamHTTP2:
		return true
	case config.UpstreamHTTP1:
		return false
	}
	return r.ProtoMajor == 2
}

// connectError is a failure to open an upstream connection (TCP or TLS): a local-origin
// failure for outlier detection, "connect-failure" for retries.
type connectError struct {
	addr netip.AddrPort
	err  error
}

func (e *connectError) Error() string { return fmt.Sprintf("connect to %s: %v", e.addr, e.err) }
func (e *connectError) Unwrap() error { return e.err }

// overflowError is a circuit breaker refusing.
type overflowError struct {
	cluster, what string
}

func (e *overflowError) Error() string {
	return fmt.Sprintf("overflow: %s in %s reached its limit", e.what, e.cluster)
}

// noEndpointError: the cluster has no endpoint to pick.
type noEndpointError struct{ cluster string }

func (e *noEndpointError) Error() string { return "no healthy endpoint in " + e.cluster }

// dial opens a connection to an endpoint of the cluster: counted against max_connections
// (released when it closes), bounded by the connect timeout, with mTLS when useTLS. When
// wantProto is set the handshake must negotiate it.
func (cs *clusterState) dial(ctx context.Context, ap netip.AddrPort, useTLS bool, alpn []string, wantProto string) (net.Conn, error) {
	release, ok := cs.brk.Connection()
	if !ok {
		return nil, &overflowError{cluster: cs.name, what: "connections"}
	}
	cl := cs.cfg.Load()
	timeout := cl.ConnectTimeout
	if timeout <= 0 {
		timeout = DefaultConnectTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := cs.p.o.Dial(ctx, ap)
	if err != nil {
		release()
		return nil, &connectError{addr: ap, err: err}
	}

	if useTLS {
		tc := tls.Client(c, mtls.ClientConfig(cs.p.o.TLS, cs.p.o.TrustDomain, cl.MTLS.AllowedIdentities, alpn, cl.MTLS.SNI))
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			release()
			return nil, &connectError{addr: ap, err: fmt.Errorf("mTLS handshake: %w", err)}
		}
		if got := tc.ConnectionState().NegotiatedProtocol; wantProto != "" && got != wantProto {
			tc.Close()
			release()
			return nil, &connectError{addr: ap, err: fmt.Errorf("the peer negotiated ALPN %q, not %q", got, wantProto)}
		}
		id, err := mtls.PeerID(tc.ConnectionState())
		if err != nil { // cannot happen after a verified handshake; never guess
			tc.Close()
			release()
			return nil, &connectError{addr: ap, err: err}
		}
		return &releaseConn{Conn: tc, release: release, peerID: id}, nil
	}
	return &releaseConn{Conn: c, release: release}, nil
}

// releaseConn gives its breaker slot back when closed, and retires the connection after
// max_requests_per_connection requests.
type releaseConn struct {
	net.Conn
	release  func()
	peerID   string // the SPIFFE ID the upstream proved; empty in plaintext
	once     sync.Once
	uses     atomic.Uint32
	inflight atomic.Int32
}

// use counts a request on the connection (at GotConn); the returned func ends it. Once the
// connection has carried max requests (0 = no limit) and has none in flight, it is closed:
// the pool then dials a new one.
func (c *releaseConn) use(max uint32) func() {
	c.uses.Add(1)
	c.inflight.Add(1)
	return func() {
		if c.inflight.Add(-1) == 0 && max > 0 && c.uses.Load() >= max {
			c.Close()
		}
	}
}

func (c *releaseConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

func (c *releaseConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// inboundPool holds the transports to the app (loopback): HTTP/1.1 and h2c.
type inboundPool struct {
	h1, h2 roundTripper
}

func newInboundPool(p *Proxy) *inboundPool {
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, fmt.Errorf("app address %q: %w", addr, err)
		}
		ctx, cancel := context.WithTimeout(ctx, DefaultConnectTimeout)
		defer cancel()
		c, err := p.o.Dial(ctx, ap)
		if err != nil {
			return nil, &connectError{addr: ap, err: err}
		}
		return c, nil
	}
	return &inboundPool{h1: newTransport(false, DefaultIdleTimeout, nil, dial), h2: newTransport(true, DefaultIdleTimeout, nil, dial)}
}

func (ip *inboundPool) closeIdle() {
	ip.h1.CloseIdleConnections()
	ip.h2.CloseIdleConnections()
}

func (ip *inboundPool) transport(u config.UpstreamProtocol, r *http.Request) roundTripper {
	if !isUpgrade(r.Header) && wantH2(u, r) {
		return ip.h2
	}
	return ip.h1
}

// isUpgrade reports whether the request asks for a protocol upgrade (WebSocket).
func isUpgrade(h http.Header) bool {
	if h.Get("Upgrade") == "" {
		return false
	}
	for _, v := range h.Values("Connection") {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), "upgrade") {
				return true
			}
		}
	}
	return false
}
