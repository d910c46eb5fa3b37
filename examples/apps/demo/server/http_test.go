package server_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-mesh/trellis/examples/apps/demo/server"
	"github.com/trellis-mesh/trellis/examples/apps/demo/wire"
)

func get(t *testing.T, h2c bool, url string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	hc := &http.Client{Transport: server.NewTransport(h2c, 4), Timeout: 10 * time.Second}
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return resp, body
}

func decodeReply(t *testing.T, body []byte) wire.Reply {
	t.Helper()
	var r wire.Reply
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("the body is not the reply JSON: %v\n%s", err, body)
	}
	return r
}

func TestHTTPServerAnswersWhoServedAndWhoCalled(t *testing.T) {
	s := &server.HTTP{Common: common()}
	addr, _ := serve(t, s.Serve)
	peer := http.Header{"X-Trellis-Peer-Identity": {"spiffe://cluster.local/ns/shop/sa/frontend"}}

	tests := []struct {
		name string
		h2c  bool
		want string
	}{
		{name: "over HTTP/1.1 the reply says HTTP/1.1", want: "HTTP/1.1"},
		{name: "over h2c on the same port the reply says HTTP/2.0", h2c: true, want: "HTTP/2.0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := get(t, tc.h2c, "http://"+addr+"/some/path", peer)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d, want 200: %s", resp.StatusCode, body)
			}
			if got := resp.Header.Get(wire.VersionHeader); got != "v2" {
				t.Errorf("%s = %q, want v2", wire.VersionHeader, got)
			}
			want := wire.Reply{Service: "backend", Version: "v2", Pod: "backend-v2-abc", Namespace: "shop", Protocol: tc.want,
				PeerIdentity: "spiffe://cluster.local/ns/shop/sa/frontend", Host: addr, Path: "/some/path"}
			if diff := cmp.Diff(want, decodeReply(t, body)); diff != "" {
				t.Errorf("reply (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("without the sidecar's header peerIdentity is empty, and the key is still there", func(t *testing.T) {
		_, body := get(t, false, "http://"+addr+"/", nil)
		if !strings.Contains(string(body), `"peerIdentity":""`) {
			t.Errorf("body %s lacks an empty peerIdentity", body)
		}
	})
}

func TestHTTPServerRoutes(t *testing.T) {
	s := &server.HTTP{Common: common()}
	addr, _ := serve(t, s.Serve)
	tests := []struct {
		name       string
		path       string
		wantStatus int
		wantLen    int    // -1: do not check
		wantBody   string // substring; "" to skip
	}{
		{name: "healthz answers 200 ok", path: "/healthz", wantStatus: 200, wantLen: -1, wantBody: "ok"},
		{name: "bytes answers exactly n bytes", path: "/bytes?n=100000", wantStatus: 200, wantLen: 100000},
		{name: "bytes without n answers 1024 bytes", path: "/bytes", wantStatus: 200, wantLen: 1024},
		{name: "bytes with zero answers an empty body", path: "/bytes?n=0", wantStatus: 200, wantLen: 0},
		{name: "bytes refuses a negative n", path: "/bytes?n=-1", wantStatus: 400, wantLen: -1, wantBody: "want a number"},
		{name: "bytes refuses more than the cap", path: "/bytes?n=999999999", wantStatus: 400, wantLen: -1},
		{name: "status answers the status asked for with the reply", path: "/status/503", wantStatus: 503, wantLen: -1, wantBody: `"path":"/status/503"`},
		{name: "status answers 204 without a body", path: "/status/204", wantStatus: 204, wantLen: 0},
		{name: "status refuses a code that is not one", path: "/status/abc", wantStatus: 400, wantLen: -1},
		{name: "delay answers after the delay", path: "/delay/20ms", wantStatus: 200, wantLen: -1, wantBody: `"version":"v2"`},
		{name: "delay refuses a bad duration", path: "/delay/forever", wantStatus: 400, wantLen: -1},
		{name: "headers echoes the request headers", path: "/headers", wantStatus: 200, wantLen: -1, wantBody: `"X-Probe":["kubelet"]`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := get(t, false, "http://"+addr+tc.path, http.Header{"X-Probe": {"kubelet"}})
			if resp.StatusCode != tc.wantStatus {
				t.Errorf("status %d, want %d: %s", resp.StatusCode, tc.wantStatus, body)
			}
			if tc.wantLen >= 0 && len(body) != tc.wantLen {
				t.Errorf("body is %d bytes, want %d", len(body), tc.wantLen)
			}
			if !strings.Contains(string(body), tc.wantBody) {
				t.Errorf("body %q lacks %q", body, tc.wantBody)
			}
			if got := resp.Header.Get(wire.VersionHeader); got != "v2" {
				t.Errorf("%s = %q, want v2 on every response", wire.VersionHeader, got)
			}
		})
	}
}

// sidecarLike stands in for the client's sidecar in front of a backend: it sets
// x-trellis-upstream-identity on the backend's responses.
func sidecarLike(t *testing.T, h http.Handler, identity string) string {
	t.Helper()
	addr, _ := serve(t, func(ctx context.Context, ln net.Listener) error {
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set(wire.UpstreamIdentityHeader, identity)
			h.ServeHTTP(w, r)
		})}
		go func() { <-ctx.Done(); srv.Close() }()
		if err := srv.Serve(ln); err != http.ErrServerClosed {
			return err
		}
		return nil
	})
	return addr
}

func TestFrontendShowsTheWholeChain(t *testing.T) {
	backend := &server.HTTP{Common: common()}
	var (
		mu       sync.Mutex
		gotTrace string
	)
	recording := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		gotTrace = r.Header.Get("traceparent")
		mu.Unlock()
		backend.Handler().ServeHTTP(w, r)
	})
	backendAddr := sidecarLike(t, recording, "spiffe://cluster.local/ns/shop/sa/backend")
	fc := common()
	fc.Info = server.Info{Service: "frontend", Version: "v1", Pod: "frontend-xyz", Namespace: "shop"}

	t.Run("a 2xx backend answer is returned inside a 200", func(t *testing.T) {
		fe := &server.HTTP{Common: fc, Backend: "http://" + backendAddr + "/"}
		addr, _ := serve(t, fe.Serve)
		trace := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		resp, body := get(t, false, "http://"+addr+"/", http.Header{"Traceparent": {trace}})
		if resp.StatusCode != 200 {
			t.Fatalf("status %d, want 200: %s", resp.StatusCode, body)
		}
		got := decodeReply(t, body)
		want := wire.Reply{Service: "frontend", Version: "v1", Pod: "frontend-xyz", Namespace: "shop", Protocol: "HTTP/1.1", Host: addr, Path: "/",
			Backend:                 &wire.Reply{Service: "backend", Version: "v2", Pod: "backend-v2-abc", Namespace: "shop", Protocol: "HTTP/1.1", Host: backendAddr, Path: "/"},
			BackendStatus:           200,
			BackendUpstreamIdentity: "spiffe://cluster.local/ns/shop/sa/backend"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("reply (-want +got):\n%s", diff)
		}
		mu.Lock()
		defer mu.Unlock()
		if gotTrace != trace {
			t.Errorf("the backend got traceparent %q, want the caller's %q", gotTrace, trace)
		}
	})

	t.Run("a backend answering 503 makes the frontend answer 502 and say why", func(t *testing.T) {
		fe := &server.HTTP{Common: fc, Backend: "http://" + backendAddr + "/status/503"}
		addr, _ := serve(t, fe.Serve)
		resp, body := get(t, false, "http://"+addr+"/", nil)
		got := decodeReply(t, body)
		if resp.StatusCode != 502 || got.BackendStatus != 503 || !strings.Contains(got.BackendError, "503") || got.Backend == nil {
			t.Errorf("status %d, reply %+v; want 502 with backendStatus 503, the backend's JSON and an error naming 503", resp.StatusCode, got)
		}
	})

	t.Run("an unreachable backend makes the frontend answer 502 with the error", func(t *testing.T) {
		fe := &server.HTTP{Common: fc, Backend: "http://127.0.0.1:1/", BackendTimeout: 2 * time.Second}
		addr, _ := serve(t, fe.Serve)
		resp, body := get(t, false, "http://"+addr+"/", nil)
		got := decodeReply(t, body)
		if resp.StatusCode != 502 || got.BackendError == "" || got.Backend != nil || got.BackendStatus != 0 {
			t.Errorf("status %d, reply %+v; want 502 with backendError and no backend", resp.StatusCode, got)
		}
	})
}

func TestHTTPServerDrainsOnShutdown(t *testing.T) {
	s := &server.HTTP{Common: common()}
	addr, stop := serve(t, s.Serve)
	type result struct {
		status int
		err    error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := http.Get("http://" + addr + "/delay/500ms")
		if err != nil {
			res <- result{err: err}
			return
		}
		resp.Body.Close()
		res <- result{status: resp.StatusCode}
	}()
	time.Sleep(150 * time.Millisecond) // the request is in flight
	start := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("Serve returned %v", err)
	}
	if r := <-res; r.err != nil || r.status != 200 {
		t.Errorf("the in-flight request got %d, %v; want it to finish with 200", r.status, r.err)
	}
	if time.Since(start) < 200*time.Millisecond {
		t.Errorf("Serve returned after %s, before the in-flight request could finish", time.Since(start))
	}
	if _, err := http.Get("http://" + addr + "/healthz"); err == nil {
		t.Errorf("a new request after shutdown succeeded")
	}
}
