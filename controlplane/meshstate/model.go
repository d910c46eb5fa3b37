// Package meshstate is the typed, in-memory model of the mesh that the controllers fill and
// translate reads. It knows nothing of xDS. A State is a consistent, immutable snapshot: the
// Store hands out copies, so readers never lock and never see a half-applied change.
//
// Every map is keyed by Key ("namespace/name"), which marshals as text so that a State reads
// and writes as YAML: translate's golden inputs are States.
package meshstate

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Key names a namespaced object.
type Key struct {
	Namespace string
	Name      string
}

// String is "namespace/name".
func (k Key) String() string { return k.Namespace + "/" + k.Name }

// MarshalText writes "namespace/name".
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText reads "namespace/name".
func (k *Key) UnmarshalText(b []byte) error {
	ns, name, ok := strings.Cut(string(b), "/")
	if !ok || ns == "" || name == "" {
		return fmt.Errorf("key %q: want namespace/name", b)
	}
	*k = Key{Namespace: ns, Name: name}
	return nil
}

// State is the whole mesh as the control plane knows it.
type State struct {
	Mesh                  Mesh                         `json:"mesh"`
	Namespaces            map[string]*Namespace        `json:"namespaces,omitempty"`
	Services              map[Key]*Service             `json:"services,omitempty"`
	EndpointSlices        map[Key]*EndpointSlice       `json:"endpointSlices,omitempty"`
	Pods                  map[Key]*Pod                 `json:"pods,omitempty"`
	Splits                map[Key]*Split               `json:"splits,omitempty"`
	TrafficPolicies       map[Key]*TrafficPolicy       `json:"trafficPolicies,omitempty"`
	AuthorizationPolicies map[Key]*AuthorizationPolicy `json:"authorizationPolicies,omitempty"`
}

// MTLSMode is what a workload accepts inbound.
type MTLSMode string

// The mTLS modes.
const (
	MTLSPermissive MTLSMode = "PERMISSIVE"
	MTLSStrict     MTLSMode = "STRICT"
)

// DefaultTrustDomain is used when no MeshConfig sets one.
const DefaultTrustDomain = "cluster.local"

// Mesh holds the mesh-wide settings (from the MeshConfig named "default").
type Mesh struct {
	TrustDomain    string              `json:"trustDomain"`
	MTLSMode       MTLSMode            `json:"mtlsMode"`
	NamespaceModes map[string]MTLSMode `json:"namespaceModes,omitempty"`
}

// DefaultMesh is the mesh without a MeshConfig.
func DefaultMesh() Mesh { return Mesh{TrustDomain: DefaultTrustDomain, MTLSMode: MTLSPermissive} }

// ModeFor is the mTLS mode of a namespace.
func (m Mesh) ModeFor(namespace string) MTLSMode {
	if mode, ok := m.NamespaceModes[namespace]; ok {
		return mode
	}
	if m.MTLSMode == "" {
		return MTLSPermissive
	}
	return m.MTLSMode
}

// Namespace is a namespace and whether its pods are injected.
type Namespace struct {
	Name     string `json:"name"`
	Injected bool   `json:"injected"`
}

// Protocol is an application protocol the sidecar handles.
type Protocol string

// The protocols. ProtocolDetect means: not declared, sniff the first bytes.
const (
	ProtocolDetect Protocol = ""
	ProtocolHTTP   Protocol = "http"
	ProtocolHTTP2  Protocol = "http2"
	ProtocolGRPC   Protocol = "grpc"
	ProtocolTCP    Protocol = "tcp"
)

// Service is a Kubernetes Service.
type Service struct {
	Key        Key           `json:"key"`
	ClusterIPs []netip.Addr  `json:"clusterIPs,omitempty"` // empty for headless Services
	Ports      []ServicePort `json:"ports"`
}

// ServicePort is one port of a Service.
type ServicePort struct {
	Name       string   `json:"name,omitempty"`
	Port       uint32   `json:"port"`
	TargetPort string   `json:"targetPort,omitempty"` // the number or the container port's name
	Protocol   Protocol `json:"protocol,omitempty"`   // from appProtocol or the port name
}

// EndpointSlice is one EndpointSlice of a Service.
type EndpointSlice struct {
	Key       Key                  `json:"key"`
	Service   Key                  `json:"service"`
	Ports     []EndpointPort       `json:"ports"`
	Endpoints []EndpointSliceEntry `json:"endpoints"`
}

// EndpointPort maps a Service port name to the port endpoints listen on.
type EndpointPort struct {
	Name string `json:"name,omitempty"`
	Port uint32 `json:"port"`
}

// EndpointSliceEntry is one endpoint of a slice.
type EndpointSliceEntry struct {
	Addresses []netip.Addr `json:"addresses"`
	Ready     bool         `json:"ready"`
	Pod       *Key         `json:"pod,omitempty"` // the backing pod, when there is one
}

// Pod is what the mesh needs of a pod.
type Pod struct {
	Key            Key               `json:"key"`
	ServiceAccount string            `json:"serviceAccount"`
	IPs            []netip.Addr      `json:"ips,omitempty"`
	Labels         map[string]string `json:"labels,omitempty"`
	Ports          []ContainerPort   `json:"ports,omitempty"`
	Injected       bool              `json:"injected"` // runs a Trellis sidecar
}

// ContainerPort is a port a pod's containers declare.
type ContainerPort struct {
	Name string `json:"name,omitempty"`
	Port uint32 `json:"port"`
}

// Split is an SMI TrafficSplit.
type Split struct {
	Key        Key       `json:"key"`
	Generation int64     `json:"generation,omitempty"`
	Created    time.Time `json:"created,omitzero"`
	Service    string    `json:"service"` // the root service, in Key.Namespace
	Backends   []Backend `json:"backends"`
	Matches    []string  `json:"matches,omitempty"` // HTTPRouteGroup names
}

// Backend is one weighted destination of a Split.
type Backend struct {
	Service string `json:"service"`
	Weight  uint32 `json:"weight"`
}

// LoadBalancer is a load-balancing algorithm.
type LoadBalancer string

// The algorithms; the zero value means P2CEWMA.
const (
	LoadBalancerP2CEWMA      LoadBalancer = "P2CEWMA"
	LoadBalancerRoundRobin   LoadBalancer = "RoundRobin"
	LoadBalancerLeastRequest LoadBalancer = "LeastRequest"
)

// TrafficPolicy is the client-side behaviour toward one Service. Nil parts are unset.
type TrafficPolicy struct {
	Key              Key               `json:"key"`
	Generation       int64             `json:"generation,omitempty"`
	Created          time.Time         `json:"created,omitzero"`
	Target           string            `json:"target"` // Service name in Key.Namespace
	Retries          *Retries          `json:"retries,omitempty"`
	Timeouts         *Timeouts         `json:"timeouts,omitempty"`
	ConnectionPool   *ConnectionPool   `json:"connectionPool,omitempty"`
	OutlierDetection *OutlierDetection `json:"outlierDetection,omitempty"`
	LoadBalancer     LoadBalancer      `json:"loadBalancer,omitempty"`
}

// Retries: see policy.trellis.dev/v1alpha1 RetryPolicy.
type Retries struct {
	Attempts      uint32         `json:"attempts"`
	PerTryTimeout *time.Duration `json:"perTryTimeout,omitempty"`
	RetryOn       []string       `json:"retryOn,omitempty"`
	Budget        RetryBudget    `json:"budget"`
}

// RetryBudget caps retries: Percent of the requests plus MinPerSecond, over Window.
type RetryBudget struct {
	Percent      uint32        `json:"percent"`
	MinPerSecond uint32        `json:"minPerSecond"`
	Window       time.Duration `json:"window"`
}

// Timeouts; nil is unset, 0 is off.
type Timeouts struct {
	Request *time.Duration `json:"request,omitempty"`
	Idle    *time.Duration `json:"idle,omitempty"`
}

// ConnectionPool limits; nil is unlimited.
type ConnectionPool struct {
	MaxConnections           *uint32 `json:"maxConnections,omitempty"`
	MaxPendingRequests       *uint32 `json:"maxPendingRequests,omitempty"`
	MaxRequests              *uint32 `json:"maxRequests,omitempty"`
	MaxRequestsPerConnection *uint32 `json:"maxRequestsPerConnection,omitempty"`
}

// OutlierDetection: see policy.trellis.dev/v1alpha1 OutlierDetection.
type OutlierDetection struct {
	Consecutive5xxErrors       uint32        `json:"consecutive5xxErrors"`
	ConsecutiveConnectFailures uint32        `json:"consecutiveConnectFailures"`
	Interval                   time.Duration `json:"interval"`
	BaseEjectionTime           time.Duration `json:"baseEjectionTime"`
	MaxEjectionPercent         uint32        `json:"maxEjectionPercent"`
}

// AuthorizationPolicy allows callers to reach the selected pods.
type AuthorizationPolicy struct {
	Key        Key         `json:"key"`
	Generation int64       `json:"generation,omitempty"`
	Selector   Selector    `json:"selector"`
	Rules      []AuthzRule `json:"rules,omitempty"`
}

// Selector selects pods by labels (a Kubernetes label selector).
type Selector struct {
	MatchLabels      map[string]string  `json:"matchLabels,omitempty"`
	MatchExpressions []LabelRequirement `json:"matchExpressions,omitempty"`
}

// LabelRequirement is In, NotIn, Exists or DoesNotExist.
type LabelRequirement struct {
	Key      string   `json:"key"`
	Operator string   `json:"operator"`
	Values   []string `json:"values,omitempty"`
}

// AuthzRule allows From on Ports (all ports when empty).
type AuthzRule struct {
	From  []Principal `json:"from"`
	Ports []uint32    `json:"ports,omitempty"`
}

// Principal is one allowed caller: exactly one field is set. ServiceAccount has its namespace
// filled in (the policy's when the user left it out).
type Principal struct {
	ServiceAccount *Key   `json:"serviceAccount,omitempty"`
	Namespace      string `json:"namespace,omitempty"`
	Identity       string `json:"identity,omitempty"` // a SPIFFE ID
}
