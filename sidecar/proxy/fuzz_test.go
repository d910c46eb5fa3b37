package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

// FuzzRequestPath drives the outbound HTTP handler (routing, retries, body replay, the
// reverse proxy, local replies) with arbitrary request lines, headers and bodies that
// net/http accepts. It must never panic.
func FuzzRequestPath(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: web\r\n\r\n",
		"POST /x?y=z HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello",
		"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"POST /svc/Method HTTP/1.1\r\nHost: web\r\nContent-Type: application/grpc\r\nGrpc-Timeout: 1m\r\nTe: trailers\r\n\r\n",
		"GET http://other/abs HTTP/1.1\r\nHost: web\r\nConnection: close, X-Foo\r\nX-Foo: bar\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: web\r\nX-Trellis-Peer-Identity: spiffe://evil\r\n\r\n",
		"GET /status/503 HTTP/1.1\r\nHost: web\r\nGrpc-Timeout: 99999999H\r\n\r\n",
		"CONNECT web:443 HTTP/1.1\r\nHost: web:443\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
		if strings.HasPrefix(r.URL.Path, "/status/") {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Trailer", "X-Sum")
		io.WriteString(w, "ok")
		w.Header().Set("X-Sum", "1")
	}))
	f.Cleanup(upstream.Close)
	ep := netip.MustParseAddrPort(strings.TrimPrefix(upstream.URL, "http://"))
	l := &config.OutboundListener{
		Name: "fuzz", Protocol: config.ProtocolHTTP, StreamIdleTimeout: time.Minute,
		HTTP: &config.Route{
			Name: "fuzz", Backends: []config.WeightedCluster{{Cluster: "a", Weight: 3}, {Cluster: "b", Weight: 1}},
			Timeout: 2 * time.Second,
			Retry:   &config.RetryPolicy{On: []string{"5xx", "connect-failure"}, NumRetries: 1},
		},
	}
	cfg := &config.Config{
		Outbound: map[netip.AddrPort]*config.OutboundListener{netip.MustParseAddrPort(vip): l},
		Clusters: map[string]*config.Cluster{
			"a": {Name: "a", Endpoints: []config.Endpoint{{Address: ep}}},
			"b": {Name: "b"}, // no endpoint: local 503
		},
	}
	p := New(Options{Config: func() *config.Config { return cfg }})
	h := &outboundHandler{p: p}
	f.Fuzz(func(t *testing.T, raw []byte) {
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ctx = context.WithValue(ctx, metaKey{}, &connMeta{dst: netip.MustParseAddrPort(vip), listener: l})
		req = req.WithContext(ctx)
		req.RemoteAddr = "127.0.0.1:12345"
		rec := httptest.NewRecorder()
		func() {
			defer func() {
				if r := recover(); r != nil && r != http.ErrAbortHandler { //nolint:errorlint // sentinel panic value
					t.Fatalf("the handler panicked on %q: %v", raw, r)
				}
			}()
			h.ServeHTTP(rec, req)
		}()
		if rec.Code < 100 || rec.Code > 599 {
			t.Fatalf("status %d", rec.Code)
		}
	})
}
