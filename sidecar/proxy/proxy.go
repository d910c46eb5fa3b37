package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trellis-mesh/trellis/sidecar/config"
	"github.com/trellis-mesh/trellis/sidecar/mtls"
)

// Options configure a Proxy.
type Options struct {
	// Config returns the current configuration (an atomic load by the caller); nil until
	// the first one arrives. Before it, outbound traffic is passed through and inbound
	// connections are refused.
	Config func() *config.Config
	// TLS supplies the sidecar's certificate and the trust bundle; TrustDomain is the mesh's.
	TLS         mtls.Sources
	TrustDomain spiffeid.TrustDomain
	// OriginalDestination is where a captured connection was going (SO_ORIGINAL_DST).
	OriginalDestination func(c net.Conn) (netip.AddrPort, error)
	// Dial opens upstream TCP connections (to endpoints, to the app, and passthrough);
	// nil means a plain net.Dialer.
	Dial func(ctx context.Context, addr netip.AddrPort) (net.Conn, error)
	// Logger; nil discards.
	Logger *slog.Logger
	// Observer receives telemetry events; nil means none.
	Observer Observer
}

// Timeouts and limits of the data path that the configuration does not set.
const (
	// DefaultConnectTimeout bounds a dial and its TLS handshake when the cluster sets none.
	DefaultConnectTimeout = 5 * time.Second
	// DefaultSniffTimeout bounds protocol detection on an outbound Detect listener.
	DefaultSniffTimeout = 100 * time.Millisecond
	// InboundSniffTimeout bounds the wait for a TLS ClientHello (or any first byte) inbound;
	// a client silent for that long is plaintext (a server-first protocol).
	InboundSniffTimeout = time.Second
	// DefaultIdleTimeout closes idle upstream connections and idle client connections.
	DefaultIdleTimeout = time.Hour
	// ReadHeaderTimeout bounds reading a request's headers.
	ReadHeaderTimeout = 30 * time.Second
	// MaxHeaderBytes bounds a request's headers (HTTP/1 request line and headers, HTTP/2
	// header list).
	MaxHeaderBytes = 64 << 10
	// MaxRetryBuffer is how much of a request body is kept to replay it on a retry; a
	// longer body is streamed and the request is not retried.
	MaxRetryBuffer = 64 << 10
)

// Proxy is the data path. It is safe for concurrent use.
type Proxy struct {
	o   Options
	log *slog.Logger
	obs Observer

	snapMu sync.Mutex
	snap   atomic.Pointer[snapshot]

	outbound *httpFront
	inbound  *httpFront
	inPool   *inboundPool

	mu        sync.Mutex
	closing   bool
	listeners map[net.Listener]struct{}
	conns     map[*trackedConn]struct{}
	active    atomic.Int64 // connections being sniffed or spliced, handlers running
	done      chan struct{}
}

// New returns a Proxy; it serves nothing until ServeOutbound or ServeInbound.
func New(o Options) *Proxy {
	if o.Config == nil {
		o.Config = func() *config.Config { return nil }
	}
	if o.OriginalDestination == nil {
		o.OriginalDestination = func(net.Conn) (netip.AddrPort, error) {
			return netip.AddrPort{}, errors.New("no original destination lookup configured")
		}
	}
	if o.Dial == nil {
		var d net.Dialer
		o.Dial = func(ctx context.Context, a netip.AddrPort) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", a.String())
		}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Observer == nil {
		o.Observer = NopObserver{}
	}
	p := &Proxy{
		o:         o,
		log:       o.Logger,
		obs:       o.Observer,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*trackedConn]struct{}),
		done:      make(chan struct{}),
	}
	p.snap.Store(&snapshot{clusters: map[string]*clusterState{}, routes: map[string]*routeState{}})
	p.inPool = newInboundPool(p)
	p.outbound = p.newHTTPFront("outbound", &outboundHandler{p: p})
	p.inbound = p.newHTTPFront("inbound", &inboundHandler{p: p})
	return p
}

// ServeOutbound accepts captured outbound connections (15001) on l until Shutdown (then it
// returns nil) or until l fails.
func (p *Proxy) ServeOutbound(l net.Listener) error {
	return p.serve(l, p.handleOutbound)
}

// ServeInbound accepts captured inbound connections (15006) on l until Shutdown (then it
// returns nil) or until l fails.
func (p *Proxy) ServeInbound(l net.Listener) error {
	return p.serve(l, p.handleInbound)
}

func (p *Proxy) serve(l net.Listener, handle func(*trackedConn)) error {
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		l.Close()
		return nil
	}
	p.listeners[l] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.listeners, l)
		p.mu.Unlock()
	}()
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if p.isClosing() {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("accept on %s: %w", l.Addr(), err)
			}
			// Out of file descriptors and the like: wait and go on, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			p.log.Warn("accept failed; retrying", "listener", l.Addr().String(), "error", err, "in", delay)
			select {
			case <-time.After(delay):
			case <-p.done:
				return nil
			}
			continue
		}
		delay = 0
		tc := p.track(c)
		if tc == nil {
			c.Close()
			continue
		}
		p.active.Add(1)
		go func() {
			defer p.active.Add(-1)
			defer func() {
				if r := recover(); r != nil {
					p.log.Error("connection handler panicked; connection closed", "panic", r, "remote", c.RemoteAddr().String())
					tc.Close()
				}
			}()
			handle(tc)
		}()
	}
}

func (p *Proxy) isClosing() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closing
}

// Shutdown stops accepting connections, lets in-flight requests and connections finish
// until ctx ends, then closes the rest. It returns ctx's error when it had to close some.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	if !p.closing {
		p.closing = true
		close(p.done)
	}
	for l := range p.listeners {
		l.Close()
	}
	p.mu.Unlock()

	var wg sync.WaitGroup
	for _, f := range []*httpFront{p.outbound, p.inbound} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.shutdown(ctx)
		}()
	}
	serversDone := make(chan struct{})
	go func() {
		wg.Wait()
		close(serversDone)
	}()

	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var err error
wait:
	for {
		select {
		case <-ctx.Done():
			err = ctx.Err()
			break wait
		case <-tick.C:
			select {
			case <-serversDone:
				if p.active.Load() == 0 {
					break wait
				}
			default:
			}
		}
	}
	if err != nil {
		p.outbound.close()
		p.inbound.close()
		p.mu.Lock()
		n := len(p.conns)
		conns := make([]*trackedConn, 0, n)
		for c := range p.conns {
			conns = append(conns, c)
		}
		p.mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
		if n > 0 {
			err = fmt.Errorf("closed %d connections still open at the end of the drain: %w", n, err)
		} else {
			err = nil
		}
	}
	for _, cs := range p.snap.Load().clusters {
		cs.closeIdle()
	}
	p.inPool.closeIdle()
	return err
}

// trackedConn is a downstream connection, known to the Proxy until closed so that Shutdown
// can close what is left.
type trackedConn struct {
	net.Conn
	p    *Proxy
	once sync.Once
}

func (p *Proxy) track(c net.Conn) *trackedConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return nil
	}
	tc := &trackedConn{Conn: c, p: p}
	p.conns[tc] = struct{}{}
	return tc
}

func (c *trackedConn) Close() error {
	err := net.ErrClosed
	c.once.Do(func() {
		c.p.mu.Lock()
		delete(c.p.conns, c)
		c.p.mu.Unlock()
		err = c.Conn.Close()
	})
	return err
}

// CloseWrite half-closes when the connection supports it.
func (c *trackedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// NetConn is the wrapped connection.
func (c *trackedConn) NetConn() net.Conn { return c.Conn }
