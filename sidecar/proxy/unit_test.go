package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

func TestReplayBody(t *testing.T) {
	t.Run("a second view replays what the first read, then reads on", func(t *testing.T) {
		b := newReplayBody(io.NopCloser(strings.NewReader("hello world")), 64)
		v1 := b.view()
		buf := make([]byte, 5)
		if _, err := io.ReadFull(v1, buf); err != nil || string(buf) != "hello" {
			t.Fatalf("first view read %q, %v", buf, err)
		}
		if !b.rewindable() {
			t.Fatal("not rewindable under the limit")
		}
		v2 := b.view()
		if _, err := v1.Read(buf); !errors.Is(err, errBodyDetached) {
			t.Fatalf("the old view still reads: %v", err)
		}
		all, err := io.ReadAll(v2)
		if err != nil || string(all) != "hello world" {
			t.Fatalf("second view read %q, %v", all, err)
		}
		v3 := b.view()
		if all, err := io.ReadAll(v3); err != nil || string(all) != "hello world" {
			t.Fatalf("a view after EOF read %q, %v", all, err)
		}
	})
	t.Run("past the limit the body is not rewindable", func(t *testing.T) {
		b := newReplayBody(io.NopCloser(strings.NewReader(strings.Repeat("x", 100))), 10)
		v := b.view()
		if n, _ := io.Copy(io.Discard, v); n != 100 {
			t.Fatalf("the first view streamed %d bytes, want all 100", n)
		}
		if b.rewindable() {
			t.Fatal("rewindable after overflowing the buffer")
		}
	})
	t.Run("a view waits for a read in progress and gets its bytes", func(t *testing.T) {
		pr, pw := io.Pipe()
		b := newReplayBody(pr, 64)
		v1 := b.view()
		got1 := make(chan string)
		go func() {
			buf := make([]byte, 16)
			n, _ := v1.Read(buf) // blocks in the pipe
			got1 <- string(buf[:n])
		}()
		time.Sleep(20 * time.Millisecond)
		v2 := b.view()
		got2 := make(chan string)
		go func() {
			all, _ := io.ReadAll(v2)
			got2 <- string(all)
		}()
		pw.Write([]byte("abc"))
		if s := <-got1; s != "abc" {
			t.Fatalf("the old view's read returned %q", s)
		}
		pw.Write([]byte("def"))
		pw.Close()
		if s := <-got2; s != "abcdef" {
			t.Fatalf("the new view read %q, want abcdef", s)
		}
	})
}

func TestParseGRPCTimeout(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"100m", 100 * time.Millisecond, true},
		{"1S", time.Second, true},
		{"2M", 2 * time.Minute, true},
		{"1H", time.Hour, true},
		{"5u", 5 * time.Microsecond, true},
		{"7n", 7, true},
		{"99999999H", 1 << 62, true},
		{"", 0, false},
		{"m", 0, false},
		{"10", 0, false},
		{"-1S", 0, false},
		{"123456789S", 0, false},
		{"1x", 0, false},
	} {
		got, ok := parseGRPCTimeout(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseGRPCTimeout(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestErrorStatus(t *testing.T) {
	timedOut, cancel := context.WithTimeoutCause(context.Background(), 0, errRouteTimeout)
	defer cancel()
	<-timedOut.Done()
	gone, cancelGone := context.WithCancel(context.Background())
	cancelGone()
	bg := context.Background()
	for _, tc := range []struct {
		name   string
		ctx    context.Context
		err    error
		status int
		prefix string
	}{
		{"no endpoint is 503", bg, &noEndpointError{cluster: "c"}, 503, "no healthy endpoint in c"},
		{"overflow is 503", bg, &overflowError{cluster: "c", what: "requests"}, 503, "overflow"},
		{"the route timeout is 504", timedOut, context.DeadlineExceeded, 504, "upstream request timeout"},
		{"a per-try timeout is 504", bg, errPerTryTimeout, 504, "upstream per-try timeout"},
		{"a connect failure is 503", bg, &connectError{err: errors.New("refused")}, 503, "upstream connect error"},
		{"a reset is 503", bg, io.ErrUnexpectedEOF, 503, "upstream reset"},
		{"a client that left gets nothing", gone, context.Canceled, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, msg := errorStatus(tc.ctx, tc.err)
			if status != tc.status || !strings.HasPrefix(msg, tc.prefix) {
				t.Errorf("got %d %q, want %d %q…", status, msg, tc.status, tc.prefix)
			}
		})
	}
}

func TestIsUpgrade(t *testing.T) {
	for _, tc := range []struct {
		h    http.Header
		want bool
	}{
		{http.Header{"Upgrade": {"websocket"}, "Connection": {"Upgrade"}}, true},
		{http.Header{"Upgrade": {"websocket"}, "Connection": {"keep-alive, upgrade"}}, true},
		{http.Header{"Upgrade": {"websocket"}}, false},
		{http.Header{"Connection": {"upgrade"}}, false},
		{http.Header{"Upgrade": {"h2c"}, "Connection": {"close"}}, false},
	} {
		if got := isUpgrade(tc.h); got != tc.want {
			t.Errorf("isUpgrade(%v) = %v", tc.h, got)
		}
	}
}

func TestMaxRequestsPerConnectionRetiresConnections(t *testing.T) {
	appAddr := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	p := httpPair(t, appAddr, func(a, _ *config.Config) { a.Clusters[svcName].Limits.MaxRequestsPerConnection = 2 })
	c := clientTo(p.client)
	for range 6 {
		if resp, body := get(t, c, "http://web.default/"); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("got %d %q", resp.StatusCode, body)
		}
	}
	if n := p.m.dialCount(ap(podAddr)); n != 3 {
		t.Errorf("6 requests at 2 per connection took %d connections, want 3", n)
	}
}

func TestRouteStateSurvivesUnchangedBackends(t *testing.T) {
	backends := []config.WeightedCluster{{Cluster: "a", Weight: 1}, {Cluster: "b", Weight: 3}}
	budget := &config.RetryPolicy{Budget: &config.RetryBudget{Percent: 20}}
	rs := (*routeState)(nil).updated(backends, budget)
	same := rs.updated([]config.WeightedCluster{{Cluster: "a", Weight: 1}, {Cluster: "b", Weight: 3}}, &config.RetryPolicy{Budget: &config.RetryBudget{Percent: 20}})
	if same != rs {
		t.Error("an identical route got a new state")
	}
	changed := rs.updated([]config.WeightedCluster{{Cluster: "a", Weight: 2}, {Cluster: "b", Weight: 3}}, budget)
	if changed == rs || changed.budget != rs.budget {
		t.Error("new weights must give a new picker and keep the budget")
	}
	if (*routeState)(nil).updated([]config.WeightedCluster{{Cluster: "only"}}, nil).pick() != "only" {
		t.Error("a single backend without weight must still be picked")
	}
}

func TestOutlierDetectionEjectsAFailingEndpoint(t *testing.T) {
	good := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "good") }))
	bad := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusInternalServerError) }))
	m := newMesh(t)
	a, b := m.node(clientSA), m.node(serverSA)
	epGood, epBad := ap("10.0.1.1:8081"), ap("10.0.1.2:8082")
	b.pod(epGood)
	b.pod(epBad)
	cl := meshedCluster(svcName, true, map[netip.AddrPort]string{epGood: b.id, epBad: b.id})
	cl.LoadBalancer = config.LoadBalancerRoundRobin
	cl.Outlier = &config.OutlierDetection{Consecutive5xx: 3, BaseEjectionTime: time.Minute, MaxEjectionPercent: 50}
	a.cfg.Store(&config.Config{
		Outbound: map[netip.AddrPort]*config.OutboundListener{ap(vip): httpListener(listener, config.ProtocolHTTP, wc(svcName, 1))},
		Clusters: map[string]*config.Cluster{svcName: cl},
	})
	b.cfg.Store(&config.Config{Inbound: inbound(
		inboundPort(8081, config.ProtocolHTTP, good, true, config.UpstreamHTTP1),
		inboundPort(8082, config.ProtocolHTTP, bad, true, config.UpstreamHTTP1),
	)})
	c := clientTo(a.outbound(ap(vip)))
	for range 10 { // round robin: the bad endpoint fails 3 times within these
		get(t, c, "http://web.default/")
	}
	for i := range 20 {
		if resp, body := get(t, c, "http://web.default/"); resp.StatusCode != 200 || body != "good" {
			t.Fatalf("request %d after ejection: %d %q", i, resp.StatusCode, body)
		}
	}
	var ejected bool
	for _, e := range a.proxy.ClusterStats()[0].Endpoints {
		if e.Address == epBad {
			ejected = e.Outlier.Ejected
		}
	}
	if !ejected {
		t.Error("/clusters does not show the failing endpoint ejected")
	}
}
