package proxy

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

// httpFront is the HTTP server of one direction. Connections the proxy decided to serve as
// HTTP (declared, sniffed, or TLS with an HTTP port) are handed to it one by one; it speaks
// HTTP/1.1, h2c (prior knowledge) and, on *tls.Conn with ALPN h2, HTTP/2.
type httpFront struct {
	name string
	srv  *http.Server
	ln   *chanListener
	meta sync.Map // net.Conn handed over → *connMeta, taken by ConnContext
	once sync.Once
}

// connMeta is what the proxy knew about a connection when it handed it to the server.
type connMeta struct {
	dst      netip.AddrPort
	listener *config.OutboundListener // outbound: the listener at accept time
	port     *config.InboundPort      // inbound: the port at accept time
	identity string                   // inbound: the verified peer SPIFFE ID, "" for plaintext
}

type metaKey struct{}

func metaFrom(ctx context.Context) *connMeta {
	m, _ := ctx.Value(metaKey{}).(*connMeta)
	if m == nil {
		return &connMeta{}
	}
	return m
}

func (p *Proxy) newHTTPFront(name string, h http.Handler) *httpFront {
	f := &httpFront{name: name, ln: newChanListener()}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetHTTP2(true)
	protos.SetUnencryptedHTTP2(true)
	f.srv = &http.Server{
		Handler:           p.countActive(h),
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       DefaultIdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		Protocols:         &protos,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: 1000, // sidecars multiplex many requests on one connection
		},
		ErrorLog: slog.NewLogLogger(p.log.With("server", name).Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if m, ok := f.meta.LoadAndDelete(c); ok {
				return context.WithValue(ctx, metaKey{}, m)
			}
			return ctx
		},
	}
	return f
}

// countActive counts running handlers (an upgraded connection runs in its handler), so that
// Shutdown waits for them too: http.Server does not track hijacked connections.
func (p *Proxy) countActive(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.active.Add(1)
		defer p.active.Add(-1)
		h.ServeHTTP(w, r)
	})
}

// serve hands c to the HTTP server. c is a *tls.Conn whose handshake is done, or a
// plaintext connection (possibly with sniffed bytes in front).
func (f *httpFront) serve(c net.Conn, m *connMeta) {
	f.once.Do(func() {
		go f.srv.Serve(f.ln) //nolint:errcheck // returns ErrServerClosed at Shutdown
	})
	f.meta.Store(c, m)
	if !f.ln.deliver(c) {
		f.meta.Delete(c)
		c.Close()
	}
}

func (f *httpFront) shutdown(ctx context.Context) {
	f.ln.Close()
	f.srv.Shutdown(ctx) //nolint:errcheck // the caller closes what is left
}

func (f *httpFront) close() { f.srv.Close() }

// chanListener is a net.Listener fed by the proxy.
type chanListener struct {
	ch        chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) deliver(c net.Conn) bool {
	select {
	case <-l.done:
		return false
	default:
	}
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "trellis-proxy" }
