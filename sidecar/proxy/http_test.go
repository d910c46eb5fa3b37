package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

const (
	vip       = "10.96.0.10:80"
	podAddr   = "10.0.0.1:8080"
	svcName   = "outbound|80||web.default.svc.cluster.local"
	listener  = "outbound|web.default|80"
	clientSA  = "client"
	serverSA  = "server"
	peerField = "X-Trellis-Peer-Identity"
)

// pair is the standard scenario: a client sidecar A whose outbound listener for vip routes
// to the cluster of one pod, whose sidecar B serves port 8080 to an app on loopback.
type pair struct {
	m      *mesh
	a, b   *node
	client string // dial this to reach vip through A
	aCfg   *config.Config
	bCfg   *config.Config
}

type pairOpts struct {
	outProto    config.Protocol
	inProto     config.Protocol
	upstream    config.UpstreamProtocol // B → app
	clusterUp   config.UpstreamProtocol // A → B when not multiplexed
	httpCluster bool
	strict      bool
	modify      func(a, b *config.Config)
}

func newPair(t *testing.T, appAddr string, o pairOpts) *pair {
	t.Helper()
	m := newMesh(t)
	p := &pair{m: m, a: m.node(clientSA), b: m.node(serverSA)}
	p.b.pod(ap(podAddr))
	cl := meshedCluster(svcName, o.httpCluster, map[netip.AddrPort]string{ap(podAddr): p.b.id})
	cl.Upstream = o.clusterUp
	var l *config.OutboundListener
	if o.httpCluster {
		l = httpListener(listener, o.outProto, wc(svcName, 1))
	} else {
		l = tcpListener(listener, o.outProto, wc(svcName, 1))
	}
	p.aCfg = &config.Config{
		Version:  "a1",
		Outbound: map[netip.AddrPort]*config.OutboundListener{ap(vip): l},
		Clusters: map[string]*config.Cluster{svcName: cl},
	}
	p.bCfg = &config.Config{
		Version: "b1",
		Inbound: inbound(inboundPort(8080, o.inProto, appAddr, o.strict, o.upstream)),
	}
	if o.modify != nil {
		o.modify(p.aCfg, p.bCfg)
	}
	p.a.cfg.Store(p.aCfg)
	p.b.cfg.Store(p.bCfg)
	p.client = p.a.outbound(ap(vip))
	t.Cleanup(p.a.shutdown) // the client side first: its pooled connections then close at once
	return p
}

func httpPair(t *testing.T, appAddr string, modify func(a, b *config.Config)) *pair {
	return newPair(t, appAddr, pairOpts{outProto: config.ProtocolHTTP, inProto: config.ProtocolHTTP, httpCluster: true, strict: true, upstream: config.UpstreamHTTP1, modify: modify})
}

func TestHTTP1KeepAliveChunkedBodiesAndPeerIdentity(t *testing.T) {
	appAddr := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-App-Proto", r.Proto)
		w.Header().Set("X-App-Peer", r.Header.Get(peerField))
		w.Header().Set("X-App-Body", string(body))
		w.Header().Set("X-App-Request-Length", fmt.Sprint(r.ContentLength))
		w.Header().Set("X-App-Host", r.Host)
		w.Header().Set(upstreamIdentityHeader, spiffeFor("forged-by-the-app"))
		io.WriteString(w, "part1,")
		w.(http.Flusher).Flush()
		io.WriteString(w, "part2")
	}))
	p := httpPair(t, appAddr, nil)
	c := clientTo(p.client)

	var reused []bool
	for i := range 3 {
		var got bool
		trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { got = info.Reused }}
		pr, pw := io.Pipe()
		go func() {
			pw.Write([]byte("chunk-a/"))
			time.Sleep(5 * time.Millisecond)
			pw.Write([]byte(fmt.Sprintf("chunk-b/%d", i)))
			pw.Close()
		}()
		req, _ := http.NewRequest(http.MethodPost, "http://web.default/echo", pr) // unknown length: chunked
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
		req.Header.Set(peerField, spiffeFor("forged"))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		reused = append(reused, got)
		if resp.StatusCode != 200 || string(body) != "part1,part2" {
			t.Fatalf("request %d: got %d %q", i, resp.StatusCode, body)
		}
		if len(resp.TransferEncoding) == 0 || resp.TransferEncoding[0] != "chunked" {
			t.Errorf("request %d: the response was not chunked: %v", i, resp.TransferEncoding)
		}
		if got, want := resp.Header.Get("X-App-Body"), fmt.Sprintf("chunk-a/chunk-b/%d", i); got != want {
			t.Errorf("the app read %q, want %q", got, want)
		}
		if got := resp.Header.Get("X-App-Request-Length"); got != "-1" {
			t.Errorf("the app saw a request length %s, want a chunked body (-1)", got)
		}
		if got := resp.Header.Get("X-App-Peer"); got != p.a.id {
			t.Errorf("the app saw peer identity %q, want the client sidecar's %q (a forged one must be replaced)", got, p.a.id)
		}
		if got := resp.Header.Values(upstreamIdentityHeader); len(got) != 1 || got[0] != p.b.id {
			t.Errorf("the client saw upstream identity %q, want only the server sidecar's %q (the app's copy must be replaced)", got, p.b.id)
		}
		if got := resp.Header.Get("X-App-Proto"); got != "HTTP/1.1" {
			t.Errorf("the app spoke %s, want HTTP/1.1 (the port's upstream protocol)", got)
		}
		if got := resp.Header.Get("X-App-Host"); got != "web.default" {
			t.Errorf("the app saw Host %q", got)
		}
	}
	if !reused[1] || !reused[2] {
		t.Errorf("the client connection was not kept alive: reused=%v", reused)
	}
}

func TestSidecarsMultiplexRequestsOnOneHTTP2Connection(t *testing.T) {
	var appProto sync.Map
	appAddr := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		appProto.Store(r.Proto, true)
		time.Sleep(20 * time.Millisecond) // keep requests overlapping
		io.WriteString(w, "ok")
	}))
	p := httpPair(t, appAddr, nil)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := h2cClientTo(p.client) // a client connection of its own each
			resp, err := c.Get("http://web.default/")
			if err != nil {
				failed.Add(1)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d requests failed", failed.Load())
	}
	if n := p.m.dialCount(ap(podAddr)); n != 1 {
		t.Errorf("40 concurrent requests took %d connections between the sidecars; HTTP/2 should multiplex them on ~1", n)
	}
	var states []ClusterStats = p.a.proxy.ClusterStats()
	if len(states) != 1 || len(states[0].Endpoints) != 1 || states[0].Endpoints[0].Balancer.Picks < 40 {
		t.Errorf("cluster stats do not show the picks: %+v", states)
	}
}

func TestHTTP1RequestsTravelHTTP1BetweenSidecarsUnlessOnlyH2IsOffered(t *testing.T) {
	for _, tc := range []struct {
		name      string
		alpn      []string
		client    func(string) *http.Client
		wantProto string
	}{
		{"an HTTP/1.1 client's requests go over HTTP/1.1 keep-alive", []string{"h2", "http/1.1"}, clientTo, "HTTP/1.1"},
		{"an h2c client's requests go over HTTP/2", []string{"h2", "http/1.1"}, h2cClientTo, "HTTP/2.0"},
		{"a cluster offering h2 only gets HTTP/2 from an HTTP/1.1 client", []string{"h2"}, clientTo, "HTTP/2.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			appAddr := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-App-Peer", r.Header.Get(peerField))
				io.WriteString(w, "ok")
			}))
			p := httpPair(t, appAddr, func(a, _ *config.Config) { a.Clusters[svcName].MTLS.ALPN = tc.alpn })
			c := tc.client(p.client)
			for i := range 3 {
				resp, body := get(t, c, "http://web.default/")
				if resp.StatusCode != 200 || body != "ok" {
					t.Fatalf("request %d: got %d %q", i, resp.StatusCode, body)
				}
				if got := resp.Header.Get("X-App-Peer"); got != p.a.id {
					t.Errorf("request %d: peer identity %q, want %q", i, got, p.a.id)
				}
				if got := resp.Header.Get(upstreamIdentityHeader); got != p.b.id {
					t.Errorf("request %d: upstream identity %q, want %q", i, got, p.b.id)
				}
			}
			p.b.obs.mu.Lock()
			var protos []string
			for _, r := range p.b.obs.requests {
				protos = append(protos, r.Proto)
			}
			p.b.obs.mu.Unlock()
			if len(protos) != 3 {
				t.Fatalf("the server sidecar saw %d requests, want 3", len(protos))
			}
			for _, got := range protos {
				if got != tc.wantProto {
					t.Errorf("between the sidecars a request travelled as %s, want %s", got, tc.wantProto)
				}
			}
			if n := p.m.dialCount(ap(podAddr)); n != 1 {
				t.Errorf("3 sequential requests took %d connections between the sidecars, want 1 (kept alive)", n)
			}
		})
	}
}

func TestHTTP2PriorKnowledgeEndToEnd(t *testing.T) {
	appAddr := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-App-Proto", r.Proto)
		w.Header().Set("X-App-Peer", r.Header.Get(peerField))
		io.WriteString(w, "hello h2")
	}))
	p := newPair(t, appAddr, pairOpts{outProto: config.ProtocolHTTP2, inProto: config.ProtocolHTTP2, httpCluster: true, strict: true, upstream: config.UpstreamHTTP2, clusterUp: config.UpstreamHTTP2})
	c := h2cClientTo(p.client)
	for range 3 {
		resp, body := get(t, c, "http://web.default/")
		if resp.ProtoMajor != 2 || body != "hello h2" {
			t.Fatalf("got %s %q", resp.Proto, body)
		}
		if got := resp.Header.Get("X-App-Proto"); got != "HTTP/2.0" {
			t.Errorf("the app spoke %s, want HTTP/2.0", got)
		}
		if got := resp.Header.Get("X-App-Peer"); got != p.a.id {
			t.Errorf("peer identity %q, want %q", got, p.a.id)
		}
		if got := resp.Header.Get(upstreamIdentityHeader); got != p.b.id {
			t.Errorf("upstream identity %q over the HTTP/2 pool, want %q", got, p.b.id)
		}
	}
}

func TestTrailersPassThroughHTTP1AndHTTP2(t *testing.T) {
	appAddr := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		io.WriteString(w, "body")
		w.(http.Flusher).Flush()
		w.Header().Set("X-Checksum", "abc123")
		w.Header().Set(http.TrailerPrefix+"X-Late", "undeclared")
	}))
	for _, tc := range []struct {
		name   string
		client func(string) *http.Client
		out    config.Protocol
		up     config.UpstreamProtocol
	}{
		{"an HTTP/1.1 client gets chunked trailers", clientTo, config.ProtocolHTTP, config.UpstreamHTTP1},
		{"an h2c client gets HTTP/2 trailers", h2cClientTo, config.ProtocolHTTP2, config.UpstreamHTTP2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t, appAddr, pairOpts{outProto: tc.out, inProto: config.ProtocolHTTP, httpCluster: true, strict: true, upstream: tc.up})
			resp, body := get(t, tc.client(p.client), "http://web.default/")
			if body != "body" {
				t.Fatalf("body %q", body)
			}
			if got := resp.Trailer.Get("X-Checksum"); got != "abc123" {
				t.Errorf("declared trailer = %q, want abc123 (trailers %v)", got, resp.Trailer)
			}
			if got := resp.Trailer.Get("X-Late"); got != "undeclared" {
				t.Errorf("undeclared trailer = %q, want undeclared (trailers %v)", got, resp.Trailer)
			}
		})
	}
}

func TestWebSocketUpgradeIsSplicedAfter101(t *testing.T) {
	appAddr := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			http.Error(w, "want an upgrade", http.StatusBadRequest)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\nX-App-Peer: %s\r\n\r\n", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", r.Header.Get(peerField))
		brw.Flush()
		buf := make([]byte, 1024)
		for {
			n, err := brw.Read(buf)
			if n > 0 {
				conn.Write([]byte(strings.ToUpper(string(buf[:n]))))
			}
			if err != nil {
				return
			}
		}
	}))
	p := httpPair(t, appAddr, nil)
	c, err := net.Dial("tcp", p.client)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /chat HTTP/1.1\r\nHost: web.default\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("got %d %q, want 101", resp.StatusCode, b)
	}
	if got := resp.Header.Get("X-App-Peer"); got != p.a.id {
		t.Errorf("the app saw peer %q, want %q", got, p.a.id)
	}
	for _, msg := range []string{"hello", "websocket frames are just bytes"} {
		io.WriteString(c, msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(br, got); err != nil {
			t.Fatal(err)
		}
		if string(got) != strings.ToUpper(msg) {
			t.Fatalf("echo %q, want %q", got, strings.ToUpper(msg))
		}
	}
}

func TestWeightedSplitPerRequest(t *testing.T) {
	appV1 := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "v1") }))
	appV2 := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "v2") }))
	m := newMesh(t)
	a, b := m.node(clientSA), m.node(serverSA)
	ep1, ep2 := ap("10.0.1.1:8081"), ap("10.0.2.1:8082")
	b.pod(ep1)
	b.pod(ep2)
	v1 := meshedCluster("outbound|80||web-v1.default.svc.cluster.local", true, map[netip.AddrPort]string{ep1: b.id})
	v2 := meshedCluster("outbound|80||web-v2.default.svc.cluster.local", true, map[netip.AddrPort]string{ep2: b.id})
	a.cfg.Store(&config.Config{
		Outbound: map[netip.AddrPort]*config.OutboundListener{ap(vip): httpListener(listener, config.ProtocolHTTP, wc(v1.Name, 90), wc(v2.Name, 10))},
		Clusters: map[string]*config.Cluster{v1.Name: v1, v2.Name: v2},
	})
	b.cfg.Store(&config.Config{Inbound: inbound(
		inboundPort(8081, config.ProtocolHTTP, appV1, true, config.UpstreamHTTP1),
		inboundPort(8082, config.ProtocolHTTP, appV2, true, config.UpstreamHTTP1),
	)})
	c := clientTo(a.outbound(ap(vip)))
	const n = 2000
	counts := map[string]int{}
	for range n {
		_, body := get(t, c, "http://web.default/")
		counts[body]++
	}
	share := float64(counts["v1"]) * 100 / n
	t.Logf("v1 %d, v2 %d (%.1f%% v1)", counts["v1"], counts["v2"], share)
	if counts["v1"]+counts["v2"] != n || share < 87 || share > 93 {
		t.Fatalf("split %v: v1 share %.1f%%, want 90±3", counts, share)
	}
}

func TestRetries(t *testing.T) {
	t.Run("a 503 is retried and the client sees the success, body replayed", func(t *testing.T) {
		var tries atomic.Int64
		appAddr := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			if tries.Add(1)%2 == 1 {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			w.Write(body)
		}))
		p := httpPair(t, appAddr, func(a, _ *config.Config) {
			a.Outbound[ap(vip)].HTTP.Retry = &config.RetryPolicy{On: []string{"5xx"}, NumRetries: 2}
		})
		c := clientTo(p.client)
		for i := range 5 {
			resp, err := c.Post("http://web.default/", "text/plain", strings.NewReader(fmt.Sprintf("payload-%d", i)))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != fmt.Sprintf("payload-%d", i) {
				t.Fatalf("got %d %q", resp.StatusCode, b)
			}
		}
		if got := tries.Load(); got != 10 {
			t.Errorf("the app saw %d tries, want 10 (each request once failed, once retried)", got)
		}
	})

	t.Run("the budget caps retries", func(t *testing.T) {
		var tries atomic.Int64
		appAddr := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			tries.Add(1)
			w.WriteHeader(http.StatusServiceUnavailable)
		}))
		p := httpPair(t, appAddr, func(a, _ *config.Config) {
			a.Outbound[ap(vip)].HTTP.Retry = &config.RetryPolicy{
				On: []string{"gateway-error"}, NumRetries: 3,
				Budget: &config.RetryBudget{Percent: 20, MinPerSecond: 0, Window: time.Minute},
			}
		})
		c := clientTo(p.client)
		const n = 50
		for range n {
			resp, _ := get(t, c, "http://web.default/")
			if resp.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("got %d, want the app's 503", resp.StatusCode)
			}
		}
		retries := tries.Load() - n
		t.Logf("%d requests, %d retries", n, retries)
		if retries < 1 || retries > n*20/100+1 {
			t.Errorf("%d retries for %d requests; the 20%% budget allows about %d (without it, %d)", retries, n, n*20/100, 3*n)
		}
	})

	t.Run("a body larger than the retry buffer is not retried", func(t *testing.T) {
		var tries atomic.Int64
		var got atomic.Int64
		appAddr := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			tries.Add(1)
			n, _ := io.Copy(io.Discard, r.Body)
			got.Store(n)
			w.WriteHeader(http.StatusServiceUnavailable)
		}))
		p := httpPair(t, appAddr, func(a, _ *config.Config) {
			a.Outbound[ap(vip)].HTTP.Retry = &config.RetryPolicy{On: []string{"5xx"}, NumRetries: 3}
		})
		big := strings.Repeat("x", MaxRetryBuffer+1000)
		resp, err := clientTo(p.client).Post("http://web.default/", "text/plain", strings.NewReader(big))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 503 || tries.Load() != 1 || got.Load() != int64(len(big)) {
			t.Errorf("status %d, %d tries, app read %d bytes; want 503, 1 try, %d bytes", resp.StatusCode, tries.Load(), got.Load(), len(big))
		}
	})

	t.Run("a connect failure after retries is a 503", func(t *testing.T) {
		appAddr := app(t, http.NotFoundHandler())
		p := httpPair(t, appAddr, func(a, _ *config.Config) {
			a.Outbound[ap(vip)].HTTP.Retry = &config.RetryPolicy{On: []string{"connect-failure"}, NumRetries: 2}
		})
		dead := listen(t)
		dead.Close()
		p.m.pods.Store(ap(podAddr), dead.Addr().String()) // the pod's sidecar is gone
		before := p.m.dialCount(ap(podAddr))
		resp, _ := get(t, clientTo(p.client), "http://web.default/")
		if resp.StatusCode != 503 || !strings.HasPrefix(resp.Header.Get("X-Trellis-Error"), "upstream connect error") {
			t.Errorf("got %d %q, want 503 upstream connect error", resp.StatusCode, resp.Header.Get("X-Trellis-Error"))
		}
		if n := p.m.dialCount(ap(podAddr)) - before; n != 3 {
			t.Errorf("%d connection attempts, want 3 (1 + 2 retries)", n)
		}
	})
}

func TestTimeouts(t *testing.T) {
	t.Run("the route timeout gives 504", func(t *testing.T) {
		appAddr := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		}))
		p := httpPair(t, appAddr, func(a, _ *config.Config) {
			a.Outbound[ap(vip)].HTTP.Timeout = 200 * time.Millisecond
		})
		resp, _ := get(t, clientTo(p.client), "http://web.default/")
		if resp.StatusCode != http.StatusGatewayTimeout || resp.Header.Get("X-Trellis-Error") != "upstream request timeout" {
			t.Errorf("got %d %q, want 504 upstream request timeout", resp.StatusCode, resp.Header.Get("X-Trellis-Error"))
		}
	})
	t.Run("a per-try timeout is retried", func(t *testing.T) {
		var tries atomic.Int64
		appAddr := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if tries.Add(1) == 1 {
				select {
				case <-r.Context().Done():
				case <-time.After(10 * time.Second):
				}
				return
			}
			io.WriteString(w, "second try")
		}))
		p := httpPair(t, appAddr, func(a, _ *config.Config) {
			a.Outbound[ap(vip)].HTTP.Retry = &config.RetryPolicy{On: []string{"reset"}, NumRetries: 1, PerTryTimeout: 200 * time.Millisecond}
		})
		resp, body := get(t, clientTo(p.client), "http://web.default/")
		if resp.StatusCode != 200 || body != "second try" {
			t.Errorf("got %d %q", resp.StatusCode, body)
		}
	})
}

func TestLocalErrors(t *testing.T) {
	t.Run("a cluster without endpoints answers 503 no healthy endpoint", func(t *testing.T) {
		p := httpPair(t, "127.0.0.1:1", func(a, _ *config.Config) {
			a.Clusters[svcName].Endpoints = nil
		})
		resp, _ := get(t, clientTo(p.client), "http://web.default/")
		if want := "no healthy endpoint in " + svcName; resp.StatusCode != 503 || resp.Header.Get("X-Trellis-Error") != want {
			t.Errorf("got %d %q, want 503 %q", resp.StatusCode, resp.Header.Get("X-Trellis-Error"), want)
		}
	})
	t.Run("the request limit overflows with 503", func(t *testing.T) {
		release := make(chan struct{})
		started := make(chan struct{}, 1)
		appAddr := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			started <- struct{}{}
			<-release
		}))
		p := httpPair(t, appAddr, func(a, _ *config.Config) {
			a.Clusters[svcName].Limits.MaxRequests = 1
		})
		c := clientTo(p.client)
		done := make(chan int)
		go func() {
			resp, err := c.Get("http://web.default/slow")
			if err != nil {
				done <- 0
				return
			}
			resp.Body.Close()
			done <- resp.StatusCode
		}()
		<-started
		resp, _ := get(t, c, "http://web.default/")
		close(release)
		if resp.StatusCode != 503 || !strings.HasPrefix(resp.Header.Get("X-Trellis-Error"), "overflow") {
			t.Errorf("got %d %q, want 503 overflow", resp.StatusCode, resp.Header.Get("X-Trellis-Error"))
		}
		if s := <-done; s != 200 {
			t.Errorf("the request in flight got %d", s)
		}
		if st := p.a.proxy.ClusterStats()[0].Breaker.Requests; st.Overflows != 1 {
			t.Errorf("breaker stats %+v, want one overflow", st)
		}
	})
	t.Run("hostile input never crashes the proxy", func(t *testing.T) {
		appAddr := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
		p := httpPair(t, appAddr, nil)
		for _, raw := range []string{
			"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
			"GET / HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-Big: "+strings.Repeat("a", 1000)+"\r\n", 100) + "\r\n",
			"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
			"GET /\x00 HTTP/1.1\r\n\r\n",
			"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x01\x00\x00\x00\x00\x00garbage",
			"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
		} {
			c, err := net.Dial("tcp", p.client)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(500 * time.Millisecond))
			io.WriteString(c, raw)
			io.Copy(io.Discard, c)
			c.Close()
		}
		resp, body := get(t, clientTo(p.client), "http://web.default/")
		if resp.StatusCode != 200 || body != "ok" {
			t.Errorf("after hostile input: %d %q", resp.StatusCode, body)
		}
	})
}
