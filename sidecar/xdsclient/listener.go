package xdsclient

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	httpinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

// Extension types, as Envoy identifies them: by the message of their typed config.
var (
	typeHCM           = fullName(&hcmv3.HttpConnectionManager{})
	typeTCPProxy      = fullName(&tcpproxyv3.TcpProxy{})
	typeNetworkRBAC   = fullName(&rbacnetv3.RBAC{})
	typeHTTPRBAC      = fullName(&rbachttpv3.RBAC{})
	typeRouter        = fullName(&routerv3.Router{})
	typeHTTPInspector = fullName(&httpinspectorv3.HttpInspector{})
	typeTLSInspector  = fullName(&tlsinspectorv3.TlsInspector{})
	typeOriginalDst   = fullName(&originaldstv3.OriginalDst{})
)

// wellKnownNames identify an extension given without a typed config by its name.
var wellKnownNames = map[string]protoreflect.FullName{
	"envoy.filters.network.http_connection_manager": typeHCM,
	"envoy.filters.network.tcp_proxy":               typeTCPProxy,
	"envoy.filters.network.rbac":                    typeNetworkRBAC,
	"envoy.filters.http.rbac":                       typeHTTPRBAC,
	"envoy.filters.http.router":                     typeRouter,
	"envoy.filters.listener.http_inspector":         typeHTTPInspector,
	"envoy.filters.listener.tls_inspector":          typeTLSInspector,
	"envoy.filters.listener.original_dst":           typeOriginalDst,
}

func fullName(m proto.Message) protoreflect.FullName { return m.ProtoReflect().Descriptor().FullName() }

// extensionType is the type of an extension: its typed config's message, or for one
// without a config, what its well-known name stands for ("" when unknown).
func extensionType(name string, tc *anypb.Any) protoreflect.FullName {
	if tc != nil {
		return tc.MessageName()
	}
	return wellKnownNames[name]
}

// unpack reads an extension's typed config into m; a missing one leaves m empty.
func unpack(tc *anypb.Any, m proto.Message) error {
	if tc == nil {
		return nil
	}
	if err := tc.UnmarshalTo(m); err != nil {
		return fmt.Errorf("malformed %s: %w", fullName(m), err)
	}
	return nil
}

// sniffedHTTP are the application protocols http_inspector reports for plaintext HTTP; a
// chain matching exactly these takes the connections that sniff as HTTP.
var sniffedHTTP = []string{"http/1.1", "h2c"}

type listenerKind int

const (
	listenerService listenerKind = iota
	listenerCapture
	listenerInbound
)

// listenerInfo is a parsed listener, before its references are resolved.
type listenerInfo struct {
	kind listenerKind

	// Service listeners.
	addrs       []netip.AddrPort
	out         config.OutboundListener // HTTP is filled in when linking
	hasHTTP     bool
	rds         string        // route configuration from RDS, or
	inlineRoute *config.Route // an inline one

	// The capture listener: the cluster of its default chain.
	passthrough string

	inbound *inboundInfo
}

// clusterRefs are the clusters the listener itself names (not those of its RDS routes).
func (l *listenerInfo) clusterRefs() []string {
	var out []string
	switch l.kind {
	case listenerCapture:
		out = append(out, l.passthrough)
	case listenerService:
		if l.out.TCP != nil {
			for _, b := range l.out.TCP.Backends {
				out = append(out, b.Cluster)
			}
		}
		if l.inlineRoute != nil {
			for _, b := range l.inlineRoute.Backends {
				out = append(out, b.Cluster)
			}
		}
	case listenerInbound:
		for _, p := range l.inbound.ports {
			out = append(out, p.cluster)
		}
		if l.inbound.passthrough.cluster != "" {
			out = append(out, l.inbound.passthrough.cluster)
		}
	}
	return out
}

func parseListener(l *listenerv3.Listener) (*listenerInfo, error) {
	if l.GetApiListener() != nil || l.GetInternalListener() != nil || l.GetUdpListenerConfig() != nil {
		return nil, errors.New("API, internal and UDP listeners are not part of the contract")
	}
	if l.GetFilterChainMatcher() != nil || l.GetFcdsConfig() != nil {
		return nil, errors.New("filter_chain_matcher and FCDS are not supported: chains are chosen by filter_chain_match")
	}
	name := l.GetName()
	switch {
	case name == captureListenerName:
		return parseCaptureListener(l)
	case name == inboundListenerName:
		if d := l.GetTrafficDirection(); d != corev3.TrafficDirection_UNSPECIFIED && d != corev3.TrafficDirection_INBOUND {
			return nil, fmt.Errorf("traffic_direction %s: the inbound listener takes INBOUND traffic", d)
		}
		in, err := parseInbound(l)
		if err != nil {
			return nil, err
		}
		return &listenerInfo{kind: listenerInbound, inbound: in}, nil
	case strings.HasPrefix(name, "outbound|"):
		return parseServiceListener(l)
	}
	return nil, fmt.Errorf("unknown listener: the contract has %q, %q and outbound|<svc>.<ns>|<port>", captureListenerName, inboundListenerName)
}

// parseCaptureListener checks outbound|15001: every redirected connection is handed to the
// listener of its original destination, and the rest passes through untouched.
func parseCaptureListener(l *listenerv3.Listener) (*listenerInfo, error) {
	if !l.GetUseOriginalDst().GetValue() {
		return nil, errors.New("use_original_dst must be true: the capture listener hands each connection to the listener of its original destination")
	}
	if len(l.GetFilterChains()) > 0 || len(l.GetListenerFilters()) > 0 {
		return nil, errors.New("the capture listener has only a default_filter_chain (a tcp_proxy to the passthrough cluster)")
	}
	if l.GetDefaultFilterChain() == nil {
		return nil, errors.New("default_filter_chain is missing: destinations no Service listener takes must pass through")
	}
	fc, err := parseChain(l.GetDefaultFilterChain(), false)
	if err != nil {
		return nil, fmt.Errorf("default_filter_chain: %w", err)
	}
	if fc.tcp == nil || len(fc.tcp.Backends) != 1 || fc.rbac.present {
		return nil, errors.New("default_filter_chain: must be one tcp_proxy to the passthrough cluster")
	}
	return &listenerInfo{kind: listenerCapture, passthrough: fc.tcp.Backends[0].Cluster}, nil
}

// parseServiceListener reads the listener of one Service port: its addresses, and by its
// filter chains whether it is HTTP, HTTP/2, TCP, or sniffed.
func parseServiceListener(l *listenerv3.Listener) (*listenerInfo, error) {
	if d := l.GetTrafficDirection(); d != corev3.TrafficDirection_UNSPECIFIED && d != corev3.TrafficDirection_OUTBOUND {
		return nil, fmt.Errorf("traffic_direction %s: Service listeners take OUTBOUND traffic", d)
	}
	info := &listenerInfo{kind: listenerService, out: config.OutboundListener{Name: l.GetName()}}
	addr, err := socketAddress(l.GetAddress())
	if err != nil {
		return nil, fmt.Errorf("address: %w", err)
	}
	info.addrs = append(info.addrs, addr)
	for i, a := range l.GetAdditionalAddresses() {
		addr, err := socketAddress(a.GetAddress())
		if err != nil {
			return nil, fmt.Errorf("additional_addresses[%d]: %w", i, err)
		}
		info.addrs = append(info.addrs, addr)
	}
	sniff := false
	for i, lf := range l.GetListenerFilters() {
		switch t := extensionType(lf.GetName(), lf.GetTypedConfig()); t {
		case typeHTTPInspector:
			sniff = true
		default:
			return nil, fmt.Errorf("listener_filters[%d] %q (%s): only http_inspector is supported on a Service listener", i, lf.GetName(), t)
		}
	}

	var chains []*chainInfo
	for i, fc := range l.GetFilterChains() {
		c, err := parseChain(fc, false)
		if err != nil {
			return nil, fmt.Errorf("filter_chains[%d] %q: %w", i, fc.GetName(), err)
		}
		chains = append(chains, c)
	}
	var def *chainInfo
	if l.GetDefaultFilterChain() != nil {
		if def, err = parseChain(l.GetDefaultFilterChain(), false); err != nil {
			return nil, fmt.Errorf("default_filter_chain: %w", err)
		}
	}
	for _, c := range append(chains, def) {
		if c == nil {
			continue
		}
		if c.rbac.present {
			return nil, fmt.Errorf("filter chain %q: RBAC is only for inbound chains", c.name)
		}
		if c.hasPort || c.transport != "" || c.tls {
			return nil, fmt.Errorf("filter chain %q: only application_protocols may be matched on a Service listener, and it has no transport socket", c.name)
		}
	}

	switch {
	case len(chains) == 1 && def == nil && len(chains[0].appProtocols) == 0:
		err = info.single(chains[0])
	case len(chains) == 0 && def != nil:
		err = info.single(def)
	case len(chains) == 1 && def != nil:
		err = info.detect(l, chains[0], def, sniff)
	default:
		err = errors.New("filter chains must be one HTTP or TCP chain, or an HTTP chain matching sniffed HTTP and a default TCP chain")
	}
	if err != nil {
		return nil, err
	}
	return info, nil
}

// single is a listener with one chain: a declared protocol.
func (info *listenerInfo) single(c *chainInfo) error {
	if len(c.appProtocols) > 0 {
		return fmt.Errorf("filter chain %q matches application_protocols, but no chain takes the rest", c.name)
	}
	if c.tcp != nil {
		info.out.Protocol = config.ProtocolTCP
		info.out.TCP = c.tcp
		return nil
	}
	info.setHTTP(c.http)
	info.out.Protocol = config.ProtocolHTTP
	if c.http.http2 {
		info.out.Protocol = config.ProtocolHTTP2
	}
	return nil
}

// detect is an undeclared port: sniffed HTTP takes the HTTP chain, anything else (or
// silence past the sniff timeout) the TCP default chain.
func (info *listenerInfo) detect(l *listenerv3.Listener, http, tcp *chainInfo, sniff bool) error {
	if http.http == nil || !sameSet(http.appProtocols, sniffedHTTP) {
		return fmt.Errorf("filter chain %q: with a default chain, the one filter chain must be HTTP matching application_protocols [%s]", http.name, quoteAll(sniffedHTTP))
	}
	if tcp.tcp == nil || len(tcp.appProtocols) > 0 {
		return fmt.Errorf("default_filter_chain %q: must be a tcp_proxy for what does not sniff as HTTP", tcp.name)
	}
	if http.http.http2 {
		return fmt.Errorf("filter chain %q: a sniffed HTTP chain takes HTTP/1.1 and h2c, so its codec_type must be AUTO", http.name)
	}
	if !sniff {
		return errors.New("the HTTP chain matches application_protocols but the listener has no http_inspector to detect them")
	}
	timeout, err := sniffTimeout(l)
	if err != nil {
		return err
	}
	info.out.Protocol = config.ProtocolDetect
	info.out.SniffTimeout = timeout
	info.out.TCP = tcp.tcp
	info.setHTTP(http.http)
	return nil
}

func (info *listenerInfo) setHTTP(h *hcmInfo) {
	info.hasHTTP = true
	info.rds = h.rds
	info.inlineRoute = h.inline
	info.out.StreamIdleTimeout = h.streamIdle
}

// sniffTimeout is how long listener filters may wait for the client's first bytes. A
// client that stays silent must fall through (server-first protocols never stall), so the
// timeout must be on and continue_on_listener_filters_timeout set.
func sniffTimeout(l *listenerv3.Listener) (time.Duration, error) {
	d, err := optDuration("listener_filters_timeout", l.GetListenerFiltersTimeout(), defaultListenerTimeout)
	if err != nil {
		return 0, err
	}
	if d == 0 {
		return 0, errors.New("listener_filters_timeout 0s waits forever for a client that never speaks; server-first protocols would stall")
	}
	if !l.GetContinueOnListenerFiltersTimeout() {
		return 0, errors.New("continue_on_listener_filters_timeout must be true: a silent client is carried as plaintext TCP, never closed")
	}
	return d, nil
}

// chainInfo is a parsed filter chain.
type chainInfo struct {
	name string
	// Match.
	hasPort      bool
	port         uint32
	transport    string // transport_protocol: "", "tls" or "raw_buffer"
	appProtocols []string
	// tls: the chain terminates mTLS (a DownstreamTlsContext transport socket).
	tls bool
	// Exactly one of http and tcp.
	http *hcmInfo
	tcp  *config.TCPRoute
	rbac rbacInfo
}

// rbacInfo is the RBAC filter of a chain.
type rbacInfo struct {
	present bool
	rules   *config.RBAC // nil: no rules, allow all
}

// parseChain reads a filter chain: its match, its transport socket (inbound only) and its
// filters, which are an http_connection_manager, or a tcp_proxy with an optional network
// RBAC filter before it.
func parseChain(fc *listenerv3.FilterChain, inbound bool) (*chainInfo, error) {
	c := &chainInfo{name: fc.GetName()}
	m := fc.GetFilterChainMatch()
	if extra := setFields(m, "destination_port", "transport_protocol", "application_protocols"); len(extra) > 0 {
		return nil, fmt.Errorf("filter_chain_match: %s not supported (chains are matched by destination_port, transport_protocol and application_protocols only)", strings.Join(extra, ", "))
	}
	if p := m.GetDestinationPort(); p != nil {
		if p.GetValue() == 0 || p.GetValue() > math.MaxUint16 {
			return nil, fmt.Errorf("filter_chain_match.destination_port %d is not a valid port", p.GetValue())
		}
		c.hasPort, c.port = true, p.GetValue()
	}
	c.transport = m.GetTransportProtocol()
	c.appProtocols = m.GetApplicationProtocols()
	if ts := fc.GetTransportSocket(); ts != nil {
		if !inbound {
			return nil, errors.New("transport_socket: outbound chains do not terminate TLS")
		}
		if err := parseDownstreamTLS(ts); err != nil {
			return nil, fmt.Errorf("transport_socket: %w", err)
		}
		c.tls = true
	}

	filters := fc.GetFilters()
	if len(filters) == 0 {
		return nil, errors.New("no filters")
	}
	for i, f := range filters {
		last := i == len(filters)-1
		if f.GetConfigDiscovery() != nil {
			return nil, fmt.Errorf("filter %q: config_discovery (ECDS) is not supported", f.GetName())
		}
		var err error
		switch t := extensionType(f.GetName(), f.GetTypedConfig()); {
		case t == typeHCM && last && len(filters) == 1:
			c.http, err = parseHCM(f.GetTypedConfig(), inbound)
		case t == typeTCPProxy && last:
			c.tcp, err = parseTCPProxy(f.GetTypedConfig())
		case t == typeNetworkRBAC && inbound && !last && !c.rbac.present:
			cfg := &rbacnetv3.RBAC{}
			if err = unpack(f.GetTypedConfig(), cfg); err == nil {
				if cfg.GetMatcher() != nil {
					err = errors.New("matcher is not supported; use rules")
				} else {
					c.rbac.present = true
					c.rbac.rules, err = parseRBAC(cfg.GetRules())
				}
			}
		case t == typeHCM || t == typeTCPProxy || t == typeNetworkRBAC:
			err = errors.New("filters must be an http_connection_manager alone, or a tcp_proxy last with at most one network RBAC filter before it (inbound only)")
		default:
			err = fmt.Errorf("unknown filter (%s): the sidecar supports http_connection_manager, tcp_proxy and, inbound, network RBAC", t)
		}
		if err != nil {
			return nil, fmt.Errorf("filter %q: %w", f.GetName(), err)
		}
	}
	if c.http != nil && c.http.rbac.present {
		c.rbac = c.http.rbac
	}
	return c, nil
}

// hcmInfo is a parsed http_connection_manager.
type hcmInfo struct {
	http2      bool // codec HTTP2; else AUTO (HTTP/1.1 and h2c)
	rds        string
	inline     *config.Route
	streamIdle time.Duration
	rbac       rbacInfo
}

func parseHCM(tc *anypb.Any, inbound bool) (*hcmInfo, error) {
	m := &hcmv3.HttpConnectionManager{}
	if err := unpack(tc, m); err != nil {
		return nil, err
	}
	h := &hcmInfo{}
	switch m.GetCodecType() {
	case hcmv3.HttpConnectionManager_AUTO:
	case hcmv3.HttpConnectionManager_HTTP2:
		h.http2 = true
	default:
		return nil, fmt.Errorf("codec_type %s is not supported (AUTO or HTTP2)", m.GetCodecType())
	}
	switch rs := m.GetRouteSpecifier().(type) {
	case *hcmv3.HttpConnectionManager_Rds:
		if rs.Rds.GetConfigSource().GetAds() == nil {
			return nil, errors.New("rds.config_source must be ads: routes come on the ADS stream")
		}
		if h.rds = rs.Rds.GetRouteConfigName(); h.rds == "" {
			return nil, errors.New("rds.route_config_name is empty")
		}
	case *hcmv3.HttpConnectionManager_RouteConfig:
		r, err := parseRouteConfig(rs.RouteConfig)
		if err != nil {
			return nil, fmt.Errorf("route_config %q: %w", rs.RouteConfig.GetName(), err)
		}
		h.inline = r
	default:
		return nil, errors.New("routes must come from rds or an inline route_config")
	}
	if inbound && h.rds != "" {
		return nil, errors.New("inbound routes are inline (route_config), not from RDS")
	}
	filters := m.GetHttpFilters()
	if len(filters) == 0 || extensionType(filters[len(filters)-1].GetName(), filters[len(filters)-1].GetTypedConfig()) != typeRouter {
		return nil, errors.New("http_filters must end with the router")
	}
	for _, f := range filters[:len(filters)-1] {
		if f.GetConfigDiscovery() != nil || f.GetDisabled() {
			return nil, fmt.Errorf("http filter %q: config_discovery and disabled filters are not supported", f.GetName())
		}
		switch t := extensionType(f.GetName(), f.GetTypedConfig()); {
		case t == typeHTTPRBAC && inbound && !h.rbac.present:
			cfg := &rbachttpv3.RBAC{}
			if err := unpack(f.GetTypedConfig(), cfg); err != nil {
				return nil, fmt.Errorf("http filter %q: %w", f.GetName(), err)
			}
			if cfg.GetMatcher() != nil {
				return nil, fmt.Errorf("http filter %q: matcher is not supported; use rules", f.GetName())
			}
			rules, err := parseRBAC(cfg.GetRules())
			if err != nil {
				return nil, fmt.Errorf("http filter %q: %w", f.GetName(), err)
			}
			h.rbac = rbacInfo{present: true, rules: rules}
		default:
			return nil, fmt.Errorf("http filter %q (%s) is not supported: outbound has only the router, inbound one RBAC filter before it", f.GetName(), t)
		}
	}
	var err error
	if h.streamIdle, err = optDuration("stream_idle_timeout", m.GetStreamIdleTimeout(), defaultStreamIdleTimeout); err != nil {
		return nil, err
	}
	return h, nil
}

// parseTCPProxy reads a tcp_proxy: one cluster, or weighted clusters picked per connection.
func parseTCPProxy(tc *anypb.Any) (*config.TCPRoute, error) {
	m := &tcpproxyv3.TcpProxy{}
	if err := unpack(tc, m); err != nil {
		return nil, err
	}
	r := &config.TCPRoute{}
	switch cs := m.GetClusterSpecifier().(type) {
	case *tcpproxyv3.TcpProxy_Cluster:
		if cs.Cluster == "" {
			return nil, errors.New("cluster is empty")
		}
		r.Backends = []config.WeightedCluster{{Cluster: cs.Cluster, Weight: 1}}
	case *tcpproxyv3.TcpProxy_WeightedClusters:
		var sum uint64
		for i, w := range cs.WeightedClusters.GetClusters() {
			if w.GetName() == "" {
				return nil, fmt.Errorf("weighted_clusters.clusters[%d]: no name", i)
			}
			if w.GetWeight() == 0 {
				return nil, fmt.Errorf("weighted_clusters.clusters[%d] %q: weight 0 (weights are at least 1)", i, w.GetName())
			}
			sum += uint64(w.GetWeight())
			r.Backends = append(r.Backends, config.WeightedCluster{Cluster: w.GetName(), Weight: w.GetWeight()})
		}
		if len(r.Backends) == 0 {
			return nil, errors.New("weighted_clusters has no clusters")
		}
		if sum > math.MaxUint32 {
			return nil, errors.New("weighted_clusters: the weights add up to more than 2^32-1")
		}
	default:
		return nil, errors.New("no cluster or weighted_clusters")
	}
	var err error
	if r.IdleTimeout, err = optDuration("idle_timeout", m.GetIdleTimeout(), defaultTCPIdleTimeout); err != nil {
		return nil, err
	}
	return r, nil
}
