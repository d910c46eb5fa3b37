package translate

import (
	"cmp"
	"maps"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	httpinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

const (
	// outboundSniffTimeout bounds how long an outbound listener on an undeclared port waits
	// for the client's first bytes before treating the connection as TCP. Short, because a
	// server-first protocol (MySQL, SMTP) sends nothing until the server speaks, and a wrong
	// guess only costs the HTTP features: the bytes still reach the same destination.
	outboundSniffTimeout = 100 * time.Millisecond
	// defaultIdleTimeout is the API's default for Timeouts.Idle. Envoy's own default for an
	// HTTP stream is 5 minutes, so the connection managers state it.
	defaultIdleTimeout = time.Hour
)

// Filter names, as Envoy registers them.
const (
	filterHCM           = "envoy.filters.network.http_connection_manager"
	filterTCPProxy      = "envoy.filters.network.tcp_proxy"
	filterHTTPInspector = "envoy.filters.listener.http_inspector"
	filterTLSInspector  = "envoy.filters.listener.tls_inspector"
	filterOriginalDst   = "envoy.filters.listener.original_dst"
)

// outbound builds the resources every proxy shares.
type outbound struct {
	ix *meshstate.Index
	c  collector
}

// buildOutbound makes the outbound side of a State: for every Service port with a cluster
// IP a listener, a route configuration (HTTP or undeclared ports), a cluster and its
// endpoints; plus the virtual listener that receives all redirected outbound traffic.
//
// Services are translated in parallel, in as many contiguous runs as there are CPUs; the runs
// are joined in order and the first error is the one of the earliest run, so the result is
// the same as one pass in order (the Index is read-only).
func buildOutbound(ix *meshstate.Index) (*Resources, error) {
	services := ix.State().Services
	keys := slices.SortedFunc(maps.Keys(services), compareKeys)
	runs := min(runtime.GOMAXPROCS(0), max(1, len(keys)/64))
	parts := make([]*Resources, runs)
	errs := make([]error, runs)
	var wg sync.WaitGroup
	for i := range runs {
		lo, hi := i*len(keys)/runs, (i+1)*len(keys)/runs
		wg.Go(func() {
			o := &outbound{ix: ix}
			part := &Resources{}
			for _, key := range keys[lo:hi] {
				for _, sp := range servedPorts(services[key]) {
					o.servicePort(part, key, services[key], sp)
				}
			}
			parts[i], errs[i] = part, o.c.err
		})
	}
	wg.Wait()
	res := &Resources{}
	for _, part := range parts {
		res.Listeners = append(res.Listeners, part.Listeners...)
		res.Routes = append(res.Routes, part.Routes...)
		res.Clusters = append(res.Clusters, part.Clusters...)
		res.Endpoints = append(res.Endpoints, part.Endpoints...)
	}
	o := &outbound{ix: ix}
	res.Listeners = append(res.Listeners, o.virtualListener())
	res.Clusters = append(res.Clusters, originalDstCluster(OutboundPassthroughCluster))
	res.sortResources()
	return res, cmp.Or(append(errs, o.c.err)...)
}

func compareKeys(a, b meshstate.Key) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

// servedPorts are the ports of a Service that get outbound resources: none for a headless
// Service (no cluster IP to capture), and each port number once, because it names the
// resources (Kubernetes already refuses duplicates and port 0).
func servedPorts(svc *meshstate.Service) []meshstate.ServicePort {
	if svc == nil || len(clusterIPs(svc)) == 0 {
		return nil
	}
	var out []meshstate.ServicePort
	seen := map[uint32]bool{}
	for _, sp := range svc.Ports {
		if validPort(sp.Port) && !seen[sp.Port] {
			seen[sp.Port] = true
			out = append(out, sp)
		}
	}
	return out
}

// servedPort finds the served port of a Service with a given number.
func servedPort(svc *meshstate.Service, port uint32) (meshstate.ServicePort, bool) {
	for _, sp := range servedPorts(svc) {
		if sp.Port == port {
			return sp, true
		}
	}
	return meshstate.ServicePort{}, false
}

// clusterIPs are the valid cluster IPs of a Service, first one first.
func clusterIPs(svc *meshstate.Service) []netip.Addr {
	var out []netip.Addr
	for _, ip := range svc.ClusterIPs {
		if ip.IsValid() {
			out = append(out, ip.WithZone(""))
		}
	}
	return out
}

// servicePort adds the four resources of one Service port.
func (o *outbound) servicePort(res *Resources, key meshstate.Key, svc *meshstate.Service, sp meshstate.ServicePort) {
	proto := classify(sp.Protocol)
	dest := o.destination(key, sp.Port)
	res.Listeners = append(res.Listeners, o.listener(key, svc, sp.Port, proto, dest))
	if proto != protoTCP {
		res.Routes = append(res.Routes, routeConfig(key, sp.Port, dest))
	}
	res.Clusters = append(res.Clusters, o.cluster(key, sp, proto))
	res.Endpoints = append(res.Endpoints, o.loadAssignment(key, sp))
}

// listener captures one Service port. It does not bind: the sidecar receives the connection
// on the capture port and hands it to the listener whose address is the original
// destination (bind_to_port false, as Envoy's use_original_dst hand-off expects).
func (o *outbound) listener(key meshstate.Key, svc *meshstate.Service, port uint32, proto appProtocol, dest destination) *listenerv3.Listener {
	name := outboundName(key, port)
	ips := clusterIPs(svc)
	l := &listenerv3.Listener{
		Name:             name,
		Address:          socketAddress(ips[0].String(), port),
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
		BindToPort:       wrapperspb.Bool(false),
	}
	for _, ip := range ips[1:] {
		l.AdditionalAddresses = append(l.AdditionalAddresses, &listenerv3.AdditionalAddress{Address: socketAddress(ip.String(), port)})
	}
	tcp := &listenerv3.FilterChain{Name: "tcp", Filters: []*listenerv3.Filter{o.tcpProxy(name, dest)}}
	http := &listenerv3.FilterChain{Name: "http", Filters: []*listenerv3.Filter{o.outboundHCM(name, proto)}}
	switch proto {
	case protoTCP:
		l.FilterChains = []*listenerv3.FilterChain{tcp}
	case protoDetect:
		// Sniff: what looks like HTTP gets the HTTP chain, everything else (including a
		// client that stays silent past the sniff window) the TCP one.
		l.ListenerFilters = []*listenerv3.ListenerFilter{listenerFilter(&o.c, filterHTTPInspector, &httpinspectorv3.HttpInspector{})}
		l.ListenerFiltersTimeout = dur(outboundSniffTimeout)
		l.ContinueOnListenerFiltersTimeout = true
		http.FilterChainMatch = &listenerv3.FilterChainMatch{ApplicationProtocols: sniffedHTTP}
		l.FilterChains = []*listenerv3.FilterChain{http}
		l.DefaultFilterChain = tcp
	default:
		l.FilterChains = []*listenerv3.FilterChain{http}
	}
	return l
}

// virtualListener receives every redirected outbound connection. A connection whose
// original destination matches a Service listener's address goes there; any other goes out
// untouched through the passthrough cluster, because the mesh knows nothing better to do.
func (o *outbound) virtualListener() *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:             OutboundListenerName,
		Address:          socketAddress("0.0.0.0", OutboundPort),
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
		// Envoy adds the original_dst listener filter itself for use_original_dst.
		UseOriginalDst: wrapperspb.Bool(true),
		DefaultFilterChain: &listenerv3.FilterChain{
			Name:    "passthrough",
			Filters: []*listenerv3.Filter{tcpProxyFilter(&o.c, OutboundPassthroughCluster, OutboundPassthroughCluster, nil, nil)},
		},
	}
}

// outboundHCM is the HTTP connection manager of an outbound listener; its routes come over
// RDS under the listener's own name.
func (o *outbound) outboundHCM(name string, proto appProtocol) *listenerv3.Filter {
	m := &hcmv3.HttpConnectionManager{
		StatPrefix: name,
		CodecType:  codecFor(proto),
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    ads(),
			RouteConfigName: name,
		}},
		HttpFilters:       []*hcmv3.HttpFilter{routerFilter(&o.c)},
		StreamIdleTimeout: dur(defaultIdleTimeout),
	}
	return networkFilter(&o.c, filterHCM, m)
}

// codecFor is the downstream codec: HTTP/2 only when declared, else AUTO, which also takes
// h2c from clients that speak it on an "http" port.
func codecFor(proto appProtocol) hcmv3.HttpConnectionManager_CodecType {
	if proto == protoHTTP2 {
		return hcmv3.HttpConnectionManager_HTTP2
	}
	return hcmv3.HttpConnectionManager_AUTO
}

// tcpProxy carries a TCP Service port to its cluster, or split over the split's backends.
// The root Service's idle timeout applies, as it does to HTTP routes.
func (o *outbound) tcpProxy(name string, dest destination) *listenerv3.Filter {
	var idle *time.Duration
	if dest.policy != nil && dest.policy.Timeouts != nil {
		idle = nonNegative(dest.policy.Timeouts.Idle)
	}
	return tcpProxyFilter(&o.c, name, dest.cluster, dest.backends, idle)
}

// tcpProxyFilter is a tcp_proxy to one cluster, or to weighted clusters when backends is
// not empty.
func tcpProxyFilter(c *collector, statPrefix, cluster string, backends []weightedCluster, idle *time.Duration) *listenerv3.Filter {
	m := &tcpproxyv3.TcpProxy{StatPrefix: statPrefix}
	if len(backends) == 0 {
		m.ClusterSpecifier = &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster}
	} else {
		wc := &tcpproxyv3.TcpProxy_WeightedCluster{}
		for _, b := range backends {
			wc.Clusters = append(wc.Clusters, &tcpproxyv3.TcpProxy_WeightedCluster_ClusterWeight{Name: b.name, Weight: b.weight})
		}
		m.ClusterSpecifier = &tcpproxyv3.TcpProxy_WeightedClusters{WeightedClusters: wc}
	}
	if idle != nil {
		m.IdleTimeout = dur(*idle)
	}
	return networkFilter(c, filterTCPProxy, m)
}
