package translate

import (
	"time"

	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	leastrequestv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/least_request/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

const (
	connectTimeout = 5 * time.Second

	// P2C-EWMA is Trellis's own load balancer, named like an Envoy extension. A stock Envoy
	// does not know it and takes the next policy in the list, least request.
	p2cEWMAName    = "trellis.load_balancing_policies.p2c_ewma"
	p2cEWMATypeURL = "type.googleapis.com/trellis.lb.v1.P2CEWMA"
	leastRequestLB = "envoy.load_balancing_policies.least_request"

	// enforceAlways is the enforcing_* percentage that makes an outlier check eject.
	enforceAlways = 100
)

// cluster is the EDS cluster of a Service port. Its settings come from the TrafficPolicy of
// that Service, so each backend of a split keeps its own limits and load balancer.
func (o *outbound) cluster(key meshstate.Key, sp meshstate.ServicePort, proto appProtocol) *clusterv3.Cluster {
	name := outboundClusterName(key, sp.Port)
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads(), ServiceName: name},
		ConnectTimeout:       dur(connectTimeout),
	}
	var alpn []string
	if proto.isHTTP() {
		alpn = meshALPN
	}
	c.TransportSocketMatches = transportSocketMatches(&o.c, name, o.ix.Identities(key, sp.Name), alpn)
	tp := o.ix.PolicyFor(key)
	var lb meshstate.LoadBalancer
	if tp != nil {
		lb = tp.LoadBalancer
		c.CircuitBreakers = circuitBreakers(tp.ConnectionPool)
		c.OutlierDetection = outlierDetection(tp.OutlierDetection)
	}
	o.loadBalancer(c, lb)
	if proto != protoTCP {
		opts := upstreamHTTP(proto)
		if tp != nil {
			opts.CommonHttpProtocolOptions = commonHTTP(tp.ConnectionPool, tp.Timeouts)
		}
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptionsID: o.c.any(opts)}
	}
	return c
}

// loadBalancer sets the algorithm. P2C-EWMA, the default, is a custom policy with least
// request as the fallback a stock Envoy picks.
func (o *outbound) loadBalancer(c *clusterv3.Cluster, lb meshstate.LoadBalancer) {
	switch lb {
	case meshstate.LoadBalancerRoundRobin:
		c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
	case meshstate.LoadBalancerLeastRequest:
		c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
		c.LbConfig = &clusterv3.Cluster_LeastRequestLbConfig_{LeastRequestLbConfig: &clusterv3.Cluster_LeastRequestLbConfig{ChoiceCount: u32(2)}}
	default:
		c.LoadBalancingPolicy = &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{
			{TypedExtensionConfig: &corev3.TypedExtensionConfig{
				Name:        p2cEWMAName,
				TypedConfig: o.c.any(&xdstypev3.TypedStruct{TypeUrl: p2cEWMATypeURL}),
			}},
			{TypedExtensionConfig: &corev3.TypedExtensionConfig{
				Name:        leastRequestLB,
				TypedConfig: o.c.any(&leastrequestv3.LeastRequest{ChoiceCount: u32(2)}),
			}},
		}}
	}
}

// upstreamHTTP picks the HTTP version toward the endpoints: HTTP/2 when declared; otherwise
// the one the client used, so that h2c (and gRPC on it) survives an "http" or undeclared
// port.
func upstreamHTTP(proto appProtocol) *httpv3.HttpProtocolOptions {
	if proto == protoHTTP2 {
		return explicitHTTP2()
	}
	return &httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
		UseDownstreamProtocolConfig: &httpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
			HttpProtocolOptions:  &corev3.Http1ProtocolOptions{},
			Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
		},
	}}
}

func explicitHTTP2() *httpv3.HttpProtocolOptions {
	return &httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
		ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
		},
	}}
}

func explicitHTTP1() *httpv3.HttpProtocolOptions {
	return &httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
		ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &corev3.Http1ProtocolOptions{}},
		},
	}}
}

// commonHTTP holds the per-connection limits: requests per connection (0 is no limit, so
// unset) and the connection idle timeout (0 turns it off, as in Envoy; unset is Envoy's
// and the API's 1h). Nil when neither is set.
func commonHTTP(pool *meshstate.ConnectionPool, t *meshstate.Timeouts) *corev3.HttpProtocolOptions {
	var o corev3.HttpProtocolOptions
	set := false
	if pool != nil && pool.MaxRequestsPerConnection != nil && *pool.MaxRequestsPerConnection > 0 {
		o.MaxRequestsPerConnection, set = u32(*pool.MaxRequestsPerConnection), true
	}
	if t != nil {
		if d := nonNegative(t.Idle); d != nil {
			o.IdleTimeout, set = dur(*d), true
		}
	}
	if !set {
		return nil
	}
	return &o
}

// circuitBreakers carries the connection pool limits. Unset limits stay unset: the API
// means unlimited, while a stock Envoy applies its defaults of 1024 (docs/xds.md).
func circuitBreakers(pool *meshstate.ConnectionPool) *clusterv3.CircuitBreakers {
	if pool == nil || (pool.MaxConnections == nil && pool.MaxPendingRequests == nil && pool.MaxRequests == nil) {
		return nil
	}
	t := &clusterv3.CircuitBreakers_Thresholds{Priority: corev3.RoutingPriority_DEFAULT}
	if pool.MaxConnections != nil {
		t.MaxConnections = u32(*pool.MaxConnections)
	}
	if pool.MaxPendingRequests != nil {
		t.MaxPendingRequests = u32(*pool.MaxPendingRequests)
	}
	if pool.MaxRequests != nil {
		t.MaxRequests = u32(*pool.MaxRequests)
	}
	return &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{t}}
}

// outlierDetection ejects on consecutive failures only. Connect failures are local-origin
// errors, counted apart from 5xx responses (split_external_local_origin_errors). A check set
// to 0 is off (enforcing 0), and the success-rate check a stock Envoy runs by default is
// turned off because the API does not have it.
func outlierDetection(od *meshstate.OutlierDetection) *clusterv3.OutlierDetection {
	if od == nil {
		return nil
	}
	out := &clusterv3.OutlierDetection{
		SplitExternalLocalOriginErrors:         true,
		EnforcingConsecutive_5Xx:               u32(0),
		EnforcingConsecutiveLocalOriginFailure: u32(0),
		EnforcingSuccessRate:                   u32(0),
		EnforcingLocalOriginSuccessRate:        u32(0),
		MaxEjectionPercent:                     u32(min(od.MaxEjectionPercent, 100)),
	}
	if od.Consecutive5xxErrors > 0 {
		out.Consecutive_5Xx = u32(od.Consecutive5xxErrors)
		out.EnforcingConsecutive_5Xx = u32(enforceAlways)
	}
	if od.ConsecutiveConnectFailures > 0 {
		out.ConsecutiveLocalOriginFailure = u32(od.ConsecutiveConnectFailures)
		out.EnforcingConsecutiveLocalOriginFailure = u32(enforceAlways)
	}
	if od.Interval > 0 {
		out.Interval = dur(od.Interval)
	}
	if od.BaseEjectionTime > 0 {
		out.BaseEjectionTime = dur(od.BaseEjectionTime)
	}
	return out
}

// loadAssignment lists the ready endpoints of a Service port. It exists for every cluster,
// even an empty one, so that a snapshot is always consistent and a client never waits for
// endpoints that will not come.
func (o *outbound) loadAssignment(key meshstate.Key, sp meshstate.ServicePort) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: outboundClusterName(key, sp.Port)}
	var lbs []*endpointv3.LbEndpoint
	for _, e := range o.ix.ReadyEndpoints(key, sp.Name) {
		if !e.Address.IsValid() || !validPort(e.Port) {
			continue
		}
		lb := lbEndpoint(e.Address.WithZone("").String(), e.Port)
		lb.Metadata = o.endpointMetadata(e.Pod)
		lbs = append(lbs, lb)
	}
	if len(lbs) > 0 {
		cla.Endpoints = []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}
	}
	return cla
}

// endpointMetadata tells the client how to reach an endpoint: over mTLS when its pod runs a
// sidecar, and which pod and identity are behind it. The identity is only given for a meshed
// pod, the only kind that holds a certificate for it.
func (o *outbound) endpointMetadata(pod *meshstate.Pod) *corev3.Metadata {
	if pod == nil {
		return nil
	}
	// Built directly rather than through metadata(): there is one per endpoint, 10 000 in
	// a mesh of that size, and structpb.NewStruct's intermediate maps were most of the
	// garbage of a translation.
	trellis := &structpb.Struct{Fields: map[string]*structpb.Value{"pod": structpb.NewStringValue(pod.Key.String())}}
	md := &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{trellisMetadataKey: trellis}}
	if pod.Injected {
		trellis.Fields["identity"] = structpb.NewStringValue(o.ix.State().Mesh.SPIFFEID(pod.Key.Namespace, pod.ServiceAccount))
		md.FilterMetadata[transportSocketMatchKey] = &structpb.Struct{Fields: map[string]*structpb.Value{"mtls": structpb.NewBoolValue(true)}}
	}
	return md
}

func lbEndpoint(ip string, port uint32) *endpointv3.LbEndpoint {
	return &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
		Endpoint: &endpointv3.Endpoint{Address: socketAddress(ip, port)},
	}}
}

// originalDstCluster forwards to the connection's original destination.
func originalDstCluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       dur(connectTimeout),
	}
}
