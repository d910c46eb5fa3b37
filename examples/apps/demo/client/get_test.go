package client_test

import (
	"context"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-mesh/trellis/examples/apps/demo/client"
	"github.com/trellis-mesh/trellis/examples/apps/demo/server"
	"github.com/trellis-mesh/trellis/examples/apps/demo/wire"
)

// split alternates between two handlers, as a 50/50 TrafficSplit would on average, and
// plays the client's sidecar: every answer carries x-trellis-upstream-identity.
func split(a, b http.Handler) http.Handler {
	var n atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(wire.UpstreamIdentityHeader, "spiffe://cluster.local/ns/shop/sa/backend")
		if n.Add(1)%2 == 0 {
			a.ServeHTTP(w, r)
		} else {
			b.ServeHTTP(w, r)
		}
	})
}

func TestGetCountsVersionsStatusesAndIdentities(t *testing.T) {
	addr := serveHandler(t, split(httpServer("v1", "backend-v1-a").Handler(), httpServer("v2", "backend-v2-b").Handler()))
	o := client.DefaultGetOptions()
	o.URL, o.N, o.Concurrency = "http://"+addr+"/", 100, 8
	o.Headers = []string{"x-trellis-peer-identity=spiffe://cluster.local/ns/shop/sa/frontend"}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	got := client.Get(context.Background(), o)

	if got.Requests != 100 || got.Succeeded != 100 || got.Failed != 0 || got.ErrorCount != 0 {
		t.Errorf("requests/succeeded/failed/errors = %d/%d/%d/%d, want 100/100/0/0 (errors: %v)", got.Requests, got.Succeeded, got.Failed, got.ErrorCount, got.Errors)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"statuses", got.Statuses, map[string]int{"200": 100}},
		{"versions", got.Versions, map[string]int{"v1": 50, "v2": 50}},
		{"protocols", got.Protocols, map[string]int{"HTTP/1.1": 100}},
		{"serverProtocols", got.ServerProtocols, map[string]int{"HTTP/1.1": 100}},
		{"peer identities", got.PeerIdentities, []string{"spiffe://cluster.local/ns/shop/sa/frontend"}},
		{"upstream identities", got.UpstreamIdentities, []string{"spiffe://cluster.local/ns/shop/sa/backend"}},
		{"backend versions", got.BackendVersions, map[string]int{}},
		{"errors", got.Errors, []string{}},
	}
	for _, c := range checks {
		if diff := cmp.Diff(c.want, c.got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", c.name, diff)
		}
	}
	if got.LatencyMs.P50 <= 0 || got.LatencyMs.P99 < got.LatencyMs.P50 || got.LatencyMs.Max < got.LatencyMs.P99 {
		t.Errorf("latency %+v: want 0 < p50 <= p99 <= max", got.LatencyMs)
	}
}

func TestGetKeepsConcurrencyAndSpeaksH2C(t *testing.T) {
	var inFlight, peak atomic.Int64
	backend := httpServer("v1", "p").Handler()
	addr := serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
		backend.ServeHTTP(w, r)
	}))
	o := client.DefaultGetOptions()
	o.URL, o.N, o.Concurrency, o.H2C = "http://"+addr+"/", 40, 4, true
	got := client.Get(context.Background(), o)
	if got.Succeeded != 40 {
		t.Fatalf("succeeded %d of 40: %v", got.Succeeded, got.Errors)
	}
	if diff := cmp.Diff(map[string]int{"HTTP/2.0": 40}, got.Protocols); diff != "" {
		t.Errorf("protocols (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]int{"HTTP/2.0": 40}, got.ServerProtocols); diff != "" {
		t.Errorf("serverProtocols (-want +got):\n%s", diff)
	}
	if p := peak.Load(); p != 4 {
		t.Errorf("at most %d requests were in flight at once, want --concurrency 4", p)
	}
}

func TestGetCountsFailuresWithoutFailingItself(t *testing.T) {
	t.Run("answers that are not 2xx are counted by status, with the proxy's error header", func(t *testing.T) {
		backend := httpServer("v1", "p").Handler()
		addr := serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set(wire.TrellisErrorHeader, "RBAC: access denied")
			backend.ServeHTTP(w, r)
		}))
		o := client.DefaultGetOptions()
		o.URL, o.N = "http://"+addr+"/status/403", 10
		got := client.Get(context.Background(), o)
		if got.Succeeded != 0 || got.Failed != 10 || got.ErrorCount != 0 {
			t.Errorf("succeeded/failed/errorCount = %d/%d/%d, want 0/10/0", got.Succeeded, got.Failed, got.ErrorCount)
		}
		if diff := cmp.Diff(map[string]int{"403": 10}, got.Statuses); diff != "" {
			t.Errorf("statuses (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(map[string]int{"RBAC: access denied": 10}, got.TrellisErrors); diff != "" {
			t.Errorf("trellisErrors (-want +got):\n%s", diff)
		}
	})

	t.Run("requests with no answer are counted as errors, and only a few distinct strings are kept", func(t *testing.T) {
		o := client.DefaultGetOptions()
		o.URL, o.N = "http://"+closedAddr(t)+"/", 30
		got := client.Get(context.Background(), o)
		if got.Requests != 30 || got.Failed != 30 || got.ErrorCount != 30 || len(got.Statuses) != 0 {
			t.Errorf("requests/failed/errorCount/statuses = %d/%d/%d/%v, want 30/30/30/{}", got.Requests, got.Failed, got.ErrorCount, got.Statuses)
		}
		if len(got.Errors) == 0 || len(got.Errors) > client.MaxErrors || !strings.Contains(got.Errors[0], "refused") {
			t.Errorf("errors %q: want 1 to %d strings saying the connection was refused", got.Errors, client.MaxErrors)
		}
	})

	t.Run("a request slower than the timeout is an error", func(t *testing.T) {
		addr := serveHandler(t, httpServer("v1", "p").Handler())
		o := client.DefaultGetOptions()
		o.URL, o.N, o.Timeout = "http://"+addr+"/delay/2s", 2, 100*time.Millisecond
		start := time.Now()
		got := client.Get(context.Background(), o)
		if got.ErrorCount != 2 || time.Since(start) > 1500*time.Millisecond {
			t.Errorf("errorCount %d after %s, want 2 timeouts well before the 2s delay", got.ErrorCount, time.Since(start))
		}
	})
}

func TestGetThroughTheFrontendSeesBothHops(t *testing.T) {
	// In front of the backends, the two sidecars' work: the backend's sets the caller's
	// identity on the request, the frontend's sets the backend's on the response (split).
	backends := split(httpServer("v1", "a").Handler(), httpServer("v2", "b").Handler())
	backendAddr := serveHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Set(wire.PeerIdentityHeader, "spiffe://cluster.local/ns/shop/sa/frontend")
		backends.ServeHTTP(w, r)
	}))
	fe := &server.HTTP{
		Common:  server.Common{Info: server.Info{Service: "frontend", Version: "fe1"}, Drain: time.Second},
		Backend: "http://" + backendAddr + "/",
	}
	addr := serve(t, fe.Serve)
	o := client.DefaultGetOptions()
	o.URL, o.N = "http://"+addr+"/", 20
	got := client.Get(context.Background(), o)
	if got.Succeeded != 20 {
		t.Fatalf("succeeded %d of 20: %v", got.Succeeded, got.Errors)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"versions", got.Versions, map[string]int{"fe1": 20}},
		{"backendVersions", got.BackendVersions, map[string]int{"v1": 10, "v2": 10}},
		{"backendPeerIdentities", got.BackendPeerIdentities, []string{"spiffe://cluster.local/ns/shop/sa/frontend"}},
		{"backendUpstreamIdentities", got.BackendUpstreamIdentities, []string{"spiffe://cluster.local/ns/shop/sa/backend"}},
		{"peerIdentities", got.PeerIdentities, []string{}},
	}
	for _, c := range checks {
		if diff := cmp.Diff(c.want, c.got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", c.name, diff)
		}
	}
}

func TestGetTellsTheClientsProtocolFromTheServers(t *testing.T) {
	// A proxy that takes h2c from the client and speaks HTTP/1.1 to the server, as a
	// sidecar may.
	backend := serveHandler(t, httpServer("v1", "p").Handler())
	target, err := url.Parse("http://" + backend)
	if err != nil {
		t.Fatal(err)
	}
	addr := serveHandler(t, httputil.NewSingleHostReverseProxy(target))
	o := client.DefaultGetOptions()
	o.URL, o.N, o.H2C = "http://"+addr+"/", 10, true
	got := client.Get(context.Background(), o)
	if diff := cmp.Diff(map[string]int{"HTTP/2.0": 10}, got.Protocols); diff != "" {
		t.Errorf("protocols, as the client spoke (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]int{"HTTP/1.1": 10}, got.ServerProtocols); diff != "" {
		t.Errorf("serverProtocols, as the server received (-want +got):\n%s", diff)
	}
}
