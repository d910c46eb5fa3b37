package xdsclient

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"reflect"
	"slices"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

// Transport protocols as tls_inspector reports them.
const (
	transportTLS = "tls"
	transportRaw = "raw_buffer"
)

// inboundInfo is the parsed inbound listener, before its clusters are resolved.
type inboundInfo struct {
	ports       map[uint32]*inboundPortInfo
	passthrough inboundPortInfo
}

// inboundPortInfo is one port's handling and the cluster its chains forward to.
type inboundPortInfo struct {
	port    config.InboundPort // Target and Upstream are filled in when linking
	cluster string
}

// parseInbound reads inbound|15006. Chains are grouped by destination_port: each port has
// at most one mTLS chain and, in PERMISSIVE mode, plaintext chains (one, or a sniffed HTTP
// chain and a TCP chain). Chains without a port, and the default chain, are the
// passthrough for ports the pod does not list.
func parseInbound(l *listenerv3.Listener) (*inboundInfo, error) {
	var origDst, tlsInspector, httpInspector bool
	for i, lf := range l.GetListenerFilters() {
		switch t := extensionType(lf.GetName(), lf.GetTypedConfig()); t {
		case typeOriginalDst:
			origDst = true
		case typeTLSInspector:
			tlsInspector = true
		case typeHTTPInspector:
			httpInspector = true
		default:
			return nil, fmt.Errorf("listener_filters[%d] %q (%s) is not supported (original_dst, tls_inspector, http_inspector)", i, lf.GetName(), t)
		}
	}
	var timeout = defaultListenerTimeout
	if len(l.GetListenerFilters()) > 0 {
		var err error
		if timeout, err = sniffTimeout(l); err != nil {
			return nil, err
		}
	}

	byPort := map[uint32][]*chainInfo{}
	var passthrough []*chainInfo
	for i, fc := range l.GetFilterChains() {
		c, err := parseChain(fc, true)
		if err == nil {
			err = checkInboundChain(c, origDst, tlsInspector, httpInspector)
		}
		if err != nil {
			return nil, fmt.Errorf("filter_chains[%d] %q: %w", i, fc.GetName(), err)
		}
		if c.hasPort {
			byPort[c.port] = append(byPort[c.port], c)
		} else {
			passthrough = append(passthrough, c)
		}
	}
	if fc := l.GetDefaultFilterChain(); fc != nil {
		if fc.GetFilterChainMatch() != nil {
			return nil, errors.New("default_filter_chain has a filter_chain_match, which Envoy ignores; leave it out")
		}
		c, err := parseChain(fc, true)
		if err != nil {
			return nil, fmt.Errorf("default_filter_chain %q: %w", fc.GetName(), err)
		}
		passthrough = append(passthrough, c)
	}

	in := &inboundInfo{ports: make(map[uint32]*inboundPortInfo, len(byPort))}
	in.passthrough.port.Protocol = config.ProtocolTCP // accepting nothing unless chains say so
	for _, port := range slices.Sorted(maps.Keys(byPort)) {
		p, err := inboundPort(port, byPort[port], timeout)
		if err != nil {
			return nil, fmt.Errorf("port %d: %w", port, err)
		}
		in.ports[port] = p
	}
	if len(passthrough) > 0 {
		p, err := passthroughPort(passthrough, timeout)
		if err != nil {
			return nil, fmt.Errorf("passthrough chains: %w", err)
		}
		in.passthrough = *p
	}
	return in, nil
}

// checkInboundChain checks that a chain's match can work: the listener filters that
// detect what it matches run, and its transport_protocol agrees with its transport socket.
func checkInboundChain(c *chainInfo, origDst, tlsInspector, httpInspector bool) error {
	switch {
	case c.hasPort && !origDst:
		return errors.New("matches destination_port but the listener has no original_dst filter: every connection would look destined to 15006")
	case c.transport == transportTLS && !c.tls:
		return errors.New("matches transport_protocol tls but has no DownstreamTlsContext (TLS is always terminated inbound)")
	case c.transport == transportRaw && c.tls:
		return errors.New("matches transport_protocol raw_buffer but has a TLS transport socket")
	case c.transport != transportTLS && c.transport != transportRaw:
		return fmt.Errorf("transport_protocol %q: inbound chains match %q or %q", c.transport, transportTLS, transportRaw)
	case c.transport == transportTLS && !tlsInspector:
		return errors.New("matches transport_protocol tls but the listener has no tls_inspector")
	case len(c.appProtocols) > 0 && !httpInspector:
		return errors.New("matches application_protocols but the listener has no http_inspector")
	case len(c.appProtocols) > 0 && (c.tls || c.http == nil || !sameSet(c.appProtocols, sniffedHTTP)):
		return fmt.Errorf("only a plaintext HTTP chain may match application_protocols, and exactly [%s]", quoteAll(sniffedHTTP))
	}
	return nil
}

// chainProtocol is what a chain carries.
func chainProtocol(c *chainInfo) config.Protocol {
	switch {
	case c.tcp != nil:
		return config.ProtocolTCP
	case c.http.http2:
		return config.ProtocolHTTP2
	}
	return config.ProtocolHTTP
}

// chainCluster is the one cluster a chain forwards to.
func chainCluster(c *chainInfo) (string, error) {
	var backends []config.WeightedCluster
	if c.tcp != nil {
		backends = c.tcp.Backends
	} else {
		backends = c.http.inline.Backends
	}
	if len(backends) != 1 {
		return "", fmt.Errorf("chain %q: inbound chains forward to one cluster, not weighted clusters", c.name)
	}
	return backends[0].Cluster, nil
}

// sameForAll checks that every chain agrees on the cluster and the RBAC rules: the data
// path has one of each per port.
func sameForAll(chains []*chainInfo) (string, rbacInfo, error) {
	cluster, err := chainCluster(chains[0])
	if err != nil {
		return "", rbacInfo{}, err
	}
	for _, c := range chains[1:] {
		other, err := chainCluster(c)
		if err != nil {
			return "", rbacInfo{}, err
		}
		if other != cluster {
			return "", rbacInfo{}, fmt.Errorf("chains %q and %q forward to different clusters (%q, %q)", chains[0].name, c.name, cluster, other)
		}
		if !reflect.DeepEqual(c.rbac, chains[0].rbac) {
			return "", rbacInfo{}, fmt.Errorf("chains %q and %q have different RBAC rules; every chain of a port checks the same policy", chains[0].name, c.name)
		}
	}
	return cluster, chains[0].rbac, nil
}

// inboundPort combines the chains of one port.
func inboundPort(port uint32, chains []*chainInfo, timeout time.Duration) (*inboundPortInfo, error) {
	var mtls, plain []*chainInfo
	for _, c := range chains {
		if c.tls {
			mtls = append(mtls, c)
		} else {
			plain = append(plain, c)
		}
	}
	if len(mtls) > 1 {
		return nil, errors.New("more than one mTLS chain")
	}
	p := config.InboundPort{Port: port, AcceptMTLS: len(mtls) == 1, AcceptPlaintext: len(plain) > 0}
	p.SniffTimeout = timeout

	var plainProto, mtlsProto config.Protocol = -1, -1
	switch len(plain) {
	case 0:
	case 1:
		if len(plain[0].appProtocols) > 0 {
			return nil, fmt.Errorf("chain %q takes sniffed HTTP, but no plaintext chain takes the rest", plain[0].name)
		}
		plainProto = chainProtocol(plain[0])
	case 2:
		http, tcp := plain[0], plain[1]
		if http.tcp != nil {
			http, tcp = tcp, http
		}
		if len(http.appProtocols) == 0 || http.http == nil || tcp.tcp == nil || len(tcp.appProtocols) > 0 {
			return nil, errors.New("two plaintext chains must be a sniffed HTTP chain and a TCP chain")
		}
		if http.http.http2 {
			return nil, fmt.Errorf("chain %q takes sniffed HTTP/1.1 and h2c, so its codec_type must be AUTO", http.name)
		}
		plainProto = config.ProtocolDetect
	default:
		return nil, fmt.Errorf("%d plaintext chains; at most a sniffed HTTP chain and a TCP chain", len(plain))
	}
	if len(mtls) == 1 {
		mtlsProto = chainProtocol(mtls[0])
	}
	switch {
	case mtlsProto == -1:
		p.Protocol = plainProto
	case plainProto == -1 || plainProto == mtlsProto:
		p.Protocol = mtlsProto
	case plainProto == config.ProtocolDetect && mtlsProto == config.ProtocolTCP:
		// An undeclared port: plaintext is sniffed, mTLS carried as TCP (docs/xds.md).
		p.Protocol = config.ProtocolDetect
	default:
		return nil, fmt.Errorf("the mTLS chain carries %s but plaintext carries %s", mtlsProto, plainProto)
	}
	cluster, rbac, err := sameForAll(chains)
	if err != nil {
		return nil, err
	}
	p.RBAC = rbac.rules
	return &inboundPortInfo{port: p, cluster: cluster}, nil
}

// passthroughPort combines the chains for ports the pod does not list: TCP to the original
// destination, terminating mTLS first on TLS chains.
func passthroughPort(chains []*chainInfo, timeout time.Duration) (*inboundPortInfo, error) {
	p := config.InboundPort{Protocol: config.ProtocolTCP, SniffTimeout: timeout}
	for _, c := range chains {
		if c.tcp == nil || len(c.appProtocols) > 0 {
			return nil, fmt.Errorf("chain %q: passthrough chains are a tcp_proxy, with no application_protocols", c.name)
		}
		if c.tls {
			p.AcceptMTLS = true
		} else {
			p.AcceptPlaintext = true
		}
	}
	cluster, rbac, err := sameForAll(chains)
	if err != nil {
		return nil, err
	}
	p.RBAC = rbac.rules
	return &inboundPortInfo{port: p, cluster: cluster}, nil
}

// linkInbound resolves each port's cluster: the app's address (a cluster with exactly one
// endpoint) and the HTTP version it speaks; the passthrough goes to the original
// destination.
func (s *resourceSet) linkInbound(in *inboundInfo, clusters map[string]*config.Cluster) (*config.Inbound, error) {
	out := &config.Inbound{Ports: make(map[uint32]*config.InboundPort, len(in.ports)), Passthrough: in.passthrough.port}
	for _, port := range slices.Sorted(maps.Keys(in.ports)) {
		pi := in.ports[port]
		c := clusters[pi.cluster]
		if c == nil {
			return nil, fmt.Errorf("port %d names cluster %q, which the control plane did not send (or which is invalid)", port, pi.cluster)
		}
		if c.OriginalDestination || len(c.Endpoints) != 1 {
			return nil, fmt.Errorf("port %d: cluster %q must have exactly one endpoint, where the app listens (it has %d)", port, pi.cluster, len(c.Endpoints))
		}
		p := pi.port
		p.Target = c.Endpoints[0].Address
		p.Upstream = c.Upstream
		out.Ports[port] = &p
	}
	if in.passthrough.cluster != "" {
		if err := checkPassthrough(clusters, in.passthrough.cluster, config.InboundPassthrough); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// parseRBAC reads RBAC rules. Absent rules allow everyone (nil); rules present with no
// policies deny everyone. Anything the sidecar cannot check exactly is an error, never
// widened or narrowed silently.
func parseRBAC(r *rbacv3.RBAC) (*config.RBAC, error) {
	if r == nil {
		return nil, nil
	}
	if r.GetAction() != rbacv3.RBAC_ALLOW {
		return nil, fmt.Errorf("rbac action %s is not supported (ALLOW only)", r.GetAction())
	}
	out := &config.RBAC{Policies: []config.Policy{}}
	for _, name := range slices.Sorted(maps.Keys(r.GetPolicies())) {
		p, err := parsePolicy(name, r.GetPolicies()[name])
		if err != nil {
			return nil, fmt.Errorf("rbac policy %q: %w", name, err)
		}
		out.Policies = append(out.Policies, p)
	}
	return out, nil
}

func parsePolicy(name string, p *rbacv3.Policy) (config.Policy, error) {
	out := config.Policy{Name: name}
	if p.GetCondition() != nil || p.GetCheckedCondition() != nil {
		return out, errors.New("conditions are not supported")
	}
	if len(p.GetPermissions()) == 0 || len(p.GetPrincipals()) == 0 {
		return out, errors.New("a policy needs permissions and principals")
	}
	anyPort := false
	for i, perm := range p.GetPermissions() {
		switch r := perm.GetRule().(type) {
		case *rbacv3.Permission_Any:
			if !r.Any {
				return out, fmt.Errorf("permissions[%d]: any must be true", i)
			}
			anyPort = true
		case *rbacv3.Permission_DestinationPort:
			if r.DestinationPort == 0 || r.DestinationPort > math.MaxUint16 {
				return out, fmt.Errorf("permissions[%d]: destination_port %d is not a valid port", i, r.DestinationPort)
			}
			if !slices.Contains(out.Ports, r.DestinationPort) {
				out.Ports = append(out.Ports, r.DestinationPort)
			}
		default:
			return out, fmt.Errorf("permissions[%d]: only destination_port and any are supported", i)
		}
	}
	if anyPort {
		out.Ports = nil
	} else {
		slices.Sort(out.Ports)
	}
	for i, pr := range p.GetPrincipals() {
		auth := pr.GetAuthenticated()
		if auth == nil {
			return out, fmt.Errorf("principals[%d]: only authenticated.principal_name is supported", i)
		}
		m := auth.GetPrincipalName()
		if m == nil {
			return out, fmt.Errorf("principals[%d]: authenticated without principal_name (any authenticated caller) is not supported", i)
		}
		if m.GetIgnoreCase() {
			return out, fmt.Errorf("principals[%d]: ignore_case is not supported (SPIFFE IDs are matched exactly)", i)
		}
		switch mp := m.GetMatchPattern().(type) {
		case *matcherv3.StringMatcher_Exact:
			if mp.Exact == "" {
				return out, fmt.Errorf("principals[%d]: empty exact principal", i)
			}
			out.Principals = append(out.Principals, config.Principal{Exact: mp.Exact})
		case *matcherv3.StringMatcher_Prefix:
			if mp.Prefix == "" {
				return out, fmt.Errorf("principals[%d]: empty prefix", i)
			}
			out.Principals = append(out.Principals, config.Principal{Prefix: mp.Prefix})
		default:
			return out, fmt.Errorf("principals[%d]: principal_name must match exact or prefix", i)
		}
	}
	return out, nil
}
