package proxy

import (
	"context"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"time"
)

// h2Pool multiplexes requests on HTTP/2 connections (prior knowledge; the dialer may wrap
// them in TLS), pooled per endpoint address (the request's URL host).
//
// A request takes a concurrency slot on a live connection of its endpoint; when none has
// one, the pool dials, once per endpoint however many requests are waiting (net/http's own
// Transport would dial once per waiting request and close the extra connections), and the
// waiting requests share the new connection. A connection is skipped once it carried
// maxUses requests (max_requests_per_connection; the dialer's connection closes itself
// when the last of them ends). Dead connections are dropped as they are found; idle ones
// close after the Transport's IdleConnTimeout.
type h2Pool struct {
	t       *http.Transport // used only to make connections (NewClientConn)
	maxUses func() uint32
	mu      sync.Mutex
	eps     map[string]*h2Endpoint
}

type h2Endpoint struct {
	conns   []*h2Conn
	dialing *h2Dial
}

type h2Conn struct {
	cc   *http.ClientConn
	raw  net.Conn // what the dialer returned, for GotConn
	uses uint32
}

type h2Dial struct {
	done chan struct{}
	err  error
}

type rawConnKey struct{}

func newH2Pool(dial func(ctx context.Context, addr string) (net.Conn, error), idle time.Duration, maxUses func() uint32) *h2Pool {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	t := &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			c, err := dial(ctx, addr)
			if slot, ok := ctx.Value(rawConnKey{}).(*net.Conn); ok && err == nil {
				*slot = c
			}
			return c, err
		},
		Protocols:              &protos,
		DisableCompression:     true, // bytes pass as they are
		IdleConnTimeout:        idle,
		MaxResponseHeaderBytes: MaxHeaderBytes,
		HTTP2: &http.HTTP2Config{
			SendPingTimeout: 30 * time.Second, // find dead peers on quiet connections
			PingTimeout:     15 * time.Second,
		},
	}
	if maxUses == nil {
		maxUses = func() uint32 { return 0 }
	}
	return &h2Pool{t: t, maxUses: maxUses, eps: make(map[string]*h2Endpoint)}
}

// RoundTrip sends req on a pooled connection to req.URL.Host.
func (p *h2Pool) RoundTrip(req *http.Request) (*http.Response, error) {
	c, reused, err := p.reserve(req.Context(), req.URL.Host)
	if err != nil {
		return nil, err
	}
	if trace := httptrace.ContextClientTrace(req.Context()); trace != nil && trace.GotConn != nil {
		trace.GotConn(httptrace.GotConnInfo{Conn: c.raw, Reused: reused})
	}
	return c.cc.RoundTrip(req)
}

// reserve returns a connection to addr with a concurrency slot reserved for one request.
func (p *h2Pool) reserve(ctx context.Context, addr string) (*h2Conn, bool, error) {
	for {
		p.mu.Lock()
		ep := p.eps[addr]
		if ep == nil {
			ep = &h2Endpoint{}
			p.eps[addr] = ep
		}
		max := p.maxUses()
		var got *h2Conn
		var gotReused bool
		live := ep.conns[:0]
		for _, c := range ep.conns {
			if c.cc.Err() != nil {
				continue
			}
			live = append(live, c)
			if got == nil && (max == 0 || c.uses < max) && c.cc.Reserve() == nil {
				c.uses++
				got, gotReused = c, c.uses > 1
			}
		}
		clear(ep.conns[len(live):])
		ep.conns = live
		if got != nil {
			p.mu.Unlock()
			return got, gotReused, nil
		}
		d := ep.dialing
		if d == nil {
			d = &h2Dial{done: make(chan struct{})}
			ep.dialing = d
			go p.dial(addr, ep, d)
		}
		p.mu.Unlock()
		select {
		case <-d.done:
			if d.err != nil {
				return nil, false, d.err
			}
		case <-ctx.Done():
			return nil, false, context.Cause(ctx)
		}
	}
}

// dial makes a connection for every request waiting on d. It does not depend on any one
// request: the dialer's connect timeout bounds it.
func (p *h2Pool) dial(addr string, ep *h2Endpoint, d *h2Dial) {
	var raw net.Conn
	cc, err := p.t.NewClientConn(context.WithValue(context.Background(), rawConnKey{}, &raw), "http", addr)
	p.mu.Lock()
	ep.dialing = nil
	if err == nil {
		ep.conns = append(ep.conns, &h2Conn{cc: cc, raw: raw})
	}
	d.err = err
	p.mu.Unlock()
	close(d.done)
}

// CloseIdleConnections closes the connections without requests and forgets endpoints
// without connections.
func (p *h2Pool) CloseIdleConnections() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for addr := range p.eps {
		p.closeIdleLocked(addr)
	}
}

// closeIdleTo closes the idle connections to the given endpoints only.
func (p *h2Pool) closeIdleTo(addrs []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, addr := range addrs {
		p.closeIdleLocked(addr)
	}
}

func (p *h2Pool) closeIdleLocked(addr string) {
	ep := p.eps[addr]
	if ep == nil {
		return
	}
	live := ep.conns[:0]
	for _, c := range ep.conns {
		if c.cc.Err() != nil || c.cc.InFlight() == 0 {
			c.cc.Close()
			continue
		}
		live = append(live, c)
	}
	clear(ep.conns[len(live):])
	ep.conns = live
	if len(ep.conns) == 0 && ep.dialing == nil {
		delete(p.eps, addr)
	}
}
