package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/trellis-mesh/trellis/sidecar/config"
	"github.com/trellis-mesh/trellis/sidecar/mtls"
	"github.com/trellis-mesh/trellis/sidecar/proxy/sniff"
)

// HandshakeTimeout bounds an inbound TLS handshake.
const HandshakeTimeout = 10 * time.Second

// rbacDenied is the x-trellis-error of a call the authorization policy refused.
const rbacDenied = "RBAC: access denied"

var errRBACDenied = errors.New(rbacDenied)

// handleInbound takes one connection captured on 15006.
func (p *Proxy) handleInbound(c *trackedConn) {
	dst, err := p.o.OriginalDestination(c.Conn)
	if err != nil {
		p.log.Warn("inbound connection without an original destination; closed", "remote", c.RemoteAddr().String(), "error", err)
		c.Close()
		return
	}
	s := p.current()
	if s.cfg == nil || s.cfg.Inbound == nil {
		p.log.Debug("inbound connection before the control plane sent the inbound configuration; closed", "destination", dst.String())
		c.Close()
		return
	}
	port := s.cfg.Inbound.Ports[uint32(dst.Port())]
	name := "inbound|" + strconv.Itoa(int(dst.Port()))
	if port == nil {
		port, name = &s.cfg.Inbound.Passthrough, config.InboundPassthrough
	}

	sc := sniff.NewConn(c)
	start := time.Now()
	res, err := sc.Sniff(InboundSniffTimeout, sniff.Classify)
	if err != nil {
		p.log.Debug("inbound connection failed while sniffing", "listener", name, "error", err)
		c.Close()
		return
	}
	p.obs.Sniffed(SniffInfo{Direction: Inbound, Listener: name, Protocol: res.Protocol, TimedOut: res.TimedOut, Duration: time.Since(start)})
	conn := &sniffedConn{Conn: sc, tc: c}
	httpPort := port.Protocol == config.ProtocolHTTP || port.Protocol == config.ProtocolHTTP2

	if res.Protocol == sniff.TLS {
		if !port.AcceptMTLS {
			p.log.Debug("inbound mTLS refused on this port", "listener", name)
			c.Close()
			return
		}
		var alpn []string
		if httpPort {
			alpn = []string{"h2", "http/1.1"}
		}
		tc := tls.Server(conn, mtls.ServerConfig(p.o.TLS, p.o.TrustDomain, alpn))
		ctx, cancel := context.WithTimeout(context.Background(), HandshakeTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			p.log.Debug("inbound mTLS handshake failed", "listener", name, "remote", c.RemoteAddr().String(), "error", err)
			c.Close()
			return
		}
		id, err := mtls.PeerID(tc.ConnectionState())
		if err != nil {
			p.log.Debug("inbound peer without a SPIFFE ID", "listener", name, "error", err)
			tc.Close()
			return
		}
		if httpPort {
			p.inbound.serve(tc, &connMeta{dst: dst, port: port, identity: id})
			return
		}
		p.inboundTCP(tc, dst, port, id, name)
		return
	}

	if !port.AcceptPlaintext { // STRICT: plaintext never reaches the app
		p.log.Debug("inbound plaintext refused (STRICT mTLS)", "listener", name, "remote", c.RemoteAddr().String())
		c.Close()
		return
	}
	if httpPort || port.Protocol == config.ProtocolDetect && (res.Protocol == sniff.HTTP1 || res.Protocol == sniff.HTTP2) {
		p.inbound.serve(conn, &connMeta{dst: dst, port: port})
		return
	}
	p.inboundTCP(conn, dst, port, "", name)
}

// inboundTCP checks the policy once and splices the connection to the app.
func (p *Proxy) inboundTCP(c net.Conn, dst netip.AddrPort, port *config.InboundPort, identity, name string) {
	start := time.Now()
	target := port.Target
	if !target.IsValid() {
		target = dst
	}
	info := ConnInfo{Direction: Inbound, Listener: name, Cluster: name, SourceIdentity: identity, Endpoint: target}
	if ok, _ := port.RBAC.Allow(identity, uint32(dst.Port())); !ok {
		c.Close()
		info.Err, info.Duration = errRBACDenied, time.Since(start)
		p.log.Debug("inbound connection denied by policy", "listener", name, "peer", identity)
		p.obs.ConnDone(info)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), DefaultConnectTimeout)
	up, err := p.o.Dial(ctx, target)
	cancel()
	if err != nil {
		c.Close()
		info.Err, info.Duration = &connectError{addr: target, err: err}, time.Since(start)
		p.log.Debug("inbound connect to the app failed", "listener", name, "target", target.String(), "error", err)
		p.obs.ConnDone(info)
		return
	}
	info.BytesSent, info.BytesReceived, info.Err = splice(c, up, 0)
	info.Duration = time.Since(start)
	p.obs.ConnDone(info)
}

// inboundHandler authorises each request and forwards it to the app.
type inboundHandler struct {
	p    *Proxy
	once sync.Once
	rp   http.Handler
}

type inboundTarget struct {
	addr     netip.AddrPort
	upstream config.UpstreamProtocol
}

type targetKey struct{}

func (h *inboundHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := h.p
	h.once.Do(func() { h.rp = p.newReverseProxy(&inboundRT{p: p}) })
	m := metaFrom(r.Context())
	portNum := uint32(m.dst.Port())
	port := m.port
	if s := p.current(); s.cfg != nil && s.cfg.Inbound != nil {
		if cur := s.cfg.Inbound.Ports[portNum]; cur != nil {
			port = cur // the newest policy applies to every request
		}
	}
	name := "inbound|" + strconv.Itoa(int(portNum))
	st := &reqState{start: time.Now(), grpcStatus: -1, listener: name, cluster: name + "||"}
	defer p.observeRequest(Inbound, r, st, m.identity)
	if port == nil {
		p.localReply(w, r, st, http.StatusServiceUnavailable, "no inbound port "+strconv.Itoa(int(portNum)))
		return
	}
	if ok, _ := port.RBAC.Allow(m.identity, portNum); !ok {
		p.localReply(w, r, st, http.StatusForbidden, rbacDenied)
		return
	}
	// Only the proxy says who called: drop whatever the caller claims.
	r.Header.Del(peerIdentityHeader)
	if m.identity != "" {
		r.Header.Set(peerIdentityHeader, m.identity)
	}
	target := port.Target
	if !target.IsValid() {
		target = m.dst
	}
	st.endpoint = target
	ctx := context.WithValue(r.Context(), stateKey{}, st)
	ctx = context.WithValue(ctx, targetKey{}, inboundTarget{addr: target, upstream: port.Upstream})
	if !isUpgrade(r.Header) {
		var stop func()
		ctx, w, r, stop = watchIdle(ctx, w, r, DefaultIdleTimeout)
		defer stop()
	}
	if r.ProtoMajor == 1 {
		http.NewResponseController(w).EnableFullDuplex() //nolint:errcheck // best effort
	}
	h.rp.ServeHTTP(w, r.WithContext(ctx))
}

// inboundRT forwards to the app on loopback.
type inboundRT struct{ p *Proxy }

func (t *inboundRT) RoundTrip(req *http.Request) (*http.Response, error) {
	tg, ok := req.Context().Value(targetKey{}).(inboundTarget)
	if !ok {
		return nil, errNoRouteState
	}
	out := req.Clone(req.Context())
	out.URL.Host = tg.addr.String()
	resp, err := t.p.inPool.transport(tg.upstream, req).RoundTrip(out)
	if err != nil {
		return nil, err
	}
	if st := stateFrom(req.Context()); st != nil {
		st.mu.Lock()
		st.status = resp.StatusCode
		st.mu.Unlock()
		code := grpcCode(resp.Header)
		resp.Body = wrapBody(resp, func(trailer http.Header, _ error) {
			if c := grpcCode(trailer); c >= 0 {
				code = c
			}
			st.mu.Lock()
			st.grpcStatus = code
			st.mu.Unlock()
		})
	}
	return resp, nil
}
