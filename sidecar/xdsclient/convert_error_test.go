package xdsclient

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	ringhashv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/ring_hash/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/trellis-mesh/trellis/controlplane/translate"
	"github.com/trellis-mesh/trellis/sidecar/config"
)

// Names in the golden inputs the cases below edit.
const (
	webListener = "outbound|web.shop|80"
	webCluster  = "outbound|80||web.shop.svc.cluster.local"
	webTCP      = "outbound|web.shop|7000"
	v1Cluster   = "outbound|80||web-v1.shop.svc.cluster.local"
)

// Every contract violation is an error naming the resource that holds it.
func TestConvertRefusesContractViolations(t *testing.T) {
	for _, tc := range []struct {
		name     string
		golden   string
		edit     func(t *testing.T, r *translate.Resources)
		typeURL  string
		resource string
		contains string
	}{
		{"an unknown network filter is refused", "http-service", func(t *testing.T, r *translate.Resources) {
			l := findListener(t, r, webListener)
			unknown := &listenerv3.Filter{Name: "envoy.filters.network.redis_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, &wrapperspb.StringValue{})}}
			l.FilterChains[0].Filters = append([]*listenerv3.Filter{unknown}, l.FilterChains[0].Filters...)
		}, resourcev3.ListenerType, webListener, "unknown filter"},
		{"weighted clusters naming a missing cluster are refused", "split-90-10", func(t *testing.T, r *translate.Resources) {
			findRoute(t, r, webListener).VirtualHosts[0].Routes[0].GetRoute().GetWeightedClusters().Clusters[1].Name = "outbound|80||ghost.shop.svc.cluster.local"
		}, resourcev3.RouteType, webListener, "ghost"},
		{"a tcp_proxy naming a missing cluster is refused", "split-90-10", func(t *testing.T, r *translate.Resources) {
			editFilter(t, findListener(t, r, webTCP).FilterChains[0].Filters[0], &tcpproxyv3.TcpProxy{}, func(m *tcpproxyv3.TcpProxy) {
				m.GetWeightedClusters().Clusters[0].Name = "outbound|7000||ghost.shop.svc.cluster.local"
			})
		}, resourcev3.ListenerType, webTCP, "ghost"},
		{"a route name no RouteConfiguration has is refused", "http-service", func(t *testing.T, r *translate.Resources) {
			r.Routes = slices.DeleteFunc(r.Routes, func(rc *routev3.RouteConfiguration) bool { return rc.GetName() == webListener })
		}, resourcev3.ListenerType, webListener, "did not send"},
		{"an EDS cluster without its ClusterLoadAssignment is refused", "http-service", func(t *testing.T, r *translate.Resources) {
			r.Endpoints = slices.DeleteFunc(r.Endpoints, func(c *endpointv3.ClusterLoadAssignment) bool { return c.GetClusterName() == webCluster })
		}, resourcev3.ClusterType, webCluster, "ClusterLoadAssignment"},
		{"a malformed duration is refused", "http-service", func(t *testing.T, r *translate.Resources) {
			findCluster(t, r, webCluster).ConnectTimeout = &durationpb.Duration{Seconds: 1, Nanos: 2e9}
		}, resourcev3.ClusterType, webCluster, "malformed duration"},
		{"a negative timeout is refused", "http-service", func(t *testing.T, r *translate.Resources) {
			findRoute(t, r, webListener).VirtualHosts[0].Routes[0].GetRoute().Timeout = durationpb.New(-time.Second)
		}, resourcev3.RouteType, webListener, "negative"},
		{"a retry condition the sidecar does not implement is refused", "traffic-policy-all-fields", func(t *testing.T, r *translate.Resources) {
			findRoute(t, r, webListener).VirtualHosts[0].Routes[0].GetRoute().RetryPolicy.RetryOn = "5xx,retriable-headers"
		}, resourcev3.RouteType, webListener, `"retriable-headers"`},
		{"a weight of 0 is refused", "split-90-10", func(t *testing.T, r *translate.Resources) {
			findRoute(t, r, webListener).VirtualHosts[0].Routes[0].GetRoute().GetWeightedClusters().Clusters[1].Weight = wrapperspb.UInt32(0)
		}, resourcev3.RouteType, webListener, "weight 0"},
		{"a route matching only some paths is refused", "http-service", func(t *testing.T, r *translate.Resources) {
			findRoute(t, r, webListener).VirtualHosts[0].Routes[0].Match.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/api"}
		}, resourcev3.RouteType, webListener, "prefix"},
		{"a malformed retry budget window is refused", "traffic-policy-all-fields", func(t *testing.T, r *translate.Resources) {
			budget := findRoute(t, r, webListener).VirtualHosts[0].Routes[0].Metadata.FilterMetadata["trellis"].Fields["retryBudget"].GetStructValue()
			budget.Fields["window"] = structpb.NewStringValue("ten seconds")
		}, resourcev3.RouteType, webListener, "window"},
		{"an unsupported lb_policy is refused", "traffic-policy-oldest-wins", func(t *testing.T, r *translate.Resources) {
			findCluster(t, r, webCluster).LbPolicy = clusterv3.Cluster_RING_HASH
		}, resourcev3.ClusterType, webCluster, "RING_HASH"},
		{"a load_balancing_policy with no supported policy is refused", "http-service", func(t *testing.T, r *translate.Resources) {
			c := findCluster(t, r, webCluster)
			c.LoadBalancingPolicy.Policies = []*clusterv3.LoadBalancingPolicy_Policy{{TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: "envoy.load_balancing_policies.ring_hash", TypedConfig: mustAny(t, &ringhashv3.RingHash{})}}}
		}, resourcev3.ClusterType, webCluster, "none of"},
		{"success-rate ejection is refused", "traffic-policy-all-fields", func(t *testing.T, r *translate.Resources) {
			findCluster(t, r, webCluster).OutlierDetection.EnforcingSuccessRate = nil
		}, resourcev3.ClusterType, webCluster, "enforcing_success_rate"},
		{"a circuit breaker of 0 is refused", "traffic-policy-all-fields", func(t *testing.T, r *translate.Resources) {
			findCluster(t, r, webCluster).CircuitBreakers.Thresholds[0].MaxRequests = wrapperspb.UInt32(0)
		}, resourcev3.ClusterType, webCluster, "max_requests 0"},
		{"endpoints from another source than ADS are refused", "http-service", func(t *testing.T, r *translate.Resources) {
			//lint:ignore SA1019 a deprecated source is exactly what the client must refuse
			findCluster(t, r, webCluster).EdsClusterConfig.EdsConfig = &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Path{Path: "/etc/eds.yaml"}}
		}, resourcev3.ClusterType, webCluster, "ads"},
		{"an upstream SAN that is not an exact URI is refused", "http-service", func(t *testing.T, r *translate.Resources) {
			editSocket(t, findCluster(t, r, webCluster).TransportSocketMatches[0].TransportSocket, &tlsv3.UpstreamTlsContext{}, func(m *tlsv3.UpstreamTlsContext) {
				m.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().MatchTypedSubjectAltNames[0].SanType = tlsv3.SubjectAltNameMatcher_DNS
			})
		}, resourcev3.ClusterType, webCluster, "URI"},
		{"a certificate other than the sidecar's own is refused", "http-service", func(t *testing.T, r *translate.Resources) {
			editSocket(t, findCluster(t, r, webCluster).TransportSocketMatches[0].TransportSocket, &tlsv3.UpstreamTlsContext{}, func(m *tlsv3.UpstreamTlsContext) {
				m.GetCommonTlsContext().TlsCertificateSdsSecretConfigs[0].Name = "other"
			})
		}, resourcev3.ClusterType, webCluster, `"other"`},
		{"endpoint metadata of the wrong type is refused", "http-service", func(t *testing.T, r *translate.Resources) {
			md := findCLA(t, r, webCluster).Endpoints[0].LbEndpoints[0].Metadata.FilterMetadata["trellis"]
			md.Fields["identity"] = structpb.NewNumberValue(7)
		}, resourcev3.EndpointType, webCluster, "trellis.identity"},
		{"an HTTP/1-only codec is refused", "http-service", func(t *testing.T, r *translate.Resources) {
			editFilter(t, findListener(t, r, webListener).FilterChains[0].Filters[0], &hcmv3.HttpConnectionManager{}, func(m *hcmv3.HttpConnectionManager) {
				m.CodecType = hcmv3.HttpConnectionManager_HTTP1
			})
		}, resourcev3.ListenerType, webListener, "codec_type HTTP1"},
		{"a sniffing listener that would wait forever is refused", "detect-protocol", func(t *testing.T, r *translate.Resources) {
			findListener(t, r, "outbound|legacy.shop|7000").ListenerFiltersTimeout = durationpb.New(0)
		}, resourcev3.ListenerType, "outbound|legacy.shop|7000", "waits forever"},
		{"two listeners with the same address are refused", "split-90-10", func(t *testing.T, r *translate.Resources) {
			findListener(t, r, "outbound|web-v1.shop|80").Address = findListener(t, r, webListener).Address
		}, resourcev3.ListenerType, webListener, "10.96.0.10:80"},
		{"a resource sent twice is refused", "http-service", func(t *testing.T, r *translate.Resources) {
			r.Clusters = append(r.Clusters, proto.Clone(findCluster(t, r, webCluster)).(*clusterv3.Cluster))
		}, resourcev3.ClusterType, webCluster, "sent twice"},
		{"a listener outside the contract is refused", "http-service", func(t *testing.T, r *translate.Resources) {
			r.Listeners = append(r.Listeners, &listenerv3.Listener{Name: "admin|15000"})
		}, resourcev3.ListenerType, "admin|15000", "unknown listener"},
		{"a capture listener that does not hand off by original destination is refused", "http-service", func(t *testing.T, r *translate.Resources) {
			findListener(t, r, "outbound|15001").UseOriginalDst = nil
		}, resourcev3.ListenerType, "outbound|15001", "use_original_dst"},
		{"inbound TLS without client certificates is refused", "http-service", func(t *testing.T, r *translate.Resources) {
			editSocket(t, findListener(t, r, "inbound|15006").FilterChains[0].TransportSocket, &tlsv3.DownstreamTlsContext{}, func(m *tlsv3.DownstreamTlsContext) {
				m.RequireClientCertificate = nil
			})
		}, resourcev3.ListenerType, "inbound|15006", "require_client_certificate"},
		{"an inbound chain matching TLS without terminating it is refused", "http-service", func(t *testing.T, r *translate.Resources) {
			findListener(t, r, "inbound|15006").FilterChains[0].TransportSocket = nil
		}, resourcev3.ListenerType, "inbound|15006", "transport_protocol tls"},
		{"an app cluster with two endpoints is refused", "http-service", func(t *testing.T, r *translate.Resources) {
			loc := findCluster(t, r, "inbound|8080||").LoadAssignment.Endpoints[0]
			loc.LbEndpoints = append(loc.LbEndpoints, proto.Clone(loc.LbEndpoints[0]).(*endpointv3.LbEndpoint))
		}, resourcev3.ListenerType, "inbound|15006", "exactly one endpoint"},
		{"a DENY RBAC is refused", "authz-principals", func(t *testing.T, r *translate.Resources) {
			editRBAC(t, findListener(t, r, "inbound|15006"), func(rules *rbacv3.RBAC) { rules.Action = rbacv3.RBAC_DENY })
		}, resourcev3.ListenerType, "inbound|15006", "DENY"},
		{"an RBAC principal other than an authenticated name is refused", "authz-principals", func(t *testing.T, r *translate.Resources) {
			editRBAC(t, findListener(t, r, "inbound|15006"), func(rules *rbacv3.RBAC) {
				rules.Policies["shop/api-callers/rules[0]"].Principals[0] = &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
			})
		}, resourcev3.ListenerType, "inbound|15006", "authenticated.principal_name"},
		{"chains of one port with different RBAC are refused", "authz-principals", func(t *testing.T, r *translate.Resources) {
			l := findListener(t, r, "inbound|15006")
			for _, fc := range l.FilterChains {
				if fc.GetName() == "inbound|9000|plaintext" {
					editFilter(t, fc.Filters[0], &rbacnetv3.RBAC{}, func(m *rbacnetv3.RBAC) { m.Rules.Policies = nil })
				}
			}
		}, resourcev3.ListenerType, "inbound|15006", "different RBAC"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := mustBuild(t, tc.golden)
			tc.edit(t, res)
			_, err := convertResources(res)
			if err == nil {
				t.Fatal("Convert accepted it")
			}
			var found bool
			for _, re := range resourceErrors(err) {
				if re.TypeURL == tc.typeURL && re.Name == tc.resource {
					found = true
					if !strings.Contains(re.Error(), tc.contains) {
						t.Errorf("error %q does not mention %q", re.Error(), tc.contains)
					}
					if !strings.Contains(re.Error(), `"`+tc.resource+`"`) {
						t.Errorf("error %q does not name %q", re.Error(), tc.resource)
					}
				}
			}
			if !found {
				t.Errorf("no error about %s %q in: %v", kindOf(tc.typeURL), tc.resource, err)
			}
		})
	}
}

// What the contract leaves open, or says in Envoy's own terms, converts as Envoy would.
func TestConvertReadsEnvoySemantics(t *testing.T) {
	for _, tc := range []struct {
		name   string
		golden string
		edit   func(t *testing.T, r *translate.Resources)
		check  func(t *testing.T, cfg *config.Config)
	}{
		{"an RBAC filter without rules allows everyone", "authz-principals", func(t *testing.T, r *translate.Resources) {
			editRBAC(t, findListener(t, r, "inbound|15006"), func(*rbacv3.RBAC) {}, withoutRules)
		}, func(t *testing.T, cfg *config.Config) {
			eq(t, "RBAC", inPort(t, cfg, 8080).RBAC, (*config.RBAC)(nil))
		}},
		{"the first supported load balancing policy wins", "http-service", func(t *testing.T, r *translate.Resources) {
			c := findCluster(t, r, webCluster)
			ring := &clusterv3.LoadBalancingPolicy_Policy{TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: "envoy.load_balancing_policies.ring_hash", TypedConfig: mustAny(t, &ringhashv3.RingHash{})}}
			c.LoadBalancingPolicy.Policies = []*clusterv3.LoadBalancingPolicy_Policy{ring, c.LoadBalancingPolicy.Policies[1], c.LoadBalancingPolicy.Policies[0]}
		}, func(t *testing.T, cfg *config.Config) {
			eq(t, "load balancer", cluster(t, cfg, webCluster).LoadBalancer, config.LoadBalancerLeastRequest)
		}},
		{"an upstream idle timeout of 0s never closes idle connections", "traffic-policy-all-fields", func(t *testing.T, r *translate.Resources) {
			c := findCluster(t, r, webCluster)
			opts := c.TypedExtensionProtocolOptions[httpProtocolOptionsKey]
			editAny(t, opts, &httpOptionsMsg{}, func(m *httpOptionsMsg) { m.CommonHttpProtocolOptions.IdleTimeout = durationpb.New(0) })
		}, func(t *testing.T, cfg *config.Config) {
			eq(t, "idle timeout", cluster(t, cfg, webCluster).IdleTimeout, IdleNever)
		}},
		{"a TCP idle timeout of 0s is never", "traffic-policy-all-fields", func(t *testing.T, r *translate.Resources) {
			editFilter(t, findListener(t, r, webTCP).FilterChains[0].Filters[0], &tcpproxyv3.TcpProxy{}, func(m *tcpproxyv3.TcpProxy) { m.IdleTimeout = durationpb.New(0) })
		}, func(t *testing.T, cfg *config.Config) {
			eq(t, "idle timeout", listener(t, cfg, "10.96.0.10:7000").TCP.IdleTimeout, time.Duration(0))
		}},
		{"an endpoint whose metadata matches no transport socket entry is plaintext", "http-service", func(t *testing.T, r *translate.Resources) {
			c := findCluster(t, r, webCluster)
			c.TransportSocketMatches = c.TransportSocketMatches[:1] // mtls only
			findCLA(t, r, webCluster).Endpoints[0].LbEndpoints[1].Metadata.FilterMetadata["envoy.transport_socket_match"] = &structpb.Struct{}
		}, func(t *testing.T, cfg *config.Config) {
			c := cluster(t, cfg, webCluster)
			eq(t, "mTLS per endpoint", []bool{c.Endpoints[0].MTLS, c.Endpoints[1].MTLS}, []bool{true, false})
		}},
		{"unhealthy endpoints are left out", "http-service", func(t *testing.T, r *translate.Resources) {
			findCLA(t, r, webCluster).Endpoints[0].LbEndpoints[0].HealthStatus = corev3.HealthStatus_UNHEALTHY
		}, func(t *testing.T, cfg *config.Config) {
			eq(t, "endpoints", addrs(cluster(t, cfg, webCluster)), []string{"10.0.0.2:8080"})
		}},
		{"fields the contract does not list and that change nothing are ignored", "http-service", func(t *testing.T, r *translate.Resources) {
			findListener(t, r, webListener).PerConnectionBufferLimitBytes = wrapperspb.UInt32(1 << 20)
			//lint:ignore SA1019 an unused legacy field must be ignored, not refused
			findCluster(t, r, webCluster).DnsRefreshRate = durationpb.New(time.Minute)
			editFilter(t, findListener(t, r, webListener).FilterChains[0].Filters[0], &hcmv3.HttpConnectionManager{}, func(m *hcmv3.HttpConnectionManager) { m.ServerName = "trellis" })
		}, func(t *testing.T, cfg *config.Config) {
			eq(t, "protocol", listener(t, cfg, "10.96.0.10:80").Protocol, config.ProtocolHTTP)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := mustBuild(t, tc.golden)
			tc.edit(t, res)
			cfg, err := convertResources(res)
			if err != nil {
				t.Fatalf("Convert: %v", err)
			}
			tc.check(t, cfg)
		})
	}
}

func TestResourceErrorsAreTyped(t *testing.T) {
	res := mustBuild(t, "http-service")
	c := findCluster(t, res, webCluster)
	c.LoadBalancingPolicy, c.LbPolicy = nil, clusterv3.Cluster_MAGLEV
	findRoute(t, res, webListener).VirtualHosts[0].Routes[0].GetRoute().Timeout = durationpb.New(-time.Second)
	_, err := convertResources(res)
	var re *ResourceError
	if !errors.As(err, &re) {
		t.Fatalf("errors.As(%v, *ResourceError) is false", err)
	}
	var got []string
	for _, e := range resourceErrors(err) {
		got = append(got, kindOf(e.TypeURL)+" "+e.Name)
	}
	eq(t, "errors, clusters first", got, []string{"cluster " + webCluster, "route configuration " + webListener})
}

func findListener(t *testing.T, r *translate.Resources, name string) *listenerv3.Listener {
	t.Helper()
	for _, l := range r.Listeners {
		if l.GetName() == name {
			return l
		}
	}
	t.Fatalf("no listener %q", name)
	return nil
}

func findRoute(t *testing.T, r *translate.Resources, name string) *routev3.RouteConfiguration {
	t.Helper()
	for _, rc := range r.Routes {
		if rc.GetName() == name {
			return rc
		}
	}
	t.Fatalf("no route configuration %q", name)
	return nil
}

func findCluster(t *testing.T, r *translate.Resources, name string) *clusterv3.Cluster {
	t.Helper()
	for _, c := range r.Clusters {
		if c.GetName() == name {
			return c
		}
	}
	t.Fatalf("no cluster %q", name)
	return nil
}

func findCLA(t *testing.T, r *translate.Resources, name string) *endpointv3.ClusterLoadAssignment {
	t.Helper()
	for _, c := range r.Endpoints {
		if c.GetClusterName() == name {
			return c
		}
	}
	t.Fatalf("no cluster load assignment %q", name)
	return nil
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// editAny rewrites a typed config in place.
func editAny[M proto.Message](t *testing.T, a *anypb.Any, m M, fn func(M)) {
	t.Helper()
	if err := a.UnmarshalTo(m); err != nil {
		t.Fatal(err)
	}
	fn(m)
	if err := a.MarshalFrom(m); err != nil {
		t.Fatal(err)
	}
}

func editFilter[M proto.Message](t *testing.T, f *listenerv3.Filter, m M, fn func(M)) {
	t.Helper()
	editAny(t, f.GetTypedConfig(), m, fn)
}

func editSocket[M proto.Message](t *testing.T, ts *corev3.TransportSocket, m M, fn func(M)) {
	t.Helper()
	editAny(t, ts.GetTypedConfig(), m, fn)
}

type rbacOption int

const withoutRules rbacOption = 1

// editRBAC edits the rules of every RBAC filter of a listener, HTTP and network.
func editRBAC(t *testing.T, l *listenerv3.Listener, fn func(*rbacv3.RBAC), opts ...rbacOption) {
	t.Helper()
	drop := slices.Contains(opts, withoutRules)
	for _, fc := range append([]*listenerv3.FilterChain{l.DefaultFilterChain}, l.FilterChains...) {
		for _, f := range fc.GetFilters() {
			switch f.GetTypedConfig().MessageName() {
			case fullName(&rbacnetv3.RBAC{}):
				editFilter(t, f, &rbacnetv3.RBAC{}, func(m *rbacnetv3.RBAC) {
					fn(m.Rules)
					if drop {
						m.Rules = nil
					}
				})
			case fullName(&hcmv3.HttpConnectionManager{}):
				editFilter(t, f, &hcmv3.HttpConnectionManager{}, func(m *hcmv3.HttpConnectionManager) {
					for _, hf := range m.HttpFilters {
						if hf.GetTypedConfig().MessageName() == fullName(&rbachttpv3.RBAC{}) {
							editAny(t, hf.GetTypedConfig(), &rbachttpv3.RBAC{}, func(r *rbachttpv3.RBAC) {
								fn(r.Rules)
								if drop {
									r.Rules = nil
								}
							})
						}
					}
				})
			}
		}
	}
}

// httpOptionsMsg is the upstream HTTP protocol options message.
type httpOptionsMsg = httpv3.HttpProtocolOptions
