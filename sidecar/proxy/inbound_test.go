package proxy

import (
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

func peerApp(t *testing.T) string {
	return app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "peer="+r.Header.Get(peerField))
	}))
}

func TestRBACByIdentity(t *testing.T) {
	m := newMesh(t)
	friend, stranger, b := m.node("friend"), m.node("stranger"), m.node(serverSA)
	b.pod(ap(podAddr))
	port := inboundPort(8080, config.ProtocolHTTP, peerApp(t), true, config.UpstreamHTTP1)
	port.RBAC = &config.RBAC{Policies: []config.Policy{{
		Name: "default/allow-friend/rules[0]", Ports: []uint32{8080},
		Principals: []config.Principal{{Exact: friend.id}},
	}}}
	b.cfg.Store(&config.Config{Inbound: inbound(port)})
	cl := meshedCluster(svcName, true, map[netip.AddrPort]string{ap(podAddr): b.id})
	cfg := &config.Config{
		Outbound: map[netip.AddrPort]*config.OutboundListener{ap(vip): httpListener(listener, config.ProtocolHTTP, wc(svcName, 1))},
		Clusters: map[string]*config.Cluster{svcName: cl},
	}
	friend.cfg.Store(cfg)
	stranger.cfg.Store(cfg)

	resp, body := get(t, clientTo(friend.outbound(ap(vip))), "http://web.default/")
	if resp.StatusCode != 200 || body != "peer="+friend.id {
		t.Errorf("allowed caller: %d %q", resp.StatusCode, body)
	}
	resp, _ = get(t, clientTo(stranger.outbound(ap(vip))), "http://web.default/")
	if resp.StatusCode != http.StatusForbidden || resp.Header.Get("X-Trellis-Error") != "RBAC: access denied" {
		t.Errorf("denied caller: %d %q, want 403 RBAC: access denied", resp.StatusCode, resp.Header.Get("X-Trellis-Error"))
	}

	t.Run("a TCP port checks once per connection and closes on deny", func(t *testing.T) {
		echo := tcpApp(t, func(c net.Conn) { io.Copy(c, c) })
		tcpPort := inboundPort(9000, config.ProtocolTCP, echo, true, 0)
		tcpPort.RBAC = &config.RBAC{Policies: []config.Policy{{Name: "p", Principals: []config.Principal{{Prefix: spiffeFor("fr")}}}}}
		tcpEP := ap("10.0.0.1:9000")
		b.pod(tcpEP)
		b.cfg.Store(&config.Config{Inbound: inbound(port, tcpPort)})
		tcpCl := meshedCluster("outbound|9000||tcp.default.svc.cluster.local", false, map[netip.AddrPort]string{tcpEP: b.id})
		tcpVIP := ap("10.96.0.11:9000")
		cfg := &config.Config{
			Outbound: map[netip.AddrPort]*config.OutboundListener{tcpVIP: tcpListener("tcp", config.ProtocolTCP, wc(tcpCl.Name, 1))},
			Clusters: map[string]*config.Cluster{tcpCl.Name: tcpCl},
		}
		friend.cfg.Store(cfg)
		stranger.cfg.Store(cfg)
		for _, tc := range []struct {
			n     *node
			allow bool
		}{{friend, true}, {stranger, false}} {
			c, err := net.Dial("tcp", tc.n.outbound(tcpVIP))
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(c, "hi")
			b := make([]byte, 2)
			_, err = io.ReadFull(c, b)
			c.Close()
			if tc.allow && (err != nil || string(b) != "hi") {
				t.Errorf("%s: allowed connection failed: %q %v", tc.n.id, b, err)
			}
			if !tc.allow && err == nil {
				t.Errorf("%s: denied connection reached the app", tc.n.id)
			}
		}
	})
}

func TestStrictAndPermissive(t *testing.T) {
	appAddr := peerApp(t)
	for _, tc := range []struct {
		name   string
		strict bool
	}{{"STRICT refuses plaintext", true}, {"PERMISSIVE accepts plaintext", false}} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMesh(t)
			b := m.node(serverSA)
			inAddr := b.pod(ap(podAddr))
			b.cfg.Store(&config.Config{Inbound: inbound(inboundPort(8080, config.ProtocolHTTP, appAddr, tc.strict, config.UpstreamHTTP1))})
			req, _ := http.NewRequest(http.MethodGet, "http://web.default/", nil)
			req.Header.Set(peerField, spiffeFor("forged-admin"))
			resp, err := clientTo(inAddr).Do(req)
			if tc.strict {
				if err == nil {
					resp.Body.Close()
					t.Fatalf("a plaintext request reached the app under STRICT: %d", resp.StatusCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != "peer=" {
				t.Errorf("got %d %q: want 200 and no identity (a forged one stripped)", resp.StatusCode, body)
			}
		})
	}

	t.Run("plaintext from a sidecar to a non-mTLS endpoint works in PERMISSIVE", func(t *testing.T) {
		p := httpPair(t, appAddr, func(a, b *config.Config) {
			cl := a.Clusters[svcName]
			cl.Endpoints[0].MTLS = false
			b.Inbound.Ports[8080].AcceptPlaintext = true
		})
		resp, body := get(t, clientTo(p.client), "http://web.default/")
		if resp.StatusCode != 200 || body != "peer=" {
			t.Errorf("got %d %q", resp.StatusCode, body)
		}
	})

	t.Run("plaintext to a STRICT pod's unlisted port is refused too", func(t *testing.T) {
		m := newMesh(t)
		b := m.node(serverSA)
		inAddr := b.inboundAt(ap("10.0.0.1:7777"))
		in := inbound()
		in.Passthrough.AcceptPlaintext = false
		b.cfg.Store(&config.Config{Inbound: in})
		c, err := net.Dial("tcp", inAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "hello")
		if n, err := c.Read(make([]byte, 10)); err == nil {
			t.Errorf("read %d bytes from a refused connection", n)
		}
	})
}

func TestInboundPassthroughToTheOriginalDestination(t *testing.T) {
	m := newMesh(t)
	b := m.node(serverSA)
	echo := tcpApp(t, func(c net.Conn) { io.Copy(c, c) })
	// The pod's unlisted port: its original destination is where the app really listens.
	inAddr := b.inboundAt(ap(echo))
	b.cfg.Store(&config.Config{Inbound: inbound()})
	c, err := net.Dial("tcp", inAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "plain")
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "plain" {
		t.Fatalf("echo %q %v", got, err)
	}
}

func TestInboundBeforeConfigurationIsRefused(t *testing.T) {
	m := newMesh(t)
	b := m.node(serverSA)
	inAddr := b.pod(ap(podAddr))
	c, err := net.Dial("tcp", inAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if n, err := c.Read(make([]byte, 10)); err == nil {
		t.Errorf("read %d bytes before any configuration", n)
	}
}
