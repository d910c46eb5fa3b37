package proxy

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/trellis-mesh/trellis/sidecar/config"
	"github.com/trellis-mesh/trellis/sidecar/proxy/sniff"
)

// handleOutbound takes one connection captured on 15001.
func (p *Proxy) handleOutbound(c *trackedConn) {
	dst, err := p.o.OriginalDestination(c.Conn)
	if err != nil {
		p.log.Warn("outbound connection without an original destination; closed", "remote", c.RemoteAddr().String(), "error", err)
		c.Close()
		return
	}
	s := p.current()
	var l *config.OutboundListener
	if s.cfg != nil {
		l = s.cfg.Outbound[dst]
	}
	if l == nil {
		p.passthrough(c, dst, Outbound, config.OutboundPassthrough)
		return
	}
	switch l.Protocol {
	case config.ProtocolTCP:
		p.outboundTCP(c, dst, l, s)
	case config.ProtocolHTTP, config.ProtocolHTTP2:
		p.outbound.serve(c, &connMeta{dst: dst, listener: l})
	default: // detect, and protocols this version does not know
		timeout := l.SniffTimeout
		if timeout <= 0 {
			timeout = DefaultSniffTimeout
		}
		sc := sniff.NewConn(c)
		start := time.Now()
		res, err := sc.Sniff(timeout, sniff.Classify)
		if err != nil {
			p.log.Debug("outbound connection failed while sniffing", "listener", l.Name, "error", err)
			c.Close()
			return
		}
		p.obs.Sniffed(SniffInfo{Direction: Outbound, Listener: l.Name, Protocol: res.Protocol, TimedOut: res.TimedOut, Duration: time.Since(start)})
		if (res.Protocol == sniff.HTTP1 || res.Protocol == sniff.HTTP2) && l.HTTP != nil {
			p.outbound.serve(&sniffedConn{Conn: sc, tc: c}, &connMeta{dst: dst, listener: l})
			return
		}
		p.outboundTCP(&sniffedConn{Conn: sc, tc: c}, dst, l, s)
	}
}

// sniffedConn is a sniffed connection that still closes through the tracked one.
type sniffedConn struct {
	*sniff.Conn
	tc *trackedConn
}

func (c *sniffedConn) Close() error { return c.tc.Close() }

// CloseWrite half-closes.
func (c *sniffedConn) CloseWrite() error { return c.tc.CloseWrite() }

// outboundTCP proxies a connection to an endpoint of the listener's TCP route. A listener
// without one (an HTTP-only listener whose client is not speaking HTTP) passes it through.
func (p *Proxy) outboundTCP(c net.Conn, dst netip.AddrPort, l *config.OutboundListener, s *snapshot) {
	if l.TCP == nil || len(l.TCP.Backends) == 0 {
		p.passthrough(c, dst, Outbound, l.Name)
		return
	}
	start := time.Now()
	name := s.tcpRoute(l.Name, l.TCP).pick()
	info := ConnInfo{Direction: Outbound, Listener: l.Name, Cluster: name}
	cs := s.cluster(name)
	if cs == nil {
		c.Close()
		info.Err = &noEndpointError{cluster: name}
		info.Duration = time.Since(start)
		p.log.Debug("outbound TCP connection refused", "listener", l.Name, "error", info.Err)
		p.obs.ConnDone(info)
		return
	}
	up, ep, finish, err := p.connectTCP(context.Background(), cs, dst)
	info.Endpoint = ep
	if e, ok := cs.endpoint(ep); ok {
		info.DestinationIdentity = e.Identity
	}
	if err != nil {
		c.Close()
		info.Err, info.Duration = err, time.Since(start)
		p.log.Debug("outbound TCP connect failed", "listener", l.Name, "cluster", name, "error", err)
		p.obs.ConnDone(info)
		return
	}
	info.BytesSent, info.BytesReceived, info.Err = splice(c, up, l.TCP.IdleTimeout)
	finish()
	info.Duration = time.Since(start)
	p.obs.ConnDone(info)
}
