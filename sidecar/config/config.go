// Package config is the sidecar's own, immutable view of its configuration: what the data
// path reads on every connection and request. The xDS client builds a Config from the Envoy
// resources the control plane sends (docs/xds.md is the contract) and swaps it in
// atomically; nothing modifies a Config after it is built, so readers never lock.
//
// This package imports nothing from Kubernetes and nothing from Envoy: it is the data path's
// vocabulary.
package config

import (
	"net/netip"
	"time"
)

// Config is everything the proxy needs at one version.
type Config struct {
	// Version identifies the xDS versions this Config was built from, for /config_dump.
	Version string

	// Outbound maps a Service VIP:port to the listener that takes it. A destination not in
	// the map is passed through untouched (OutboundPassthrough).
	Outbound map[netip.AddrPort]*OutboundListener
	// Clusters by name (outbound|<port>||<svc>.<ns>.svc.cluster.local).
	Clusters map[string]*Cluster
	// Inbound is how the proxy's own pod receives traffic; nil until the control plane sent it.
	Inbound *Inbound
}

// Protocol is how a listener or port is handled.
type Protocol int

// The protocols.
const (
	// ProtocolDetect sniffs the first bytes: HTTP/1.1 or the HTTP/2 preface is handled as
	// HTTP, anything else (or silence for SniffTimeout) as TCP.
	ProtocolDetect Protocol = iota
	// ProtocolHTTP is HTTP/1.1 or h2c, whichever the client speaks.
	ProtocolHTTP
	// ProtocolHTTP2 is HTTP/2 only (http2, grpc).
	ProtocolHTTP2
	// ProtocolTCP is opaque bytes.
	ProtocolTCP
)

func (p Protocol) String() string {
	return [...]string{"detect", "http", "http2", "tcp"}[p]
}

// OutboundListener handles connections to one Service port.
type OutboundListener struct {
	Name     string // outbound|<svc>.<ns>|<port>
	Protocol Protocol
	// SniffTimeout bounds detection (ProtocolDetect only); silence past it means TCP.
	SniffTimeout time.Duration
	// HTTP routes requests (ProtocolHTTP, ProtocolHTTP2, and detected HTTP).
	HTTP *Route
	// TCP routes connections (ProtocolTCP, and detected non-HTTP).
	TCP *TCPRoute
	// StreamIdleTimeout closes an HTTP stream with no activity; 0 means never.
	StreamIdleTimeout time.Duration
}

// Route is the one route of an HTTP listener.
type Route struct {
	Name string // the RouteConfiguration's name
	// Backends: each request picks one in proportion to Weight. One entry without a split.
	Backends []WeightedCluster
	// Timeout bounds the whole request, retries included; 0 means none.
	Timeout time.Duration
	// IdleTimeout overrides the listener's StreamIdleTimeout when set (>0 or Off).
	IdleTimeout *time.Duration
	// Retry is nil when requests are not retried.
	Retry *RetryPolicy
}

// WeightedCluster is one backend of a route.
type WeightedCluster struct {
	Cluster string
	Weight  uint32
}

// RetryPolicy re-sends failed requests.
type RetryPolicy struct {
	// On lists the conditions, by Envoy's names (connect-failure, refused-stream, reset, 5xx,
	// gateway-error, retriable-4xx, cancelled, deadline-exceeded, internal,
	// resource-exhausted, unavailable).
	On         []string
	NumRetries uint32
	// PerTryTimeout bounds each try; 0 means each may use what is left of Timeout.
	PerTryTimeout time.Duration
	// Budget caps retries; nil means only NumRetries bounds them.
	Budget *RetryBudget
}

// RetryBudget allows retries while retries < Percent/100 × requests + MinPerSecond × window,
// counted over Window.
type RetryBudget struct {
	Percent      float64
	MinPerSecond float64
	Window       time.Duration
}

// TCPRoute sends a connection to one cluster, picked per connection by weight.
type TCPRoute struct {
	Backends []WeightedCluster
	// IdleTimeout closes a connection idle in both directions; 0 means never.
	IdleTimeout time.Duration
}

// LoadBalancer is an endpoint-picking algorithm.
type LoadBalancer int

// The algorithms.
const (
	LoadBalancerP2CEWMA LoadBalancer = iota
	LoadBalancerRoundRobin
	LoadBalancerLeastRequest
)

func (l LoadBalancer) String() string {
	return [...]string{"P2CEWMA", "RoundRobin", "LeastRequest"}[l]
}

// UpstreamProtocol is the HTTP version spoken to a cluster's endpoints.
type UpstreamProtocol int

// The upstream protocols.
const (
	// UpstreamSameAsDownstream speaks the version the client used.
	UpstreamSameAsDownstream UpstreamProtocol = iota
	UpstreamHTTP1
	UpstreamHTTP2
)

// Cluster is a set of endpoints and how to reach them.
type Cluster struct {
	Name string
	// OriginalDestination clusters connect to each connection's original destination
	// (the passthrough clusters); they have no Endpoints.
	OriginalDestination bool
	Endpoints           []Endpoint
	ConnectTimeout      time.Duration
	LoadBalancer        LoadBalancer
	Limits              Limits
	// Outlier is nil when outlier detection is off.
	Outlier *OutlierDetection
	// Upstream is the HTTP version toward the endpoints (HTTP clusters only).
	Upstream UpstreamProtocol
	// IdleTimeout closes idle upstream connections; 0 means the 1h default.
	IdleTimeout time.Duration
	// MTLS is how to reach endpoints whose MTLS flag is set.
	MTLS ClientTLS
}

// Endpoint is one address of a cluster.
type Endpoint struct {
	Address netip.AddrPort
	// MTLS: the endpoint runs a sidecar; reach it over mTLS (else plaintext).
	MTLS bool
	// Identity is the SPIFFE ID its sidecar presents ("" when not meshed); Pod is
	// "<ns>/<name>" when known. Both are for telemetry and /clusters.
	Identity string
	Pod      string
}

// ClientTLS is the upstream mTLS of a cluster.
type ClientTLS struct {
	// AllowedIdentities are the SPIFFE IDs a server may present; empty means the cluster
	// has no meshed endpoint, and then no mTLS endpoint may be reached.
	AllowedIdentities []string
	// ALPN to offer (h2, http/1.1 for HTTP clusters; none for TCP).
	ALPN []string
	// SNI to send.
	SNI string
}

// Limits are the circuit breakers; 0 means unlimited.
type Limits struct {
	MaxConnections           uint32
	MaxPendingRequests       uint32
	MaxRequests              uint32
	MaxRequestsPerConnection uint32
}

// OutlierDetection ejects endpoints after consecutive failures.
type OutlierDetection struct {
	// Consecutive5xx (and gRPC UNAVAILABLE, INTERNAL, UNKNOWN) before ejection; 0 is off.
	Consecutive5xx uint32
	// ConsecutiveConnectFailures before ejection; 0 is off.
	ConsecutiveConnectFailures uint32
	Interval                   time.Duration
	BaseEjectionTime           time.Duration
	// MaxEjectionPercent of the endpoints may be ejected at once; at least one stays.
	MaxEjectionPercent uint32
}

// Inbound is how the pod receives traffic on 15006.
type Inbound struct {
	// Ports the pod serves, by the original destination port.
	Ports map[uint32]*InboundPort
	// Passthrough handles ports not in Ports: forward to the original destination.
	Passthrough InboundPort
}

// InboundPort handles connections to one of the pod's ports.
type InboundPort struct {
	Port     uint32
	Protocol Protocol
	// AcceptMTLS and AcceptPlaintext say which transports are allowed. STRICT allows only
	// mTLS; PERMISSIVE both.
	AcceptMTLS, AcceptPlaintext bool
	// RBAC decides who may call; nil means everyone (no policy selects the pod).
	RBAC *RBAC
	// Target is where the app listens (127.0.0.1:Port); the zero value on Passthrough means
	// the original destination.
	Target netip.AddrPort
	// Upstream is the HTTP version to speak to the app (HTTP ports).
	Upstream UpstreamProtocol
	// SniffTimeout bounds protocol detection on plaintext (ProtocolDetect).
	SniffTimeout time.Duration
}

// RBAC is an ALLOW list: a call is allowed when any policy matches it. A non-nil RBAC with
// no policies denies everything.
type RBAC struct {
	Policies []Policy
}

// Policy allows Principals to reach Ports.
type Policy struct {
	Name string // "<ns>/<name>/rules[<i>]", reported on denials
	// Ports is empty for every port.
	Ports      []uint32
	Principals []Principal
}

// Principal matches the SPIFFE ID of a verified client certificate: Exact, or by Prefix.
type Principal struct {
	Exact, Prefix string
}

// Allow reports whether the caller with SPIFFE ID peer ("" for plaintext callers) may
// reach port, and which policy allowed it.
func (r *RBAC) Allow(peer string, port uint32) (allowed bool, policy string) {
	if r == nil {
		return true, ""
	}
	if peer == "" {
		return false, ""
	}
	for _, p := range r.Policies {
		if len(p.Ports) > 0 && !containsPort(p.Ports, port) {
			continue
		}
		for _, pr := range p.Principals {
			if (pr.Exact != "" && pr.Exact == peer) || (pr.Prefix != "" && len(peer) > len(pr.Prefix) && peer[:len(pr.Prefix)] == pr.Prefix) {
				return true, p.Name
			}
		}
	}
	return false, ""
}

func containsPort(ports []uint32, p uint32) bool {
	for _, x := range ports {
		if x == p {
			return true
		}
	}
	return false
}

// Names of the clusters every configuration has.
const (
	OutboundPassthrough = "outbound|passthrough"
	InboundPassthrough  = "inbound|passthrough"
)
