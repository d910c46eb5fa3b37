// Package xdsclient keeps the sidecar's configuration in step with the control plane: it
// holds one ADS stream (Envoy's aggregated discovery service, v3, state of the world),
// converts the Envoy resources it receives into the sidecar's own immutable config.Config,
// and hands every new, complete and valid configuration to the data path.
//
// docs/xds.md is the contract. Convert implements exactly the fields listed there, with the
// meaning given there; a resource that contradicts the contract (a filter the sidecar does
// not know, a reference to a resource that does not exist, a malformed duration) is an error
// naming the resource, which the Client NACKs while it keeps the last good configuration.
// Fields the contract does not list and that cannot change what the sidecar does are
// ignored. Where the contract leaves a value out, the sidecar uses the API's default where
// it has one (stream idle 1h, no request timeout, unlimited connections) and Envoy's
// otherwise (connect timeout 5s, num_retries 1, outlier interval 10s, ejection 30s, 10%).
//
// Mapping choices the data path relies on:
//   - A single-cluster route or tcp_proxy has one backend of weight 1.
//   - An inbound port is ProtocolDetect when its plaintext chains sniff HTTP; over mTLS
//     such a port is TCP (docs/xds.md). Every inbound port, passthrough included, carries
//     the listener's listener_filters_timeout as SniffTimeout.
//   - Cluster.Upstream is UpstreamHTTP1 for a cluster without HttpProtocolOptions (Envoy's
//     default), and Cluster.IdleTimeout is IdleNever for an explicit "0s".
//   - Clusters holds every cluster, the inbound and passthrough ones too.
//
// This package imports nothing from Kubernetes and nothing from the control plane.
package xdsclient

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

// Resource names and defaults of the contract (docs/xds.md).
const (
	captureListenerName = "outbound|15001"
	inboundListenerName = "inbound|15006"

	// Where the contract leaves a value out, the Trellis sidecar uses the API's default
	// (docs/xds.md, "Defaults where the API and Envoy differ"); where the API has none, the
	// Envoy default.
	defaultStreamIdleTimeout = time.Hour        // HCM stream_idle_timeout unset
	defaultTCPIdleTimeout    = time.Hour        // tcp_proxy idle_timeout unset (Envoy's too)
	defaultConnectTimeout    = 5 * time.Second  // Envoy's connect_timeout default
	defaultListenerTimeout   = 15 * time.Second // Envoy's listener_filters_timeout default
	defaultBudgetWindow      = 10 * time.Second // the API's retry budget window
	defaultNumRetries        = 1                // Envoy's num_retries default

	// Envoy's outlier detection defaults, used when a field is left out.
	defaultOutlierInterval      = 10 * time.Second
	defaultBaseEjectionTime     = 30 * time.Second
	defaultMaxEjectionPercent   = 10
	defaultConsecutiveFailures  = 5
	defaultEnforcingConsecutive = 100
)

// IdleNever is the Cluster.IdleTimeout that stands for an explicit "0s" (never close an idle
// upstream connection): config.Cluster reads 0 as the 1h default, so "off" is the longest
// duration there is, which no timer reaches.
const IdleNever = time.Duration(math.MaxInt64)

// ResourceError is a resource that breaks the contract: which one, and what is wrong.
type ResourceError struct {
	TypeURL string // resourcev3.ListenerType, RouteType, ClusterType or EndpointType
	Name    string
	Err     error
}

func (e *ResourceError) Error() string {
	return fmt.Sprintf("%s %q: %v", kindOf(e.TypeURL), e.Name, e.Err)
}

func (e *ResourceError) Unwrap() error { return e.Err }

func kindOf(typeURL string) string {
	switch typeURL {
	case resourcev3.ListenerType:
		return "listener"
	case resourcev3.RouteType:
		return "route configuration"
	case resourcev3.ClusterType:
		return "cluster"
	case resourcev3.EndpointType:
		return "cluster load assignment"
	}
	return typeURL
}

// typeOrder is the order of the types in errors and versions: the order ADS sends them in.
var typeOrder = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}

// Convert turns the Envoy resources of one proxy into its configuration. It is pure: the
// same resources always give an equal Config, and the inputs are not modified. An error
// (errors.Join of *ResourceError, one per offending resource) means the resources break
// the contract; no Config is returned then. Config.Version is left empty for the caller.
func Convert(listeners []*listenerv3.Listener, routes []*routev3.RouteConfiguration, clusters []*clusterv3.Cluster, endpoints []*endpointv3.ClusterLoadAssignment) (*config.Config, error) {
	var errs errorList
	s := &resourceSet{
		listeners: parseAll(&errs, resourcev3.ListenerType, listeners, (*listenerv3.Listener).GetName, parseListener),
		routes:    parseAll(&errs, resourcev3.RouteType, routes, (*routev3.RouteConfiguration).GetName, parseRouteConfig),
		clusters:  parseAll(&errs, resourcev3.ClusterType, clusters, (*clusterv3.Cluster).GetName, parseCluster),
		endpoints: parseAll(&errs, resourcev3.EndpointType, endpoints, (*endpointv3.ClusterLoadAssignment).GetClusterName, parseLoadAssignment),
	}
	if err := errs.join(); err != nil {
		return nil, err
	}
	return s.link()
}

// resourceSet is one parsed version of each resource type, by name.
type resourceSet struct {
	listeners map[string]*listenerInfo
	routes    map[string]*config.Route
	clusters  map[string]*clusterInfo
	endpoints map[string][]endpointInfo
}

// parseAll parses every resource of one type, keyed by name, collecting one error per bad
// resource. Duplicate and empty names are errors: names are how resources refer to each
// other.
func parseAll[M proto.Message, P any](errs *errorList, typeURL string, list []M, name func(M) string, parse func(M) (P, error)) map[string]P {
	out := make(map[string]P, len(list))
	for _, m := range list {
		n := name(m)
		var err error
		switch {
		case isNil(m):
			err = errors.New("empty resource")
		case n == "":
			err = errors.New("has no name")
		default:
			if _, dup := out[n]; dup {
				err = errors.New("sent twice")
				break
			}
			var p P
			if p, err = parse(m); err == nil {
				out[n] = p
			}
		}
		if err != nil {
			errs.add(typeURL, n, err)
		}
	}
	return out
}

func isNil[M proto.Message](m M) bool {
	return !m.ProtoReflect().IsValid()
}

// errorList collects resource errors in a deterministic order.
type errorList []*ResourceError

func (l *errorList) add(typeURL, name string, err error) {
	*l = append(*l, &ResourceError{TypeURL: typeURL, Name: name, Err: err})
}

func (l errorList) join() error {
	if len(l) == 0 {
		return nil
	}
	sorted := slices.Clone(l)
	slices.SortStableFunc(sorted, func(a, b *ResourceError) int {
		return cmp.Or(cmp.Compare(slices.Index(typeOrder, a.TypeURL), slices.Index(typeOrder, b.TypeURL)), cmp.Compare(a.Name, b.Name))
	})
	errs := make([]error, len(sorted))
	for i, e := range sorted {
		errs[i] = e
	}
	return errors.Join(errs...)
}

// resourceErrors lists the *ResourceError in an error returned by Convert or link.
func resourceErrors(err error) []*ResourceError {
	var out []*ResourceError
	var walk func(error)
	walk = func(err error) {
		var re *ResourceError
		switch e := err.(type) {
		case interface{ Unwrap() []error }:
			for _, inner := range e.Unwrap() {
				walk(inner)
			}
		default:
			if errors.As(err, &re) {
				out = append(out, re)
			}
		}
	}
	walk(err)
	return out
}

// link resolves the references between parsed resources and builds the Config. Every
// error names the resource that holds the broken reference.
func (s *resourceSet) link() (*config.Config, error) {
	var errs errorList
	cfg := &config.Config{
		Outbound: map[netip.AddrPort]*config.OutboundListener{},
		Clusters: make(map[string]*config.Cluster, len(s.clusters)),
	}
	for _, name := range slices.Sorted(maps.Keys(s.clusters)) {
		c, err := s.linkCluster(s.clusters[name])
		if err != nil {
			errs.add(resourcev3.ClusterType, name, err)
			continue
		}
		cfg.Clusters[name] = c
	}
	// Routes are checked when a listener uses them: a route configuration nothing refers
	// to (left over from a subscription that changed) does not matter.
	routeErrs := map[string]bool{}
	for _, name := range slices.Sorted(maps.Keys(s.listeners)) {
		l := s.listeners[name]
		var err error
		switch l.kind {
		case listenerCapture:
			err = checkPassthrough(cfg.Clusters, l.passthrough, config.OutboundPassthrough)
		case listenerInbound:
			cfg.Inbound, err = s.linkInbound(l.inbound, cfg.Clusters)
		case listenerService:
			err = s.linkService(cfg, l, &errs, routeErrs)
		}
		if err != nil && !errors.Is(err, errReported) {
			errs.add(resourcev3.ListenerType, name, err)
		}
	}
	if err := errs.join(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// errReported stands for an error already reported on another resource (a listener whose
// route configuration is invalid).
var errReported = errors.New("reported on another resource")

// linkService adds one Service listener under each of its addresses.
func (s *resourceSet) linkService(cfg *config.Config, l *listenerInfo, errs *errorList, routeErrs map[string]bool) error {
	out := l.out // a copy: the parsed listener is shared with later conversions
	if out.TCP != nil {
		if err := checkBackends(cfg.Clusters, out.TCP.Backends); err != nil {
			return fmt.Errorf("tcp_proxy: %w", err)
		}
	}
	if l.hasHTTP {
		route := l.inlineRoute
		if l.rds != "" {
			route = s.routes[l.rds]
			if route == nil {
				return fmt.Errorf("names route configuration %q, which the control plane did not send", l.rds)
			}
		}
		if err := checkBackends(cfg.Clusters, route.Backends); err != nil {
			if l.rds == "" {
				return fmt.Errorf("route_config: %w", err)
			}
			if !routeErrs[l.rds] {
				routeErrs[l.rds] = true
				errs.add(resourcev3.RouteType, l.rds, err)
			}
			return errReported
		}
		out.HTTP = route
	}
	for _, addr := range l.addrs {
		if other, taken := cfg.Outbound[addr]; taken {
			return fmt.Errorf("address %s is also the address of listener %q: a destination must have one listener", addr, other.Name)
		}
	}
	for _, addr := range l.addrs {
		cfg.Outbound[addr] = &out
	}
	return nil
}

// checkBackends reports a backend naming a cluster that does not exist.
func checkBackends(clusters map[string]*config.Cluster, backends []config.WeightedCluster) error {
	for _, b := range backends {
		if clusters[b.Cluster] == nil {
			return fmt.Errorf("names cluster %q, which the control plane did not send (or which is invalid)", b.Cluster)
		}
	}
	return nil
}

// checkPassthrough checks that a passthrough chain forwards to the passthrough cluster the
// data path uses, and that it connects to the original destination.
func checkPassthrough(clusters map[string]*config.Cluster, name, want string) error {
	if name != want {
		return fmt.Errorf("passthrough goes to cluster %q; the contract's passthrough cluster is %q", name, want)
	}
	c := clusters[name]
	if c == nil {
		return fmt.Errorf("names cluster %q, which the control plane did not send (or which is invalid)", name)
	}
	if !c.OriginalDestination {
		return fmt.Errorf("cluster %q must be ORIGINAL_DST: passthrough traffic goes to its original destination", name)
	}
	return nil
}

// missingRef is a reference to a resource the set does not have (yet).
type missingRef struct {
	fromType, from string // the resource that holds the reference
	toType, to     string
}

func (r missingRef) String() string {
	return fmt.Sprintf("%s %q names %s %q", kindOf(r.fromType), r.from, kindOf(r.toType), r.to)
}

// missing lists the references that do not resolve: route configurations the listeners
// name, load assignments the EDS clusters need, clusters the listeners and their routes
// send traffic to. A set without missing references is complete.
func (s *resourceSet) missing() []missingRef {
	var out []missingRef
	for _, name := range slices.Sorted(maps.Keys(s.listeners)) {
		l := s.listeners[name]
		clusterRef := func(c string) {
			if s.clusters[c] == nil {
				out = append(out, missingRef{resourcev3.ListenerType, name, resourcev3.ClusterType, c})
			}
		}
		for _, c := range l.clusterRefs() {
			clusterRef(c)
		}
		if l.rds == "" {
			continue
		}
		route := s.routes[l.rds]
		if route == nil {
			out = append(out, missingRef{resourcev3.ListenerType, name, resourcev3.RouteType, l.rds})
			continue
		}
		for _, b := range route.Backends {
			if s.clusters[b.Cluster] == nil {
				out = append(out, missingRef{resourcev3.RouteType, l.rds, resourcev3.ClusterType, b.Cluster})
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(s.clusters)) {
		if eds := s.clusters[name].eds; eds != "" && !hasKey(s.endpoints, eds) {
			out = append(out, missingRef{resourcev3.ClusterType, name, resourcev3.EndpointType, eds})
		}
	}
	return slices.CompactFunc(out, func(a, b missingRef) bool { return a == b })
}

func hasKey[V any](m map[string]V, k string) bool {
	_, ok := m[k]
	return ok
}

// routeNames are the route configurations the listeners take from RDS, sorted.
func (s *resourceSet) routeNames() []string {
	var out []string
	for _, l := range s.listeners {
		if l.rds != "" {
			out = append(out, l.rds)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// edsNames are the load assignments the EDS clusters take from EDS, sorted.
func (s *resourceSet) edsNames() []string {
	var out []string
	for _, c := range s.clusters {
		if c.eds != "" {
			out = append(out, c.eds)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// duration reads a proto duration; negative or malformed ones are errors.
func duration(field string, d *durationpb.Duration) (time.Duration, error) {
	if err := d.CheckValid(); err != nil {
		return 0, fmt.Errorf("%s: malformed duration: %w", field, err)
	}
	if d.GetSeconds() < 0 || d.GetNanos() < 0 {
		return 0, fmt.Errorf("%s: negative duration %s", field, d.AsDuration())
	}
	if d.GetSeconds() > math.MaxInt64/int64(time.Second)-1 {
		return 0, fmt.Errorf("%s: duration of %d seconds is too long", field, d.GetSeconds())
	}
	return d.AsDuration(), nil
}

// optDuration reads an optional duration: def when unset.
func optDuration(field string, d *durationpb.Duration, def time.Duration) (time.Duration, error) {
	if d == nil {
		return def, nil
	}
	return duration(field, d)
}

// socketAddress reads an IP:port address. Names, named ports, pipes and UDP are not part of
// the contract. IPv4-mapped IPv6 addresses are unmapped, as the kernel reports them.
func socketAddress(a *corev3.Address) (netip.AddrPort, error) {
	sa := a.GetSocketAddress()
	if sa == nil {
		return netip.AddrPort{}, fmt.Errorf("address %v is not an IP socket address", a)
	}
	if sa.GetProtocol() != corev3.SocketAddress_TCP {
		return netip.AddrPort{}, fmt.Errorf("address %s: protocol %s is not supported (TCP only)", sa.GetAddress(), sa.GetProtocol())
	}
	if sa.GetResolverName() != "" {
		return netip.AddrPort{}, fmt.Errorf("address %s: custom resolver %q is not supported (IP addresses only)", sa.GetAddress(), sa.GetResolverName())
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q is not an IP address", sa.GetAddress())
	}
	if ip.Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("address %q: zones are not supported", sa.GetAddress())
	}
	if _, ok := sa.GetPortSpecifier().(*corev3.SocketAddress_PortValue); !ok {
		return netip.AddrPort{}, fmt.Errorf("address %s: named ports are not supported", sa.GetAddress())
	}
	port := sa.GetPortValue()
	if port == 0 || port > math.MaxUint16 {
		return netip.AddrPort{}, fmt.Errorf("address %s: port %d is not a valid port", sa.GetAddress(), port)
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(port)), nil
}

// setFields names the populated fields of m that are not in allowed: where ignoring a field
// would change which traffic a rule applies to, an unknown one is an error.
func setFields(m proto.Message, allowed ...protoreflect.Name) []string {
	var out []string
	if m == nil || !m.ProtoReflect().IsValid() {
		return nil
	}
	m.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if !slices.Contains(allowed, fd.Name()) {
			out = append(out, string(fd.Name()))
		}
		return true
	})
	slices.Sort(out)
	return out
}

// sameSet reports whether two string lists hold the same strings, in any order.
func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

func quoteAll(list []string) string {
	q := make([]string, len(list))
	for i, s := range list {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}
