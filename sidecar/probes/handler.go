package probes

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

const (
	// userAgent is sent unless the probe sets its own (the kubelet sends
	// kube-probe/<major>.<minor>; applications that recognise probes look at the prefix).
	userAgent = "kube-probe/trellis"
	// maxBody is how much of an HTTP probe's response body is read, as the kubelet
	// (a longer body is not an error; the rest is not read).
	maxBody = 10 << 10
	// maxHeaderBytes bounds the response headers of an HTTP probe and the header list of a
	// gRPC one.
	maxHeaderBytes = 1 << 20
	// maxReason bounds the reason in a failure's body (errors can quote what the
	// application sent).
	maxReason = 512
)

// Handler serves GET (and HEAD) PathPrefix<container>/<kind> by running the probe p holds
// for that path, and answers as the kubelet would have judged the original probe:
//
//   - HTTP: the application's status when it is 200-399 (a 3xx is not followed, and its
//     Location is not passed on), else 503;
//   - TCP: 200 when the connection opened, else 503;
//   - gRPC: 200 when grpc.health.v1.Health/Check answers SERVING, else 503.
//
// A path p has no probe for is 404; another method than GET or HEAD is 405. Every answer
// is text: on failure, the reason. Each probe is bounded by its timeoutSeconds (a little
// under; see the package documentation).
//
// dial opens every connection to the application (nil: a plain net.Dialer). The proxy's
// own connections are not redirected when they go to loopback, so plain dials reach the
// application.
func Handler(p *Probes, dial func(ctx context.Context, network, addr string) (net.Conn, error)) http.Handler {
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	return &handler{
		probes: p,
		dial:   dial,
		client: &http.Client{
			Transport: &http.Transport{
				DialContext: dial,
				// As the kubelet: an HTTPS probe does not verify the certificate.
				TLSClientConfig:        &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // the kubelet's behaviour, which the contract keeps
				DisableKeepAlives:      true,
				DisableCompression:     true,
				MaxResponseHeaderBytes: maxHeaderBytes,
				// Proxy is nil: probes never go through an HTTP proxy.
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		inflight: map[string]*call{},
	}
}

type handler struct {
	probes *Probes
	dial   func(ctx context.Context, network, addr string) (net.Conn, error)
	client *http.Client

	mu       sync.Mutex
	inflight map[string]*call // by path
}

// call is one run of a probe, shared by the requests that arrive while it runs.
type call struct {
	done chan struct{}
	res  result
}

// result is the answer to the kubelet.
type result struct {
	code   int
	reason string
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// The escaped path: the names in a rewritten path need no escaping, so an escaped
	// request is not one of them.
	path := r.URL.EscapedPath()
	e := h.probes.lookup(path)
	if e == nil {
		reply(w, result{http.StatusNotFound, "no rewritten probe at this path"})
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		reply(w, result{http.StatusMethodNotAllowed, "use GET"})
		return
	}
	reply(w, h.shared(r.Context(), path, e))
}

// shared runs the probe of path, or waits for the run already under way. The run does not
// depend on any one request, so a client that goes away does not fail the others.
func (h *handler) shared(ctx context.Context, path string, e *entry) result {
	h.mu.Lock()
	c := h.inflight[path]
	if c == nil {
		c = &call{done: make(chan struct{})}
		h.inflight[path] = c
		go func() {
			defer func() {
				if v := recover(); v != nil {
					c.res = result{http.StatusServiceUnavailable, fmt.Sprintf("probe failed: internal error: %v", v)}
				}
				h.mu.Lock()
				delete(h.inflight, path)
				h.mu.Unlock()
				close(c.done)
			}()
			c.res = h.run(e)
		}()
	}
	h.mu.Unlock()
	select {
	case <-c.done:
		return c.res
	case <-ctx.Done():
		return result{http.StatusServiceUnavailable, "probe abandoned: the request was cancelled"}
	}
}

func (h *handler) run(e *entry) result {
	ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
	defer cancel()
	switch {
	case e.probe.HTTPGet != nil:
		return h.runHTTP(ctx, e)
	case e.probe.TCPSocket != nil:
		return h.runTCP(ctx, e)
	default:
		return h.runGRPC(ctx, e)
	}
}

func (h *handler) runHTTP(ctx context.Context, e *entry) result {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.url, nil)
	if err != nil {
		return failed(ctx, e, "HTTP", err)
	}
	req.Header = e.header.Clone()
	if host := e.header.Get("Host"); host != "" {
		req.Host = host
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return failed(ctx, e, "HTTP", err)
	}
	defer resp.Body.Close()
	// As the kubelet: read at most maxBody; a longer body is fine, a broken one is not.
	if _, err := io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody)); err != nil {
		return failed(ctx, e, "HTTP", fmt.Errorf("reading the response: %w", err))
	}
	if resp.StatusCode >= http.StatusOK && resp.StatusCode < http.StatusBadRequest {
		return result{resp.StatusCode, fmt.Sprintf("HTTP probe succeeded with statuscode: %d", resp.StatusCode)}
	}
	return result{http.StatusServiceUnavailable, fmt.Sprintf("HTTP probe failed with statuscode: %d", resp.StatusCode)}
}

func (h *handler) runTCP(ctx context.Context, e *entry) result {
	conn, err := h.dial(ctx, "tcp", e.addr)
	if err != nil {
		return failed(ctx, e, "TCP", err)
	}
	if conn == nil {
		return failed(ctx, e, "TCP", errors.New("the dialer returned no connection"))
	}
	_ = conn.Close()
	return result{http.StatusOK, "TCP probe succeeded: connected to " + e.addr}
}

func (h *handler) runGRPC(ctx context.Context, e *entry) result {
	conn, err := grpc.NewClient("passthrough:///"+e.addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return h.dial(ctx, "tcp", addr)
		}),
		grpc.WithNoProxy(),
		grpc.WithUserAgent(userAgent),
		grpc.WithMaxHeaderListSize(maxHeaderBytes),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxBody)),
	)
	if err != nil {
		return failed(ctx, e, "gRPC", err)
	}
	defer conn.Close()
	service := e.probe.GRPC.Service
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		if ctx.Err() != nil {
			return failed(ctx, e, "gRPC", err)
		}
		switch st := status.Convert(err); st.Code() {
		case codes.Unimplemented:
			return result{http.StatusServiceUnavailable, "gRPC probe failed: the application does not implement the health protocol (grpc.health.v1.Health)"}
		case codes.NotFound:
			return result{http.StatusServiceUnavailable, fmt.Sprintf("gRPC probe failed: the application's health server does not know %s", serviceName(service))}
		default:
			return result{http.StatusServiceUnavailable, fmt.Sprintf("gRPC probe failed: %s: %s", st.Code(), st.Message())}
		}
	}
	if s := resp.GetStatus(); s != healthpb.HealthCheckResponse_SERVING {
		return result{http.StatusServiceUnavailable, fmt.Sprintf("gRPC probe failed: %s is %s", serviceName(service), s)}
	}
	return result{http.StatusOK, fmt.Sprintf("gRPC probe succeeded: %s is SERVING", serviceName(service))}
}

func serviceName(s string) string {
	if s == "" {
		return "the server"
	}
	return fmt.Sprintf("service %q", s)
}

// failed is a probe's failure: a timeout says so, anything else gives the error.
func failed(ctx context.Context, e *entry, kind string, err error) result {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return result{http.StatusServiceUnavailable, fmt.Sprintf("%s probe timed out (timeoutSeconds: %d)", kind, e.probe.TimeoutSeconds)}
	}
	return result{http.StatusServiceUnavailable, fmt.Sprintf("%s probe failed: %v", kind, err)}
}

func reply(w http.ResponseWriter, res result) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(res.code)
	if res.code == http.StatusNoContent || res.code == http.StatusNotModified {
		return // no body allowed
	}
	_, _ = io.WriteString(w, sanitize(res.reason)+"\n")
}

// sanitize makes a reason one short line of printable text.
func sanitize(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, s)
	if len(s) <= maxReason {
		return s
	}
	cut := maxReason
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
