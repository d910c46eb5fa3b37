package xdsclient

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	leastrequestv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/least_request/v3"
	roundrobinv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/round_robin/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

const (
	// p2cEWMATypeURL names Trellis's own load balancer in a TypedStruct (docs/xds.md).
	p2cEWMATypeURL = "type.googleapis.com/trellis.lb.v1.P2CEWMA"
	// httpProtocolOptionsKey is the typed_extension_protocol_options key of HTTP upstreams.
	httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	// udpaTypedStruct is the older TypedStruct, still accepted in load balancing policies.
	udpaTypedStruct = "udpa.type.v1.TypedStruct"
)

// clusterInfo is a parsed cluster, before its endpoints are resolved.
type clusterInfo struct {
	c config.Cluster // Endpoints and per-endpoint MTLS are filled in when linking
	// eds names the ClusterLoadAssignment of an EDS cluster; static holds the endpoints
	// of a STATIC one.
	eds    string
	static []endpointInfo
	// sockets are the transport_socket_matches, then the cluster's own transport socket
	// (an empty match) if it has one.
	sockets []socketMatch
}

// socketMatch is one transport_socket_matches entry: endpoints whose
// envoy.transport_socket_match metadata has every field of match use TLS or plaintext.
type socketMatch struct {
	match *structpb.Struct
	tls   bool
}

func parseCluster(c *clusterv3.Cluster) (*clusterInfo, error) {
	info := &clusterInfo{c: config.Cluster{Name: c.GetName()}}
	var err error
	if info.c.ConnectTimeout, err = optDuration("connect_timeout", c.GetConnectTimeout(), defaultConnectTimeout); err != nil {
		return nil, err
	}
	if info.c.ConnectTimeout == 0 {
		return nil, errors.New("connect_timeout must be above 0")
	}
	if c.GetClusterType() != nil {
		return nil, fmt.Errorf("custom cluster type %q is not supported", c.GetClusterType().GetName())
	}
	switch t := c.GetType(); t {
	case clusterv3.Cluster_EDS:
		eds := c.GetEdsClusterConfig()
		if eds.GetEdsConfig().GetAds() == nil {
			return nil, errors.New("eds_cluster_config.eds_config must be ads: endpoints come on the ADS stream")
		}
		info.eds = eds.GetServiceName()
		if info.eds == "" {
			info.eds = c.GetName()
		}
	case clusterv3.Cluster_STATIC:
		cla := c.GetLoadAssignment()
		if cla == nil {
			return nil, errors.New("a STATIC cluster needs a load_assignment")
		}
		if info.static, err = parseLoadAssignment(cla); err != nil {
			return nil, fmt.Errorf("load_assignment: %w", err)
		}
	case clusterv3.Cluster_ORIGINAL_DST:
		if c.GetLbPolicy() != clusterv3.Cluster_CLUSTER_PROVIDED {
			return nil, fmt.Errorf("an ORIGINAL_DST cluster has lb_policy CLUSTER_PROVIDED, not %s", c.GetLbPolicy())
		}
		info.c.OriginalDestination = true
	default:
		return nil, fmt.Errorf("type %s is not supported (EDS, STATIC or ORIGINAL_DST)", t)
	}
	if !info.c.OriginalDestination {
		if info.c.LoadBalancer, err = loadBalancer(c); err != nil {
			return nil, err
		}
	}
	if info.c.Limits, err = limits(c.GetCircuitBreakers()); err != nil {
		return nil, fmt.Errorf("circuit_breakers: %w", err)
	}
	if info.c.Outlier, err = outlierDetection(c.GetOutlierDetection()); err != nil {
		return nil, fmt.Errorf("outlier_detection: %w", err)
	}
	info.c.Upstream = config.UpstreamHTTP1 // Envoy's default, with no protocol options
	for _, key := range slices.Sorted(maps.Keys(c.GetTypedExtensionProtocolOptions())) {
		if key != httpProtocolOptionsKey {
			return nil, fmt.Errorf("typed_extension_protocol_options[%q] is not supported (only %s)", key, httpProtocolOptionsKey)
		}
		if err := httpOptions(&info.c, c.GetTypedExtensionProtocolOptions()[key]); err != nil {
			return nil, fmt.Errorf("typed_extension_protocol_options[%q]: %w", key, err)
		}
	}
	if err := info.transportSockets(c); err != nil {
		return nil, err
	}
	return info, nil
}

// loadBalancer picks the algorithm: the first policy of load_balancing_policy the sidecar
// supports, as a client must (docs/xds.md, Load balancing), else lb_policy.
func loadBalancer(c *clusterv3.Cluster) (config.LoadBalancer, error) {
	if p := c.GetLoadBalancingPolicy(); p != nil {
		var seen []string
		for _, pol := range p.GetPolicies() {
			tec := pol.GetTypedExtensionConfig()
			if lb, ok := lbPolicy(tec.GetTypedConfig()); ok {
				return lb, nil
			}
			seen = append(seen, tec.GetName())
		}
		return 0, fmt.Errorf("load_balancing_policy: none of [%s] is supported (trellis p2c_ewma, least_request, round_robin)", quoteAll(seen))
	}
	switch c.GetLbPolicy() {
	case clusterv3.Cluster_ROUND_ROBIN:
		return config.LoadBalancerRoundRobin, nil
	case clusterv3.Cluster_LEAST_REQUEST:
		return config.LoadBalancerLeastRequest, nil
	}
	return 0, fmt.Errorf("lb_policy %s is not supported (ROUND_ROBIN, LEAST_REQUEST, or load_balancing_policy)", c.GetLbPolicy())
}

// lbPolicy identifies one load_balancing_policy entry by its typed config.
func lbPolicy(tc *anypb.Any) (config.LoadBalancer, bool) {
	switch tc.MessageName() {
	case fullName(&leastrequestv3.LeastRequest{}):
		return config.LoadBalancerLeastRequest, tc.UnmarshalTo(&leastrequestv3.LeastRequest{}) == nil
	case fullName(&roundrobinv3.RoundRobin{}):
		return config.LoadBalancerRoundRobin, tc.UnmarshalTo(&roundrobinv3.RoundRobin{}) == nil
	case fullName(&xdstypev3.TypedStruct{}), udpaTypedStruct:
		// Both TypedStructs have type_url as field 1 and value as field 2.
		ts := &xdstypev3.TypedStruct{}
		if proto.Unmarshal(tc.GetValue(), ts) == nil && ts.GetTypeUrl() == p2cEWMATypeURL {
			return config.LoadBalancerP2CEWMA, true
		}
	}
	return 0, false
}

// limits reads the DEFAULT priority thresholds; unset limits are unlimited (the contract
// only sets the ones the TrafficPolicy sets), and 0 would admit nothing.
func limits(cb *clusterv3.CircuitBreakers) (config.Limits, error) {
	var l config.Limits
	for _, t := range cb.GetThresholds() {
		if t.GetPriority() != corev3.RoutingPriority_DEFAULT {
			continue
		}
		for _, f := range []struct {
			name string
			v    *wrapperspb.UInt32Value
			dst  *uint32
		}{
			{"max_connections", t.GetMaxConnections(), &l.MaxConnections},
			{"max_pending_requests", t.GetMaxPendingRequests(), &l.MaxPendingRequests},
			{"max_requests", t.GetMaxRequests(), &l.MaxRequests},
		} {
			if f.v == nil {
				continue
			}
			if f.v.GetValue() == 0 {
				return l, fmt.Errorf("%s 0 would admit nothing (the sidecar reads 0 as unlimited; leave it unset)", f.name)
			}
			*f.dst = f.v.GetValue()
		}
		break
	}
	return l, nil
}

// outlierDetection reads consecutive-failure ejection; a check with enforcing 0 is off. The
// checks the sidecar does not have must be off too.
func outlierDetection(od *clusterv3.OutlierDetection) (*config.OutlierDetection, error) {
	if od == nil {
		return nil, nil
	}
	if !od.GetSplitExternalLocalOriginErrors() {
		return nil, errors.New("split_external_local_origin_errors must be true: connect failures are counted apart from 5xx responses")
	}
	for _, f := range []struct {
		name string
		v    *wrapperspb.UInt32Value
		def  uint32
	}{
		{"enforcing_success_rate", od.GetEnforcingSuccessRate(), 100},
		{"enforcing_local_origin_success_rate", od.GetEnforcingLocalOriginSuccessRate(), 100},
		{"enforcing_failure_percentage", od.GetEnforcingFailurePercentage(), 0},
		{"enforcing_failure_percentage_local_origin", od.GetEnforcingFailurePercentageLocalOrigin(), 0},
		{"enforcing_consecutive_gateway_failure", od.GetEnforcingConsecutiveGatewayFailure(), 0},
	} {
		v := f.def
		if f.v != nil {
			v = f.v.GetValue()
		}
		if v != 0 {
			return nil, fmt.Errorf("%s must be 0: the sidecar only ejects on consecutive failures", f.name)
		}
	}
	out := &config.OutlierDetection{}
	check := func(enforcing, count *wrapperspb.UInt32Value) uint32 {
		if enforcing != nil && enforcing.GetValue() == 0 {
			return 0
		}
		if count == nil {
			return defaultConsecutiveFailures
		}
		return count.GetValue()
	}
	out.Consecutive5xx = check(od.GetEnforcingConsecutive_5Xx(), od.GetConsecutive_5Xx())
	out.ConsecutiveConnectFailures = check(od.GetEnforcingConsecutiveLocalOriginFailure(), od.GetConsecutiveLocalOriginFailure())
	var err error
	if out.Interval, err = optDuration("interval", od.GetInterval(), defaultOutlierInterval); err != nil {
		return nil, err
	}
	if out.BaseEjectionTime, err = optDuration("base_ejection_time", od.GetBaseEjectionTime(), defaultBaseEjectionTime); err != nil {
		return nil, err
	}
	if out.Interval == 0 || out.BaseEjectionTime == 0 {
		return nil, errors.New("interval and base_ejection_time must be above 0")
	}
	out.MaxEjectionPercent = defaultMaxEjectionPercent
	if p := od.GetMaxEjectionPercent(); p != nil {
		if p.GetValue() > 100 {
			return nil, fmt.Errorf("max_ejection_percent %d is above 100", p.GetValue())
		}
		out.MaxEjectionPercent = p.GetValue()
	}
	return out, nil
}

// httpOptions reads HttpProtocolOptions: the HTTP version toward the endpoints, the
// requests per connection and the idle timeout of upstream connections.
func httpOptions(c *config.Cluster, a *anypb.Any) error {
	o := &httpv3.HttpProtocolOptions{}
	if err := a.UnmarshalTo(o); err != nil {
		return fmt.Errorf("malformed HttpProtocolOptions: %w", err)
	}
	if len(o.GetHttpFilters()) > 0 {
		return errors.New("upstream http_filters are not supported")
	}
	switch p := o.GetUpstreamProtocolOptions().(type) {
	case *httpv3.HttpProtocolOptions_ExplicitHttpConfig_:
		switch {
		case p.ExplicitHttpConfig.GetHttp2ProtocolOptions() != nil:
			c.Upstream = config.UpstreamHTTP2
		case p.ExplicitHttpConfig.GetHttpProtocolOptions() != nil:
			c.Upstream = config.UpstreamHTTP1
		default:
			return errors.New("explicit_http_config: only HTTP/1.1 and HTTP/2 are supported")
		}
	case *httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig:
		if p.UseDownstreamProtocolConfig.GetHttp3ProtocolOptions() != nil {
			return errors.New("use_downstream_protocol_config: HTTP/3 is not supported")
		}
		c.Upstream = config.UpstreamSameAsDownstream
	case nil:
		c.Upstream = config.UpstreamHTTP1
	default:
		return errors.New("auto_config (ALPN-negotiated upstream protocol) is not supported")
	}
	common := o.GetCommonHttpProtocolOptions()
	c.Limits.MaxRequestsPerConnection = common.GetMaxRequestsPerConnection().GetValue()
	if common.GetIdleTimeout() != nil {
		d, err := duration("common_http_protocol_options.idle_timeout", common.GetIdleTimeout())
		if err != nil {
			return err
		}
		if d == 0 {
			d = IdleNever
		}
		c.IdleTimeout = d
	}
	return nil
}

// transportSockets reads transport_socket_matches (and the cluster's own transport socket,
// the fallback for endpoints no entry matches). All TLS entries must be the same: the
// cluster has one ClientTLS.
func (info *clusterInfo) transportSockets(c *clusterv3.Cluster) error {
	if c.GetTransportSocketMatcher() != nil {
		return errors.New("transport_socket_matcher is not supported; use transport_socket_matches")
	}
	var tlsSeen *config.ClientTLS
	add := func(what string, match *structpb.Struct, ts *corev3.TransportSocket) error {
		tls, err := parseUpstreamSocket(ts)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if tls != nil {
			if tlsSeen != nil && !equalClientTLS(*tlsSeen, *tls) {
				return fmt.Errorf("%s: a second, different TLS configuration (the sidecar has one per cluster)", what)
			}
			tlsSeen = tls
		}
		info.sockets = append(info.sockets, socketMatch{match: match, tls: tls != nil})
		return nil
	}
	for i, m := range c.GetTransportSocketMatches() {
		if err := add(fmt.Sprintf("transport_socket_matches[%d] %q", i, m.GetName()), m.GetMatch(), m.GetTransportSocket()); err != nil {
			return err
		}
	}
	if ts := c.GetTransportSocket(); ts != nil {
		if err := add("transport_socket", nil, ts); err != nil {
			return err
		}
	}
	if tlsSeen != nil {
		info.c.MTLS = *tlsSeen
	}
	return nil
}

func equalClientTLS(a, b config.ClientTLS) bool {
	return a.SNI == b.SNI && slices.Equal(a.ALPN, b.ALPN) && slices.Equal(a.AllowedIdentities, b.AllowedIdentities)
}

// endpointTLS reports whether an endpoint is reached over mTLS: Envoy's rule, the first
// entry whose match fields all equal the endpoint's envoy.transport_socket_match metadata;
// plaintext when none matches.
func (info *clusterInfo) endpointTLS(md *structpb.Struct) bool {
	for _, s := range info.sockets {
		if matches(s.match, md) {
			return s.tls
		}
	}
	return false
}

func matches(match, md *structpb.Struct) bool {
	for k, want := range match.GetFields() {
		got, ok := md.GetFields()[k]
		if !ok || !proto.Equal(want, got) {
			return false
		}
	}
	return true
}

// linkCluster gives a cluster its endpoints: those of its ClusterLoadAssignment (EDS) or
// its own (STATIC), each with the transport its metadata selects.
func (s *resourceSet) linkCluster(info *clusterInfo) (*config.Cluster, error) {
	c := info.c // a copy: the parsed cluster is shared with later conversions
	eps := info.static
	if info.eds != "" {
		var ok bool
		if eps, ok = s.endpoints[info.eds]; !ok {
			return nil, fmt.Errorf("EDS cluster without a ClusterLoadAssignment %q: the control plane sends one for every EDS cluster, even with no endpoints", info.eds)
		}
	}
	if len(eps) > 0 {
		c.Endpoints = make([]config.Endpoint, len(eps))
		for i, e := range eps {
			c.Endpoints[i] = config.Endpoint{Address: e.addr, MTLS: info.endpointTLS(e.socketMatch), Identity: e.identity, Pod: e.pod}
		}
	}
	return &c, nil
}
