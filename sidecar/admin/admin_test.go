package admin

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestAdmin(t *testing.T) {
	var ready atomic.Bool
	drained := make(chan struct{}, 2)
	s := State{
		Ready: func() (bool, string) {
			if ready.Load() {
				return true, ""
			}
			return false, "no configuration from the control plane yet"
		},
		Config:   func() any { return map[string]string{"version": "v1"} },
		Clusters: func() any { return []string{"outbound|80||web.shop.svc.cluster.local"} },
		Certs:    func() any { return map[string]string{"id": "spiffe://cluster.local/ns/shop/sa/web"} },
		Drain:    func() { drained <- struct{}{} },
		Quit:     func() {},
	}
	srv := httptest.NewServer(Handler(s, slog.New(slog.DiscardHandler)))
	defer srv.Close()
	status := httptest.NewServer(StatusHandler(s, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "app probe "+r.URL.Path)
	}), nil))
	defer status.Close()

	get := func(base, path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		name, base, path string
		code             int
		body             string
	}{
		{"readiness says why it is not ready", srv.URL, "/ready", 503, "no configuration from the control plane yet"},
		{"the kubelet's probe says the same", status.URL, "/healthz/ready", 503, "not ready"},
		{"the config dump is JSON", srv.URL, "/config_dump", 200, `"version": "v1"`},
		{"clusters are listed", srv.URL, "/clusters", 200, "outbound|80||web.shop.svc.cluster.local"},
		{"certs show the identity", srv.URL, "/certs", 200, "spiffe://cluster.local/ns/shop/sa/web"},
		{"a page with no source is not found", srv.URL, "/xds", 404, "not available"},
		{"a GET cannot drain the proxy", srv.URL, "/drain", 405, ""},
		{"the app's rewritten probes are served on the status port", status.URL, "/app-health/api/livez", 200, "app probe /app-health/api/livez"},
		{"the admin API is not on the status port", status.URL, "/config_dump", 404, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := get(tc.base, tc.path)
			if code != tc.code || !strings.Contains(body, tc.body) {
				t.Errorf("GET %s = %d %q, want %d containing %q", tc.path, code, body, tc.code, tc.body)
			}
		})
	}
	ready.Store(true)
	if code, _ := get(status.URL, "/healthz/ready"); code != 200 {
		t.Errorf("ready proxy: /healthz/ready = %d", code)
	}
	for range 2 {
		resp, err := http.Post(srv.URL+"/drain", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	select {
	case <-drained:
	case <-time.After(5 * time.Second):
		t.Fatal("POST /drain did not drain")
	}
	select {
	case <-drained:
		t.Error("a second POST /drain drained again")
	case <-time.After(100 * time.Millisecond):
	}
}
