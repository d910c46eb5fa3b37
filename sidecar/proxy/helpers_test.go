package proxy

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trellis-mesh/trellis/controlplane/identity"
	"github.com/trellis-mesh/trellis/sidecar/config"
)

// The test mesh: an in-process CA, sidecars (Proxy values) with certificates from it, and
// a dialer that maps pretend pod addresses to the inbound listeners of the sidecars that
// "run" in those pods. Each outbound listener of a sidecar stands for one original
// destination (a Service VIP), each inbound listener for one pod address.

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func spiffeFor(sa string) string { return "spiffe://cluster.local/ns/default/sa/" + sa }

// staticSources is an mtls.Sources with a fixed SVID and bundle.
type staticSources struct {
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

func (s *staticSources) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }

func (s *staticSources) GetX509BundleForTrustDomain(d spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if d != s.bundle.TrustDomain() {
		return nil, fmt.Errorf("no bundle for %s", d)
	}
	return s.bundle, nil
}

type mesh struct {
	t  *testing.T
	ca *identity.Authority
	// pods maps a pretend pod address to the real address of the inbound listener that
	// receives its traffic.
	pods  sync.Map // netip.AddrPort → string
	dials sync.Map // netip.AddrPort → *atomic.Int64
}

var (
	caOnce sync.Once
	caVal  *identity.Authority
	caErr  error
)

func newMesh(t *testing.T) *mesh {
	t.Helper()
	caOnce.Do(func() { caVal, caErr = identity.NewSelfSigned(td) })
	if caErr != nil {
		t.Fatal(caErr)
	}
	return &mesh{t: t, ca: caVal}
}

func (m *mesh) sources(sa string) *staticSources {
	m.t.Helper()
	id := spiffeid.RequireFromString(spiffeFor(sa))
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		m.t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		m.t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		m.t.Fatal(err)
	}
	chain, err := m.ca.Sign(csr, id, time.Hour)
	if err != nil {
		m.t.Fatal(err)
	}
	return &staticSources{svid: &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, bundle: m.ca.Bundle()}
}

// dial is every sidecar's upstream dialer: pod addresses go to their sidecar's inbound
// listener, anything else is dialled as it is.
func (m *mesh) dial(ctx context.Context, a netip.AddrPort) (net.Conn, error) {
	target := a.String()
	if real, ok := m.pods.Load(a); ok {
		target = real.(string)
		n, _ := m.dials.LoadOrStore(a, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", target)
}

func (m *mesh) dialCount(a netip.AddrPort) int64 {
	n, ok := m.dials.Load(a)
	if !ok {
		return 0
	}
	return n.(*atomic.Int64).Load()
}

// node is one sidecar.
type node struct {
	m     *mesh
	id    string
	src   *staticSources
	proxy *Proxy
	cfg   atomic.Pointer[config.Config]
	dst   sync.Map // local listener address → original destination
	obs   *recorder
}

func (m *mesh) node(sa string) *node {
	m.t.Helper()
	n := &node{m: m, id: spiffeFor(sa), src: m.sources(sa), obs: &recorder{}}
	n.proxy = New(Options{
		Config:      n.cfg.Load,
		TLS:         n.src,
		TrustDomain: td,
		OriginalDestination: func(c net.Conn) (netip.AddrPort, error) {
			if d, ok := n.dst.Load(c.LocalAddr().String()); ok {
				return d.(netip.AddrPort), nil
			}
			return netip.AddrPort{}, errors.New("unknown listener")
		},
		Dial:     m.dial,
		Logger:   testLogger(m.t),
		Observer: n.obs,
	})
	m.t.Cleanup(n.shutdown)
	return n
}

func (n *node) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n.proxy.Shutdown(ctx)
}

// outbound returns the address a client dials to reach vip through this sidecar.
func (n *node) outbound(vip netip.AddrPort) string {
	n.m.t.Helper()
	l := listen(n.m.t)
	n.dst.Store(l.Addr().String(), vip)
	go n.proxy.ServeOutbound(l)
	return l.Addr().String()
}

// pod makes this sidecar receive the inbound traffic of pod address ep: other sidecars
// dialling ep reach it.
func (n *node) pod(ep netip.AddrPort) string {
	n.m.t.Helper()
	addr := n.inboundAt(ep)
	n.m.pods.Store(ep, addr)
	return addr
}

// inboundAt returns the address of an inbound listener whose connections had original
// destination dst.
func (n *node) inboundAt(dst netip.AddrPort) string {
	n.m.t.Helper()
	l := listen(n.m.t)
	n.dst.Store(l.Addr().String(), dst)
	go n.proxy.ServeInbound(l)
	return l.Addr().String()
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// recorder is an Observer that keeps every event.
type recorder struct {
	mu       sync.Mutex
	requests []RequestInfo
	conns    []ConnInfo
	sniffs   []SniffInfo
}

func (r *recorder) RequestDone(i RequestInfo) {
	r.mu.Lock()
	r.requests = append(r.requests, i)
	r.mu.Unlock()
}

func (r *recorder) ConnDone(i ConnInfo) {
	r.mu.Lock()
	r.conns = append(r.conns, i)
	r.mu.Unlock()
}

func (r *recorder) Sniffed(i SniffInfo) {
	r.mu.Lock()
	r.sniffs = append(r.sniffs, i)
	r.mu.Unlock()
}

func (r *recorder) sniffed() []SniffInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]SniffInfo(nil), r.sniffs...)
}

// testLogger fails the test when the proxy logs a panic.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(&panicHandler{t: t})
}

type panicHandler struct {
	t *testing.T
}

func (h *panicHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *panicHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "panic") {
		h.t.Errorf("the proxy logged a panic: %s", r.Message)
		r.Attrs(func(a slog.Attr) bool { h.t.Errorf("  %s", a); return true })
	}
	return nil
}
func (h *panicHandler) WithAttrs(a []slog.Attr) slog.Handler { return h }
func (h *panicHandler) WithGroup(string) slog.Handler        { return h }

// Configuration builders.

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// meshedCluster is a cluster of sidecar endpoints reached over mTLS (an HTTP cluster offers
// ALPN h2 and http/1.1).
func meshedCluster(name string, http bool, peers map[netip.AddrPort]string) *config.Cluster {
	c := &config.Cluster{Name: name, ConnectTimeout: 2 * time.Second, MTLS: config.ClientTLS{SNI: name}}
	if http {
		c.MTLS.ALPN = []string{"h2", "http/1.1"}
	}
	seen := map[string]bool{}
	for a, id := range peers {
		c.Endpoints = append(c.Endpoints, config.Endpoint{Address: a, MTLS: true, Identity: id})
		if !seen[id] {
			seen[id] = true
			c.MTLS.AllowedIdentities = append(c.MTLS.AllowedIdentities, id)
		}
	}
	return c
}

func httpListener(name string, p config.Protocol, backends ...config.WeightedCluster) *config.OutboundListener {
	return &config.OutboundListener{
		Name: name, Protocol: p, SniffTimeout: 100 * time.Millisecond,
		HTTP: &config.Route{Name: name, Backends: backends},
		TCP:  &config.TCPRoute{Backends: backends},
	}
}

func tcpListener(name string, p config.Protocol, backends ...config.WeightedCluster) *config.OutboundListener {
	return &config.OutboundListener{
		Name: name, Protocol: p, SniffTimeout: 100 * time.Millisecond,
		TCP: &config.TCPRoute{Backends: backends},
	}
}

func wc(name string, w uint32) config.WeightedCluster {
	return config.WeightedCluster{Cluster: name, Weight: w}
}

// inboundPort serves port on target; strict refuses plaintext.
func inboundPort(port uint16, p config.Protocol, target string, strict bool, up config.UpstreamProtocol) *config.InboundPort {
	return &config.InboundPort{
		Port: uint32(port), Protocol: p, AcceptMTLS: true, AcceptPlaintext: !strict,
		Target: ap(target), Upstream: up, SniffTimeout: 100 * time.Millisecond,
	}
}

func inbound(ports ...*config.InboundPort) *config.Inbound {
	in := &config.Inbound{Ports: map[uint32]*config.InboundPort{}, Passthrough: config.InboundPort{Protocol: config.ProtocolTCP, AcceptMTLS: true, AcceptPlaintext: true}}
	for _, p := range ports {
		in.Ports[p.Port] = p
	}
	return in
}

// clientTo returns an HTTP/1.1 client whose every connection goes to addr.
func clientTo(addr string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		},
		DisableCompression: true,
	}, Timeout: 20 * time.Second}
}

// h2cClientTo returns an HTTP/2 prior-knowledge client to addr.
func h2cClientTo(addr string) *http.Client {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		},
		Protocols: &protos,
	}, Timeout: 20 * time.Second}
}

// app starts an HTTP application on loopback (HTTP/1.1 and h2c) and returns its address.
func app(t *testing.T, h http.Handler) string {
	t.Helper()
	l := listen(t)
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &protos, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// tcpApp starts a TCP server running serve for each connection.
func tcpApp(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	l := listen(t)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return l.Addr().String()
}

func get(t *testing.T, c *http.Client, target string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(target)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", target, err)
	}
	return resp, string(b)
}

func readLine(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	s, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read line: %v (got %q)", err, s)
	}
	return s
}
