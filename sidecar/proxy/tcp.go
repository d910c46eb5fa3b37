package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/sidecar/outlier"
)

// maxTCPConnectAttempts is how many endpoints a TCP connection tries before giving up.
const maxTCPConnectAttempts = 3

// splice copies bytes both ways between the downstream and upstream connections until both
// directions have ended. The end of one direction (EOF) is passed on as a half-close, so a
// client that shuts down its sending side still receives the reply. An error in either
// direction, or no byte in either direction for idle (when > 0), closes both.
func splice(down, up net.Conn, idle time.Duration) (sent, received int64, err error) {
	var closeOnce sync.Once
	closeBoth := func() {
		closeOnce.Do(func() {
			down.Close()
			up.Close()
		})
	}
	var idleErr atomic.Bool
	touch := func() {}
	if idle > 0 {
		w := newIdleWatch(idle, func() {
			idleErr.Store(true)
			closeBoth()
		})
		defer w.stop()
		touch = w.touch
	}
	var wg sync.WaitGroup
	var upErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		received, upErr = copyHalf(down, up, touch)
		if upErr != nil {
			closeBoth()
		}
	}()
	var downErr error
	sent, downErr = copyHalf(up, down, touch)
	if downErr != nil {
		closeBoth()
	}
	wg.Wait()
	closeBoth()
	switch {
	case idleErr.Load():
		return sent, received, errIdleTimeout
	case downErr != nil:
		return sent, received, downErr
	}
	return sent, received, upErr
}

var errIdleTimeout = errors.New("idle timeout")

// copyHalf copies src to dst until EOF, then half-closes dst.
func copyHalf(dst, src net.Conn, touch func()) (int64, error) {
	buf := make([]byte, 32<<10)
	var n int64
	for {
		r, err := src.Read(buf)
		if r > 0 {
			touch()
			w, werr := dst.Write(buf[:r])
			n += int64(w)
			if werr != nil {
				return n, werr
			}
		}
		if err == io.EOF {
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite() //nolint:errcheck // the peer may be gone; nothing to do
			}
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// connectTCP opens an upstream connection to an endpoint of cs for one TCP connection:
// eligible endpoints (not ejected), up to maxTCPConnectAttempts of them on connect failures.
// finish must be called when the connection ends (the endpoint's in-flight count).
func (p *Proxy) connectTCP(ctx context.Context, cs *clusterState, dst netip.AddrPort) (c net.Conn, ep netip.AddrPort, finish func(), err error) {
	if cs.cfg.Load().OriginalDestination {
		c, err := cs.dial(ctx, dst, false, nil, "")
		return c, dst, func() {}, err
	}
	var tried []netip.AddrPort
	for range maxTCPConnectAttempts {
		ep, call, ok := cs.bal.Load().Pick(eligible(cs, tried))
		if !ok {
			break
		}
		tried = append(tried, ep)
		e, _ := cs.endpoint(ep)
		start := time.Now()
		c, err = cs.dial(ctx, ep, e.MTLS, nil, "")
		latency := time.Since(start)
		if err == nil {
			cs.od.Report(ep, outlier.Success)
			return c, ep, func() { call.Done(latency, false) }, nil
		}
		call.Done(latency, true)
		var oe *overflowError
		if errors.As(err, &oe) {
			return nil, ep, nil, err
		}
		cs.od.Report(ep, outlier.ConnectFailure)
		if ctx.Err() != nil {
			break
		}
	}
	if err == nil {
		err = &noEndpointError{cluster: cs.name}
	}
	return nil, netip.AddrPort{}, nil, err
}

// eligible returns the endpoint filter of a pick: not ejected, and not tried already
// (unless every endpoint was tried).
func eligible(cs *clusterState, tried []netip.AddrPort) func(netip.AddrPort) bool {
	return func(a netip.AddrPort) bool {
		if cs.od.Ejected(a) {
			return false
		}
		for _, t := range tried {
			if t == a {
				return false
			}
		}
		return true
	}
}

// passthrough connects to the original destination and splices, untouched.
func (p *Proxy) passthrough(c net.Conn, dst netip.AddrPort, dir Direction, name string) {
	start := time.Now()
	info := ConnInfo{Direction: dir, Listener: name, Cluster: name, Endpoint: dst}
	ctx, cancel := context.WithTimeout(context.Background(), DefaultConnectTimeout)
	up, err := p.o.Dial(ctx, dst)
	cancel()
	if err != nil {
		c.Close()
		info.Duration, info.Err = time.Since(start), err
		p.log.Debug("passthrough connect failed", "direction", dir, "destination", dst.String(), "error", err)
		p.obs.ConnDone(info)
		return
	}
	info.BytesSent, info.BytesReceived, info.Err = splice(c, up, 0)
	info.Duration = time.Since(start)
	p.obs.ConnDone(info)
}
