package translate

import (
	"maps"
	"slices"
	"strconv"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	httpinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

// inboundSniffTimeout bounds how long the inbound listener waits for a client's first bytes
// to tell TLS from plaintext (and HTTP from the rest). Longer than the outbound one: a peer
// sidecar sends its ClientHello at once, and mistaking a slow one for plaintext in
// PERMISSIVE mode would hand TLS bytes to the app; only plaintext server-first protocols pay
// the wait, once per connection.
const inboundSniffTimeout = time.Second

// Transport protocols as Envoy's tls_inspector reports them.
const (
	transportTLS = "tls"
	transportRaw = "raw_buffer"
)

// loopback is where the app listens, as seen from the sidecar.
const loopback = "127.0.0.1"

// podPort is a port of the proxy's pod that gets its own filter chains.
type podPort struct {
	port  uint32
	proto appProtocol
}

// inbound builds the inbound side of one proxy.
type inbound struct {
	c      collector
	strict bool
	rules  *rbacv3.RBAC // nil: no policy selects the pod
}

// podTargets maps each pod to the ports Services send it traffic on, from the ready
// endpoints that name the pod, with the strongest protocol declared for each port (HTTP/2
// over HTTP over TCP over undeclared: a declaration beats a sniff). Headless Services count:
// their clients reach the pod too.
func podTargets(ix *meshstate.Index) map[meshstate.Key]map[uint32]appProtocol {
	out := map[meshstate.Key]map[uint32]appProtocol{}
	services := ix.State().Services
	for _, key := range slices.SortedFunc(maps.Keys(services), compareKeys) {
		for _, sp := range services[key].Ports {
			proto := classify(sp.Protocol)
			for _, e := range ix.ReadyEndpoints(key, sp.Name) {
				if e.Pod == nil || !validPort(e.Port) {
					continue
				}
				ports := out[e.Pod.Key]
				if ports == nil {
					ports = map[uint32]appProtocol{}
					out[e.Pod.Key] = ports
				}
				if cur, ok := ports[e.Port]; !ok || proto > cur {
					ports[e.Port] = proto
				}
			}
		}
	}
	return out
}

// podPorts is the union of the pod's declared container ports (opaque TCP unless a Service
// says more) and the ports Services target, sorted.
func podPorts(pod *meshstate.Pod, targets map[uint32]appProtocol) []podPort {
	protos := maps.Clone(targets)
	if protos == nil {
		protos = map[uint32]appProtocol{}
	}
	for _, cp := range pod.Ports {
		if _, ok := protos[cp.Port]; !ok && validPort(cp.Port) {
			protos[cp.Port] = protoTCP
		}
	}
	out := make([]podPort, 0, len(protos))
	for _, p := range slices.Sorted(maps.Keys(protos)) {
		out = append(out, podPort{port: p, proto: protos[p]})
	}
	return out
}

// buildInbound makes the inbound listener of a pod and the clusters that reach its app.
func buildInbound(ix *meshstate.Index, pod *meshstate.Pod, targets map[uint32]appProtocol) (*Resources, error) {
	mesh := ix.State().Mesh
	in := &inbound{
		// Any mode but PERMISSIVE (including one this code does not know) is STRICT: the
		// safe reading of a mode is the one that lets no plaintext in.
		strict: mesh.ModeFor(pod.Key.Namespace) != meshstate.MTLSPermissive,
		rules:  rbacRules(mesh, ix.AuthorizationPoliciesFor(pod)),
	}
	ports := podPorts(pod, targets)
	res := &Resources{Listeners: []*listenerv3.Listener{in.listener(ports)}}
	for _, pp := range ports {
		res.Clusters = append(res.Clusters, inboundCluster(&in.c, pp))
	}
	res.Clusters = append(res.Clusters, originalDstCluster(InboundPassthroughCluster))
	res.sortResources()
	return res, in.c.err
}

// listener is the one inbound listener. Filter chains are chosen by the original
// destination port, then by transport (tls or raw_buffer, from tls_inspector), then by
// sniffed application protocol. Ports with no chain of their own fall to the passthrough
// chains, which obey the same mode:
//
//   - STRICT: only TLS chains exist, and the default chain terminates TLS too, so a
//     plaintext connection to any port, listed or not, fails its handshake.
//   - PERMISSIVE: each port also has a plaintext chain; unlisted ports have a TLS catch-all
//     chain (mTLS from a peer whose configuration is ahead of ours) and a plaintext default.
//
// Every chain runs the pod's RBAC when a policy selects it; plaintext callers carry no
// identity, so policies deny them.
func (in *inbound) listener(ports []podPort) *listenerv3.Listener {
	l := &listenerv3.Listener{
		Name:             InboundListenerName,
		Address:          socketAddress("0.0.0.0", InboundPort),
		TrafficDirection: corev3.TrafficDirection_INBOUND,
		ListenerFilters: []*listenerv3.ListenerFilter{
			listenerFilter(&in.c, filterOriginalDst, &originaldstv3.OriginalDst{}),
			listenerFilter(&in.c, filterTLSInspector, &tlsinspectorv3.TlsInspector{}),
			listenerFilter(&in.c, filterHTTPInspector, &httpinspectorv3.HttpInspector{}),
		},
		ListenerFiltersTimeout:           dur(inboundSniffTimeout),
		ContinueOnListenerFiltersTimeout: true,
	}
	for _, pp := range ports {
		l.FilterChains = append(l.FilterChains, in.portChains(pp, transportTLS)...)
		if !in.strict {
			l.FilterChains = append(l.FilterChains, in.portChains(pp, transportRaw)...)
		}
	}
	if in.strict {
		l.DefaultFilterChain = in.passthroughChain(transportTLS)
	} else {
		tlsCatchAll := in.passthroughChain(transportTLS)
		tlsCatchAll.FilterChainMatch = &listenerv3.FilterChainMatch{TransportProtocol: transportTLS}
		l.FilterChains = append(l.FilterChains, tlsCatchAll)
		l.DefaultFilterChain = in.passthroughChain(transportRaw)
	}
	return l
}

// portChains are the chains of one pod port for one transport. Declared HTTP gets a
// connection manager; an undeclared port over plaintext is sniffed into an HTTP and a TCP
// chain. Over mTLS an undeclared port is TCP: tls_inspector reports the client's ALPN, and a
// Trellis client offers none on undeclared ports because it may carry any protocol there.
func (in *inbound) portChains(pp podPort, transport string) []*listenerv3.FilterChain {
	chain := func(suffix string, appProtocols []string, alpn []string, filters ...*listenerv3.Filter) *listenerv3.FilterChain {
		fc := &listenerv3.FilterChain{
			Name: inboundChainName(pp.port, transportLabel(transport)+suffix),
			FilterChainMatch: &listenerv3.FilterChainMatch{
				DestinationPort:      u32(pp.port),
				TransportProtocol:    transport,
				ApplicationProtocols: appProtocols,
			},
			Filters: filters,
		}
		if transport == transportTLS {
			fc.TransportSocket = downstreamTLS(&in.c, alpn)
		}
		return fc
	}
	switch {
	case pp.proto.isHTTP():
		return []*listenerv3.FilterChain{chain("", nil, meshALPN, in.hcm(pp))}
	case pp.proto == protoDetect && transport == transportRaw:
		return []*listenerv3.FilterChain{
			chain("|http", sniffedHTTP, nil, in.hcm(pp)),
			chain("", nil, nil, in.tcpFilters(inboundStatPrefix(pp.port), inboundClusterName(pp.port))...),
		}
	default:
		return []*listenerv3.FilterChain{chain("", nil, nil, in.tcpFilters(inboundStatPrefix(pp.port), inboundClusterName(pp.port))...)}
	}
}

// passthroughChain carries a port nobody declared to the original destination, terminating
// mTLS first on the TLS transport.
func (in *inbound) passthroughChain(transport string) *listenerv3.FilterChain {
	fc := &listenerv3.FilterChain{
		Name:    InboundPassthroughCluster + "|" + transportLabel(transport),
		Filters: in.tcpFilters(InboundPassthroughCluster, InboundPassthroughCluster),
	}
	if transport == transportTLS {
		fc.TransportSocket = downstreamTLS(&in.c, nil)
	}
	return fc
}

// tcpFilters are RBAC (when a policy selects the pod) and a tcp_proxy to the cluster.
func (in *inbound) tcpFilters(statPrefix, cluster string) []*listenerv3.Filter {
	var out []*listenerv3.Filter
	if in.rules != nil {
		out = append(out, networkRBAC(&in.c, statPrefix, in.rules))
	}
	return append(out, tcpProxyFilter(&in.c, statPrefix, cluster, nil, nil))
}

// hcm terminates HTTP for a pod port, checks RBAC per request and forwards to the app. The
// route is inline: it never changes without the listener changing too. No request timeout
// here: the client side owns timeouts and retries.
func (in *inbound) hcm(pp podPort) *listenerv3.Filter {
	name := inboundStatPrefix(pp.port)
	var filters []*hcmv3.HttpFilter
	if in.rules != nil {
		filters = append(filters, httpRBAC(&in.c, in.rules))
	}
	m := &hcmv3.HttpConnectionManager{
		StatPrefix: name,
		CodecType:  codecFor(pp.proto),
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name: name,
			VirtualHosts: []*routev3.VirtualHost{{
				Name:    name,
				Domains: []string{"*"},
				Routes: []*routev3.Route{{
					Name:  "default",
					Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
					Action: &routev3.Route_Route{Route: &routev3.RouteAction{
						ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: inboundClusterName(pp.port)},
						Timeout:          dur(0),
					}},
				}},
			}},
		}},
		HttpFilters:       append(filters, routerFilter(&in.c)),
		StreamIdleTimeout: dur(defaultIdleTimeout),
	}
	return networkFilter(&in.c, filterHCM, m)
}

// inboundCluster reaches the app on loopback. Declared HTTP/2 is spoken as such, declared
// HTTP as HTTP/1.1 (the app may speak nothing else, whatever the peer sidecars multiplexed),
// and an undeclared port keeps the version the client used.
func inboundCluster(c *collector, pp podPort) *clusterv3.Cluster {
	name := inboundClusterName(pp.port)
	cl := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       dur(connectTimeout),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint(loopback, pp.port)}}},
		},
	}
	switch pp.proto {
	case protoHTTP2:
		cl.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptionsID: c.any(explicitHTTP2())}
	case protoHTTP:
		cl.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptionsID: c.any(explicitHTTP1())}
	case protoDetect:
		cl.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptionsID: c.any(upstreamHTTP(protoDetect))}
	}
	return cl
}

func inboundStatPrefix(port uint32) string { return "inbound|" + strconv.FormatUint(uint64(port), 10) }

// transportLabel names a transport in chain names.
func transportLabel(transport string) string {
	if transport == transportTLS {
		return "mtls"
	}
	return "plaintext"
}
