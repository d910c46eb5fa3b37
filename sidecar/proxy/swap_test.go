package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

func TestConfigSwapMidTrafficFailsNoRequest(t *testing.T) {
	appV1 := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "v1") }))
	appV2 := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "v2") }))
	m := newMesh(t)
	a, b := m.node(clientSA), m.node(serverSA)
	ep1, ep2 := ap("10.0.1.1:8081"), ap("10.0.2.1:8082")
	b.pod(ep1)
	b.pod(ep2)
	v1Name, v2Name := "outbound|80||web-v1.default.svc.cluster.local", "outbound|80||web-v2.default.svc.cluster.local"

	// Every version is a new Config with new pointers, as the xDS client builds them.
	version := 0
	build := func() (*config.Config, *config.Config) {
		version++
		v1 := meshedCluster(v1Name, true, map[netip.AddrPort]string{ep1: b.id})
		v2 := meshedCluster(v2Name, true, map[netip.AddrPort]string{ep2: b.id})
		v1.Limits.MaxRequests = uint32(1000 + version) // something changes every time
		l := httpListener(listener, config.ProtocolHTTP, wc(v1Name, 1))
		l.HTTP.Timeout = time.Duration(10+version%3) * time.Second
		if version%2 == 0 {
			l.HTTP.Backends = []config.WeightedCluster{wc(v1Name, 50), wc(v2Name, 50)}
			l.HTTP.Retry = &config.RetryPolicy{On: []string{"connect-failure"}, NumRetries: 1,
				Budget: &config.RetryBudget{Percent: 20, MinPerSecond: 10, Window: 10 * time.Second}}
		}
		ac := &config.Config{
			Version:  "v" + string(rune('0'+version%10)),
			Outbound: map[netip.AddrPort]*config.OutboundListener{ap(vip): l},
			Clusters: map[string]*config.Cluster{v1Name: v1, v2Name: v2},
		}
		p1 := inboundPort(8081, config.ProtocolHTTP, appV1, true, config.UpstreamHTTP1)
		p2 := inboundPort(8082, config.ProtocolHTTP, appV2, true, config.UpstreamHTTP1)
		if version%3 == 0 {
			allow := &config.RBAC{Policies: []config.Policy{{Name: "allow", Principals: []config.Principal{{Prefix: "spiffe://cluster.local/ns/default/"}}}}}
			p1.RBAC, p2.RBAC = allow, allow
		}
		return ac, &config.Config{Inbound: inbound(p1, p2)}
	}
	ac, bc := build()
	a.cfg.Store(ac)
	b.cfg.Store(bc)
	client := a.outbound(ap(vip))
	a.proxy.ClusterStats() // the runtime state exists from here on
	stateBefore := a.proxy.snap.Load().clusters[v1Name]

	stop := make(chan struct{})
	var swaps atomic.Int64
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			ac, bc := build()
			a.cfg.Store(ac)
			b.cfg.Store(bc)
			swaps.Add(1)
		}
	}()
	var wg sync.WaitGroup
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(1500 * time.Millisecond)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// h2c clients: their requests are multiplexed between the sidecars on one
			// connection per endpoint, which must survive the swaps.
			c := h2cClientTo(client)
			for time.Now().Before(deadline) {
				resp, err := c.Get("http://web.default/")
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || (string(body) != "v1" && string(body) != "v2") {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, resp.Status+" "+resp.Header.Get("X-Trellis-Error"))
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	close(stop)
	t.Logf("%d requests, %d configuration swaps", ok.Load(), swaps.Load())
	if failed.Load() > 0 {
		t.Fatalf("%d of %d requests failed during configuration swaps; first: %v", failed.Load(), ok.Load()+failed.Load(), firstErr.Load())
	}
	if swaps.Load() < 20 || ok.Load() < 100 {
		t.Fatalf("too little happened: %d swaps, %d requests", swaps.Load(), ok.Load())
	}
	// The runtime state was updated, not recreated: same cluster state, picks accumulated,
	// and the pooled connection between the sidecars survived the swaps.
	if a.proxy.current().clusters[v1Name] != stateBefore {
		t.Error("the cluster's runtime state was recreated by a configuration swap")
	}
	var picks uint64
	for _, cs := range a.proxy.ClusterStats() {
		for _, e := range cs.Endpoints {
			picks += e.Balancer.Picks
		}
	}
	if picks != uint64(ok.Load()) {
		t.Errorf("the balancers counted %d picks for %d requests: their state did not survive the swaps", picks, ok.Load())
	}
	if d := m.dialCount(ep1) + m.dialCount(ep2); d > 2 {
		t.Errorf("%d connections between the sidecars; pooled connections should survive the swaps", d)
	}
}

func TestShutdownDrainsThenCloses(t *testing.T) {
	release := make(chan struct{})
	appAddr := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		io.WriteString(w, "finished")
	}))
	p := httpPair(t, appAddr, nil)
	type result struct {
		status int
		body   string
		err    error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := clientTo(p.client).Get("http://web.default/")
		if err != nil {
			done <- result{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{status: resp.StatusCode, body: string(b)}
	}()
	waitFor(t, func() bool { return p.a.proxy.active.Load() > 0 })
	shutdown := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shutdown <- p.a.proxy.Shutdown(ctx)
	}()
	time.Sleep(50 * time.Millisecond)
	if _, err := net.DialTimeout("tcp", p.client, time.Second); err == nil {
		t.Error("the proxy still accepts connections while shutting down")
	}
	close(release)
	if r := <-done; r.err != nil || r.status != 200 || r.body != "finished" {
		t.Errorf("the request in flight: %+v", r)
	}
	if err := <-shutdown; err != nil {
		t.Errorf("Shutdown: %v", err)
	}

	t.Run("what is left at the deadline is closed", func(t *testing.T) {
		q := newPair(t, tcpApp(t, func(c net.Conn) { io.Copy(c, c) }), pairOpts{outProto: config.ProtocolTCP, inProto: config.ProtocolTCP, strict: true})
		c, err := net.Dial("tcp", q.client)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "x")
		io.ReadFull(c, make([]byte, 1))
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if err := q.a.proxy.Shutdown(ctx); err == nil {
			t.Error("Shutdown returned nil although a connection had to be closed")
		}
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Error("the connection is still open after the deadline")
		}
	})
}
