package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/trellis-mesh/trellis/sidecar/config"
	"github.com/trellis-mesh/trellis/sidecar/outlier"
	"github.com/trellis-mesh/trellis/sidecar/retry"
)

// The causes of a request's context ending that the proxy answers itself.
var (
	errRouteTimeout  = errors.New("upstream request timeout")
	errGRPCTimeout   = errors.New("grpc-timeout exceeded")
	errPerTryTimeout = errors.New("upstream per-try timeout")
	errStreamIdle    = errors.New("stream idle timeout")
	errNoRouteState  = errors.New("request without routing state")
	errTryDiscarded  = errors.New("try discarded for a retry")
)

// Headers the proxy reads or writes.
const (
	peerIdentityHeader = "X-Trellis-Peer-Identity"
	// upstreamIdentityHeader is set on outbound responses to the SPIFFE ID the upstream
	// proved in the mTLS handshake; any copy the upstream sent is removed, and it is
	// absent when the upstream was reached in plaintext.
	upstreamIdentityHeader = "X-Trellis-Upstream-Identity"
	errorHeader            = "X-Trellis-Error"
	grpcStatusHeader       = "Grpc-Status"
	grpcMessageHeader      = "Grpc-Message"
	grpcTimeoutHeader      = "Grpc-Timeout"
)

// reqState is one outbound request's routing decision and what happened to it.
type reqState struct {
	start    time.Time
	listener string
	route    *config.Route
	rs       *routeState
	cluster  string
	cs       *clusterState
	dst      netip.AddrPort

	mu         sync.Mutex
	status     int
	grpcStatus int
	retries    int
	endpoint   netip.AddrPort
	destID     string
	upstreamID string // the identity the upstream proved on the connection of the last try
	localErr   string
}

type stateKey struct{}

func stateFrom(ctx context.Context) *reqState {
	st, _ := ctx.Value(stateKey{}).(*reqState)
	return st
}

// outboundHandler routes each request of an outbound HTTP connection.
type outboundHandler struct {
	p    *Proxy
	once sync.Once
	rp   *httputil.ReverseProxy
}

func (h *outboundHandler) proxy() *httputil.ReverseProxy {
	h.once.Do(func() { h.rp = h.p.newReverseProxy(&outboundRT{p: h.p}) })
	return h.rp
}

func (h *outboundHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := h.p
	m := metaFrom(r.Context())
	s := p.current()
	l := m.listener
	if s.cfg != nil {
		if cur := s.cfg.Outbound[m.dst]; cur != nil && cur.HTTP != nil {
			l = cur // the newest route for the destination
		}
	}
	st := &reqState{start: time.Now(), grpcStatus: -1, dst: m.dst}
	defer p.observeRequest(Outbound, r, st, "")
	if l == nil || l.HTTP == nil || len(l.HTTP.Backends) == 0 {
		p.localReply(w, r, st, http.StatusServiceUnavailable, "no route to "+m.dst.String())
		return
	}
	st.listener, st.route = l.Name, l.HTTP
	st.rs = s.httpRoute(l.HTTP)
	st.cluster = st.rs.pick()
	st.cs = s.cluster(st.cluster)
	if st.cs == nil {
		p.localReply(w, r, st, http.StatusServiceUnavailable, "no healthy endpoint in "+st.cluster)
		return
	}

	ctx := r.Context()
	upgrade := isUpgrade(r.Header)
	if t := l.HTTP.Timeout; t > 0 && !upgrade {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, t, errRouteTimeout)
		defer cancel()
	}
	if d, ok := parseGRPCTimeout(r.Header.Get(grpcTimeoutHeader)); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, d, errGRPCTimeout)
		defer cancel()
	}
	idle := l.StreamIdleTimeout
	if l.HTTP.IdleTimeout != nil {
		idle = *l.HTTP.IdleTimeout
	}
	if idle > 0 && !upgrade {
		var stop func()
		ctx, w, r, stop = watchIdle(ctx, w, r, idle)
		defer stop()
	}
	if r.ProtoMajor == 1 {
		http.NewResponseController(w).EnableFullDuplex() //nolint:errcheck // best effort
	}
	ctx = context.WithValue(ctx, stateKey{}, st)
	h.proxy().ServeHTTP(w, r.WithContext(ctx))
}

// newReverseProxy returns a streaming reverse proxy over rt: it flushes every write of a
// streamed response (no Content-Length, as gRPC, or text/event-stream: httputil detects
// them), forwards trailers, and splices upgraded connections. A response of known length
// is not flushed write by write: it leaves when complete (or as the server's buffer
// fills), in one write with the end of the stream, which saves a write and a wake-up per
// request on each sidecar (docs/performance.md).
func (p *Proxy) newReverseProxy(rt http.RoundTripper) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = "upstream.invalid" // the round tripper sets the endpoint
			// A sidecar is transparent: keep the forwarding headers the client sent.
			for _, k := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
				if v, ok := pr.In.Header[k]; ok {
					pr.Out.Header[k] = v
				}
			}
		},
		Transport:    rt,
		BufferPool:   bufferPool{},
		ErrorHandler: p.proxyError,
		ErrorLog:     nil,
	}
}

type bufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *(buffers.Get().(*[]byte)) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }

// outboundRT sends a request to an endpoint of the chosen cluster, retrying per the route.
type outboundRT struct{ p *Proxy }

func (t *outboundRT) RoundTrip(req *http.Request) (*http.Response, error) {
	st := stateFrom(req.Context())
	if st == nil {
		return nil, errNoRouteState
	}
	var on retry.Conditions
	maxRetries := 0
	if rp := st.route.Retry; rp != nil {
		on, maxRetries = retry.Parse(rp.On), int(rp.NumRetries)
	}
	upgrade := isUpgrade(req.Header)
	if upgrade {
		maxRetries = 0
	}
	budget := st.rs.budget
	budget.Request()
	hasBody := req.Body != nil && req.Body != http.NoBody
	var body *replayBody
	if hasBody && maxRetries > 0 {
		body = newReplayBody(req.Body, MaxRetryBuffer)
	}
	var tried []netip.AddrPort
	for attempt := 0; ; attempt++ {
		tr := t.try(req, st, body, tried)
		tried = append(tried, tr.ep)
		if tr.outcome == nil { // refused locally, or the request's own deadline
			return tr.resp, tr.err
		}
		again := attempt < maxRetries && on.Match(*tr.outcome) && req.Context().Err() == nil &&
			(!hasBody || body.rewindable()) && budget.Retry()
		if !again {
			if tr.resp != nil {
				return tr.keep(st), nil
			}
			tr.finish(nil, tr.err)
			return nil, tr.err
		}
		tr.discard()
		st.mu.Lock()
		st.retries++
		st.mu.Unlock()
		select {
		case <-time.After(retry.Backoff(attempt + 1)):
		case <-req.Context().Done():
			return nil, context.Cause(req.Context())
		}
	}
}

// tryResult is one try: a response or an error, and how to finish its accounting.
type tryResult struct {
	ep      netip.AddrPort
	resp    *http.Response
	err     error
	outcome *retry.Outcome // nil: not an outcome of a try (nothing to retry)
	finish  func(trailer http.Header, err error)
}

// keep hands the response to the client; its accounting ends with the body.
func (tr *tryResult) keep(st *reqState) *http.Response {
	st.mu.Lock()
	st.status = tr.resp.StatusCode
	upstreamID := st.upstreamID
	st.mu.Unlock()
	tr.resp.Header.Del(upstreamIdentityHeader)
	if upstreamID != "" {
		tr.resp.Header.Set(upstreamIdentityHeader, upstreamID)
	}
	tr.resp.Body = wrapBody(tr.resp, tr.finish)
	return tr.resp
}

// discard drops a response that will be retried.
func (tr *tryResult) discard() {
	if tr.resp != nil {
		tr.resp.Body.Close()
		tr.finish(tr.resp.Trailer, errTryDiscarded)
		return
	}
	tr.finish(nil, tr.err)
}

func (t *outboundRT) try(req *http.Request, st *reqState, body *replayBody, tried []netip.AddrPort) *tryResult {
	cs := st.cs
	cl := cs.cfg.Load()
	var ep netip.AddrPort
	var done func(time.Duration, bool)
	if cl.OriginalDestination {
		ep, done = st.dst, func(time.Duration, bool) {}
	} else {
		bal := cs.bal.Load()
		e, call, ok := bal.Pick(eligible(cs, tried))
		if !ok && len(tried) > 0 {
			e, call, ok = bal.Pick(eligible(cs, nil)) // every endpoint was tried: try one again
		}
		if !ok {
			return &tryResult{err: &noEndpointError{cluster: cs.name}}
		}
		ep, done = e, call.Done
	}
	relReq, ok := cs.brk.Request()
	if !ok {
		done(0, false)
		return &tryResult{ep: ep, err: &overflowError{cluster: cs.name, what: "requests"}}
	}
	relPend, ok := cs.brk.Pending()
	if !ok {
		relReq()
		done(0, false)
		return &tryResult{ep: ep, err: &overflowError{cluster: cs.name, what: "pending requests"}}
	}
	e, _ := cs.endpoint(ep)
	st.mu.Lock()
	st.endpoint, st.destID = ep, e.Identity
	st.mu.Unlock()

	ctx, cancel := context.WithCancelCause(req.Context())
	var timer *time.Timer
	if rp := st.route.Retry; rp != nil && rp.PerTryTimeout > 0 {
		timer = time.AfterFunc(rp.PerTryTimeout, func() { cancel(errPerTryTimeout) })
	}
	var connDone func()
	maxPerConn := cs.brk.MaxRequestsPerConnection()
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		relPend()
		if rc, ok := info.Conn.(*releaseConn); ok && connDone == nil {
			connDone = rc.use(maxPerConn)
			st.mu.Lock()
			st.upstreamID = rc.peerID
			st.mu.Unlock()
		}
	}}
	out := req.Clone(httptrace.WithClientTrace(ctx, trace))
	out.URL.Host = ep.String()
	out.GetBody = nil
	if body != nil {
		out.Body = body.view()
	}
	start := time.Now()
	resp, err := cs.poolFor(e, req).RoundTrip(out)
	relPend()
	latency := time.Since(start)
	perTryFired := timer != nil && !timer.Stop()
	if perTryFired && err == nil {
		resp.Body.Close()
		resp, err = nil, errPerTryTimeout
	}

	tr := &tryResult{ep: ep, resp: resp, err: err}
	var once sync.Once
	finishWith := func(res outlier.Result, report, failed bool) {
		once.Do(func() {
			if report {
				cs.od.Report(ep, res)
			}
			done(latency, failed)
			relReq()
			cancel(nil)
			if connDone != nil {
				connDone()
			}
		})
	}
	if err != nil {
		var oe *overflowError
		var ce *connectError
		switch {
		case errors.As(err, &oe): // max connections: refused locally
			finishWith(outlier.Success, false, false)
			tr.err = err
			tr.finish = func(http.Header, error) {}
			return tr
		case req.Context().Err() != nil: // the request's own deadline, or the client left
			finishWith(outlier.Success, false, errors.Is(context.Cause(req.Context()), errRouteTimeout))
			tr.err = context.Cause(req.Context())
			tr.finish = func(http.Header, error) {}
			return tr
		case perTryFired || errors.Is(context.Cause(ctx), errPerTryTimeout):
			tr.err = errPerTryTimeout
			tr.outcome = &retry.Outcome{Reset: true, GRPCStatus: -1}
		case errors.As(err, &ce):
			tr.outcome = &retry.Outcome{ConnectFailure: true, GRPCStatus: -1}
		case isRefusedStream(err):
			tr.outcome = &retry.Outcome{RefusedStream: true, GRPCStatus: -1}
		default:
			tr.outcome = &retry.Outcome{Reset: true, GRPCStatus: -1}
		}
		tr.finish = func(http.Header, error) { finishWith(outlier.ConnectFailure, true, true) }
		return tr
	}
	grpcHeader := grpcCode(resp.Header)
	tr.outcome = &retry.Outcome{Status: resp.StatusCode, GRPCStatus: grpcHeader}
	tr.finish = func(trailer http.Header, bodyErr error) {
		code := grpcHeader
		if c := grpcCode(trailer); c >= 0 {
			code = c
		}
		if code >= 0 {
			st.mu.Lock()
			st.grpcStatus = code
			st.mu.Unlock()
		}
		failed := resp.StatusCode >= 500 || code == 2 || code == 13 || code == 14
		if failed {
			finishWith(outlier.Failure5xx, true, true)
		} else {
			finishWith(outlier.Success, true, false)
		}
	}
	return tr
}

func isRefusedStream(err error) bool {
	return err != nil && strings.Contains(err.Error(), "REFUSED_STREAM")
}

// grpcCode is the grpc-status in h, -1 when none.
func grpcCode(h http.Header) int {
	v := h.Get(grpcStatusHeader)
	if v == "" {
		return -1
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// wrapBody calls finish once when the body ends (EOF, error or close); a 101 response's
// body stays writable (the upgraded connection).
func wrapBody(resp *http.Response, finish func(http.Header, error)) io.ReadCloser {
	b := &finishBody{rc: resp.Body, resp: resp, finish: finish}
	if rw, ok := resp.Body.(io.ReadWriteCloser); ok && resp.StatusCode == http.StatusSwitchingProtocols {
		return &finishRWBody{finishBody: b, w: rw}
	}
	return b
}

type finishBody struct {
	rc     io.ReadCloser
	resp   *http.Response
	once   sync.Once
	finish func(http.Header, error)
}

func (b *finishBody) end(err error) {
	b.once.Do(func() { b.finish(b.resp.Trailer, err) })
}

func (b *finishBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.end(nil)
	} else if err != nil {
		b.end(err)
	}
	return n, err
}

func (b *finishBody) Close() error {
	err := b.rc.Close()
	b.end(nil)
	return err
}

type finishRWBody struct {
	*finishBody
	w io.Writer
}

func (b *finishRWBody) Write(p []byte) (int, error) { return b.w.Write(p) }
