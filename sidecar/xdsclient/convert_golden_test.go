package xdsclient

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

// The control plane's own golden inputs, translated by translate and converted: the
// sidecar reads what the control plane really emits. Each case asserts the essentials of
// its input, not a dump.
func TestConvertGoldenInputs(t *testing.T) {
	cases := []struct {
		golden string
		name   string
		check  func(t *testing.T, cfg *config.Config)
	}{
		{"http-service", "an HTTP Service routes to its own cluster, reaches its meshed endpoints over mTLS and is served inbound over mTLS and plaintext", func(t *testing.T, cfg *config.Config) {
			l := listener(t, cfg, "10.96.0.10:80")
			eq(t, "protocol", l.Protocol, config.ProtocolHTTP)
			eq(t, "backends", l.HTTP.Backends, one("outbound|80||web.shop.svc.cluster.local"))
			eq(t, "request timeout (0s: none)", l.HTTP.Timeout, time.Duration(0))
			eq(t, "retries", l.HTTP.Retry, (*config.RetryPolicy)(nil))
			eq(t, "stream idle timeout", l.StreamIdleTimeout, time.Hour)
			c := cluster(t, cfg, "outbound|80||web.shop.svc.cluster.local")
			eq(t, "endpoints", c.Endpoints, []config.Endpoint{
				{Address: ap("10.0.0.1:8080"), MTLS: true, Identity: "spiffe://cluster.local/ns/shop/sa/web", Pod: "shop/web-1"},
				{Address: ap("10.0.0.2:8080"), MTLS: true, Identity: "spiffe://cluster.local/ns/shop/sa/web", Pod: "shop/web-2"},
			})
			eq(t, "client TLS", c.MTLS, config.ClientTLS{
				AllowedIdentities: []string{"spiffe://cluster.local/ns/shop/sa/web"},
				ALPN:              []string{"h2", "http/1.1"},
				SNI:               "outbound|80||web.shop.svc.cluster.local",
			})
			eq(t, "load balancer", c.LoadBalancer, config.LoadBalancerP2CEWMA)
			eq(t, "upstream protocol", c.Upstream, config.UpstreamSameAsDownstream)
			eq(t, "connect timeout", c.ConnectTimeout, 5*time.Second)
			eq(t, "outlier detection", c.Outlier, (*config.OutlierDetection)(nil))
			p := inPort(t, cfg, 8080)
			eq(t, "inbound 8080", *p, config.InboundPort{Port: 8080, Protocol: config.ProtocolHTTP, AcceptMTLS: true, AcceptPlaintext: true,
				Target: ap("127.0.0.1:8080"), Upstream: config.UpstreamHTTP1, SniffTimeout: time.Second})
			eq(t, "outbound passthrough cluster is the original destination", cluster(t, cfg, config.OutboundPassthrough).OriginalDestination, true)
		}},
		{"grpc-service", "a gRPC Service is HTTP/2 end to end, offering h2 over mTLS", func(t *testing.T, cfg *config.Config) {
			eq(t, "protocol", listener(t, cfg, "10.96.0.20:9090").Protocol, config.ProtocolHTTP2)
			c := cluster(t, cfg, "outbound|9090||cart.shop.svc.cluster.local")
			eq(t, "upstream protocol", c.Upstream, config.UpstreamHTTP2)
			eq(t, "ALPN", c.MTLS.ALPN, []string{"h2", "http/1.1"})
			p := inPort(t, cfg, 9090)
			eq(t, "inbound protocol", p.Protocol, config.ProtocolHTTP2)
			eq(t, "inbound upstream", p.Upstream, config.UpstreamHTTP2)
		}},
		{"tcp-service", "a TCP Service is proxied per connection with no ALPN and the default idle timeout", func(t *testing.T, cfg *config.Config) {
			l := listener(t, cfg, "10.96.0.30:5432")
			eq(t, "protocol", l.Protocol, config.ProtocolTCP)
			eq(t, "no HTTP route", l.HTTP, (*config.Route)(nil))
			eq(t, "TCP route", *l.TCP, config.TCPRoute{Backends: one("outbound|5432||postgres.data.svc.cluster.local"), IdleTimeout: time.Hour})
			eq(t, "ALPN", cluster(t, cfg, "outbound|5432||postgres.data.svc.cluster.local").MTLS.ALPN, []string(nil))
			p := inPort(t, cfg, 5432)
			eq(t, "inbound 5432", []any{p.Protocol, p.AcceptMTLS, p.AcceptPlaintext, p.Target}, []any{config.ProtocolTCP, true, true, ap("127.0.0.1:5432")})
		}},
		{"detect-protocol", "an undeclared port is sniffed for 100ms outbound, and inbound plaintext is sniffed while mTLS is TCP", func(t *testing.T, cfg *config.Config) {
			l := listener(t, cfg, "10.96.0.40:7000")
			eq(t, "protocol", l.Protocol, config.ProtocolDetect)
			eq(t, "sniff timeout", l.SniffTimeout, 100*time.Millisecond)
			eq(t, "HTTP backends", l.HTTP.Backends, one("outbound|7000||legacy.shop.svc.cluster.local"))
			eq(t, "TCP backends", l.TCP.Backends, one("outbound|7000||legacy.shop.svc.cluster.local"))
			eq(t, "ALPN", cluster(t, cfg, "outbound|7000||legacy.shop.svc.cluster.local").MTLS.ALPN, []string(nil))
			p := inPort(t, cfg, 7000)
			eq(t, "inbound 7000", []any{p.Protocol, p.AcceptMTLS, p.AcceptPlaintext, p.SniffTimeout, p.Upstream},
				[]any{config.ProtocolDetect, true, true, time.Second, config.UpstreamSameAsDownstream})
		}},
		{"dual-stack", "a dual-stack Service is taken on both cluster IPs by the same listener, with endpoints of both families", func(t *testing.T, cfg *config.Config) {
			v4, v6 := listener(t, cfg, "10.96.0.10:80"), listener(t, cfg, "[fd00:10:96::a]:80")
			if v4 != v6 {
				t.Error("the IPv4 and IPv6 addresses map to different listeners")
			}
			eq(t, "endpoints", addrs(cluster(t, cfg, "outbound|80||web.shop.svc.cluster.local")), []string{"10.0.0.1:8080", "[fd00:10:244::1]:8080"})
		}},
		{"endpoints-not-ready", "endpoints that are not ready are neither reached nor accepted as identities", func(t *testing.T, cfg *config.Config) {
			c := cluster(t, cfg, "outbound|80||web.shop.svc.cluster.local")
			eq(t, "endpoints", addrs(c), []string{"10.0.0.1:8080"})
			eq(t, "allowed identities", c.MTLS.AllowedIdentities, []string{"spiffe://cluster.local/ns/shop/sa/web"})
			eq(t, "inbound ports", slices.Sorted(maps.Keys(cfg.Inbound.Ports)), []uint32{8080})
			eq(t, "inbound 8080 protocol", inPort(t, cfg, 8080).Protocol, config.ProtocolTCP)
		}},
		{"headless-service", "a headless Service has no outbound listener but its pod serves the port as TCP", func(t *testing.T, cfg *config.Config) {
			eq(t, "outbound listeners", len(cfg.Outbound), 0)
			eq(t, "inbound 9092 protocol", inPort(t, cfg, 9092).Protocol, config.ProtocolTCP)
		}},
		{"non-injected-endpoint", "an endpoint without a sidecar is reached in plaintext and carries no identity", func(t *testing.T, cfg *config.Config) {
			c := cluster(t, cfg, "outbound|80||web.shop.svc.cluster.local")
			eq(t, "endpoints", c.Endpoints, []config.Endpoint{
				{Address: ap("10.0.0.1:8080"), MTLS: true, Identity: "spiffe://cluster.local/ns/shop/sa/web", Pod: "shop/web-1"},
				{Address: ap("10.0.0.2:8080"), Pod: "shop/web-2"},
				{Address: ap("10.0.0.9:8080")},
			})
			eq(t, "allowed identities", c.MTLS.AllowedIdentities, []string{"spiffe://cluster.local/ns/shop/sa/web"})
		}},
		{"split-90-10", "a TrafficSplit weighs the HTTP route and the TCP proxy 90/10", func(t *testing.T, cfg *config.Config) {
			want := []config.WeightedCluster{{Cluster: "outbound|80||web-v1.shop.svc.cluster.local", Weight: 90}, {Cluster: "outbound|80||web-v2.shop.svc.cluster.local", Weight: 10}}
			eq(t, "HTTP backends", listener(t, cfg, "10.96.0.10:80").HTTP.Backends, want)
			eq(t, "TCP backends", listener(t, cfg, "10.96.0.10:7000").TCP.Backends, []config.WeightedCluster{
				{Cluster: "outbound|7000||web-v1.shop.svc.cluster.local", Weight: 90}, {Cluster: "outbound|7000||web-v2.shop.svc.cluster.local", Weight: 10}})
			cluster(t, cfg, "outbound|80||web.shop.svc.cluster.local") // the root keeps its cluster
		}},
		{"split-all-backends-missing", "a split with no usable backend leaves the traffic on the root Service", func(t *testing.T, cfg *config.Config) {
			eq(t, "backends", listener(t, cfg, "10.96.0.10:80").HTTP.Backends, one("outbound|80||web.shop.svc.cluster.local"))
		}},
		{"split-dropped-backends", "each port keeps the weights of the backends that have it", func(t *testing.T, cfg *config.Config) {
			eq(t, "port 80", listener(t, cfg, "10.96.0.10:80").HTTP.Backends, []config.WeightedCluster{{Cluster: "outbound|80||web-v1.shop.svc.cluster.local", Weight: 50}})
			eq(t, "port 8080", listener(t, cfg, "10.96.0.10:8080").HTTP.Backends, []config.WeightedCluster{{Cluster: "outbound|8080||web-v3.shop.svc.cluster.local", Weight: 20}})
		}},
		{"split-with-matches", "a split with matches is not applied", func(t *testing.T, cfg *config.Config) {
			eq(t, "backends", listener(t, cfg, "10.96.0.10:80").HTTP.Backends, one("outbound|80||web.shop.svc.cluster.local"))
		}},
		{"split-with-policies", "the root's policy governs the split route while each backend keeps its own cluster settings", func(t *testing.T, cfg *config.Config) {
			r := listener(t, cfg, "10.96.0.10:80").HTTP
			eq(t, "timeout", r.Timeout, 3*time.Second)
			eq(t, "retry", r.Retry, &config.RetryPolicy{
				On:         []string{"connect-failure", "refused-stream", "unavailable", "cancelled", "gateway-error"},
				NumRetries: 1,
				Budget:     &config.RetryBudget{Percent: 20, MinPerSecond: 10, Window: 10 * time.Second},
			})
			v1, v2 := cluster(t, cfg, "outbound|80||web-v1.shop.svc.cluster.local"), cluster(t, cfg, "outbound|80||web-v2.shop.svc.cluster.local")
			eq(t, "web-v1", []any{v1.LoadBalancer, v1.Limits}, []any{config.LoadBalancerRoundRobin, config.Limits{MaxConnections: 10}})
			eq(t, "web-v2", []any{v2.LoadBalancer, v2.Limits}, []any{config.LoadBalancerP2CEWMA, config.Limits{}})
		}},
		{"traffic-policy-all-fields", "every TrafficPolicy field reaches the route, the TCP proxy and the clusters", func(t *testing.T, cfg *config.Config) {
			r := listener(t, cfg, "10.96.0.10:80").HTTP
			idle := 30 * time.Second
			eq(t, "route", *r, config.Route{
				Name:        "outbound|web.shop|80",
				Backends:    one("outbound|80||web.shop.svc.cluster.local"),
				Timeout:     2 * time.Second,
				IdleTimeout: &idle,
				Retry: &config.RetryPolicy{
					On:            []string{"connect-failure", "refused-stream", "5xx", "unavailable"},
					NumRetries:    2,
					PerTryTimeout: 500 * time.Millisecond,
					Budget:        &config.RetryBudget{Percent: 20, MinPerSecond: 10, Window: 10 * time.Second},
				},
			})
			eq(t, "TCP idle timeout", listener(t, cfg, "10.96.0.10:7000").TCP.IdleTimeout, 30*time.Second)
			c := cluster(t, cfg, "outbound|80||web.shop.svc.cluster.local")
			eq(t, "limits", c.Limits, config.Limits{MaxConnections: 100, MaxPendingRequests: 50, MaxRequests: 200, MaxRequestsPerConnection: 1000})
			eq(t, "idle timeout", c.IdleTimeout, 30*time.Second)
			eq(t, "outlier detection", c.Outlier, &config.OutlierDetection{Consecutive5xx: 5, ConsecutiveConnectFailures: 3, Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionPercent: 50})
			eq(t, "load balancer", c.LoadBalancer, config.LoadBalancerLeastRequest)
			tcp := cluster(t, cfg, "outbound|7000||web.shop.svc.cluster.local")
			eq(t, "TCP cluster limits (no HTTP options)", tcp.Limits, config.Limits{MaxConnections: 100, MaxPendingRequests: 50, MaxRequests: 200})
		}},
		{"traffic-policy-oldest-wins", "the oldest policy applies, with its connect-failure check off", func(t *testing.T, cfg *config.Config) {
			eq(t, "timeout", listener(t, cfg, "10.96.0.10:80").HTTP.Timeout, time.Second)
			c := cluster(t, cfg, "outbound|80||web.shop.svc.cluster.local")
			eq(t, "load balancer", c.LoadBalancer, config.LoadBalancerRoundRobin)
			eq(t, "outlier detection", c.Outlier, &config.OutlierDetection{Consecutive5xx: 7, Interval: 5 * time.Second, BaseEjectionTime: 15 * time.Second, MaxEjectionPercent: 10})
		}},
		{"mtls-strict", "STRICT accepts only mTLS, on listed ports and on the passthrough", func(t *testing.T, cfg *config.Config) {
			for _, port := range []uint32{8080, 9000} {
				p := inPort(t, cfg, port)
				eq(t, "port accepts", []bool{p.AcceptMTLS, p.AcceptPlaintext}, []bool{true, false})
			}
			eq(t, "9000 protocol", inPort(t, cfg, 9000).Protocol, config.ProtocolTCP)
			pt := cfg.Inbound.Passthrough
			eq(t, "passthrough", []any{pt.AcceptMTLS, pt.AcceptPlaintext, pt.Protocol, pt.Target}, []any{true, false, config.ProtocolTCP, netip.AddrPort{}})
		}},
		{"mtls-permissive", "PERMISSIVE accepts mTLS and plaintext everywhere, sniffing the undeclared port", func(t *testing.T, cfg *config.Config) {
			eq(t, "8080", []any{inPort(t, cfg, 8080).Protocol, inPort(t, cfg, 8080).AcceptMTLS, inPort(t, cfg, 8080).AcceptPlaintext}, []any{config.ProtocolHTTP, true, true})
			eq(t, "7000", []any{inPort(t, cfg, 7000).Protocol, inPort(t, cfg, 7000).AcceptMTLS, inPort(t, cfg, 7000).AcceptPlaintext}, []any{config.ProtocolDetect, true, true})
			eq(t, "passthrough", []bool{cfg.Inbound.Passthrough.AcceptMTLS, cfg.Inbound.Passthrough.AcceptPlaintext}, []bool{true, true})
			eq(t, "RBAC", inPort(t, cfg, 8080).RBAC, (*config.RBAC)(nil))
		}},
		{"authz-principals", "the pod's policies allow their principals on their ports, on every chain, and nobody else", func(t *testing.T, cfg *config.Config) {
			rbac := inPort(t, cfg, 8080).RBAC
			if rbac == nil {
				t.Fatal("port 8080 has no RBAC")
			}
			eq(t, "same RBAC on 9000", inPort(t, cfg, 9000).RBAC, rbac)
			eq(t, "same RBAC on the passthrough", cfg.Inbound.Passthrough.RBAC, rbac)
			for _, d := range []struct {
				peer  string
				port  uint32
				allow bool
			}{
				{"spiffe://example.org/ns/web/sa/frontend", 8080, true},
				{"spiffe://example.org/ns/web/sa/frontend", 9000, false},
				{"spiffe://example.org/ns/ops/sa/anyone", 8080, true},
				{"spiffe://example.org/ns/batch/sa/reporter", 9000, true},
				{"spiffe://example.org/ns/shop/sa/other", 8080, false},
				{"", 8080, false},
			} {
				if got, _ := rbac.Allow(d.peer, d.port); got != d.allow {
					t.Errorf("Allow(%q, %d) = %v; want %v", d.peer, d.port, got, d.allow)
				}
			}
			if _, pol := rbac.Allow("spiffe://example.org/ns/web/sa/frontend", 8080); pol != "shop/api-callers/rules[0]" {
				t.Errorf("the frontend is allowed by %q; want shop/api-callers/rules[0]", pol)
			}
		}},
		{"authz-no-rules", "a policy without rules denies every caller", func(t *testing.T, cfg *config.Config) {
			rbac := inPort(t, cfg, 8200).RBAC
			if rbac == nil || len(rbac.Policies) != 0 {
				t.Fatalf("RBAC = %+v; want present with no policies", rbac)
			}
			if ok, _ := rbac.Allow("spiffe://cluster.local/ns/shop/sa/vault", 8200); ok {
				t.Error("a caller is allowed")
			}
		}},
	}
	covered := map[string]bool{}
	for _, tc := range cases {
		covered[tc.golden] = true
		t.Run(tc.golden+": "+tc.name, func(t *testing.T) {
			cfg, err := convertResources(mustBuild(t, tc.golden))
			if err != nil {
				t.Fatalf("Convert: %v", err)
			}
			tc.check(t, cfg)
		})
	}
	for _, name := range goldenNames(t) {
		if covered[name] {
			continue
		}
		if strings.HasPrefix(name, "error-") {
			if _, err := build(t, readGolden(t, name)); err == nil {
				t.Errorf("%s: translate gave resources; the case expects an error", name)
			}
			continue
		}
		t.Errorf("golden input %s has no case here: add its essentials", name)
	}
}

func eq[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if diff := cmp.Diff(want, got, cmpAddrs); diff != "" {
		t.Errorf("%s (-want +got):\n%s", what, diff)
	}
}

// cmpAddrs compares addresses by value (their fields are unexported).
var cmpAddrs = cmp.Options{
	cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func one(cluster string) []config.WeightedCluster {
	return []config.WeightedCluster{{Cluster: cluster, Weight: 1}}
}

func listener(t *testing.T, cfg *config.Config, addr string) *config.OutboundListener {
	t.Helper()
	l := cfg.Outbound[ap(addr)]
	if l == nil {
		var have []string
		for a := range cfg.Outbound {
			have = append(have, a.String())
		}
		slices.Sort(have)
		t.Fatalf("no outbound listener for %s (have %v)", addr, have)
	}
	return l
}

func cluster(t *testing.T, cfg *config.Config, name string) *config.Cluster {
	t.Helper()
	c := cfg.Clusters[name]
	if c == nil {
		t.Fatalf("no cluster %q (have %v)", name, slices.Sorted(maps.Keys(cfg.Clusters)))
	}
	return c
}

func inPort(t *testing.T, cfg *config.Config, port uint32) *config.InboundPort {
	t.Helper()
	if cfg.Inbound == nil || cfg.Inbound.Ports[port] == nil {
		t.Fatalf("no inbound port %d", port)
	}
	return cfg.Inbound.Ports[port]
}

func addrs(c *config.Cluster) []string {
	var out []string
	for _, e := range c.Endpoints {
		out = append(out, e.Address.String())
	}
	return out
}
