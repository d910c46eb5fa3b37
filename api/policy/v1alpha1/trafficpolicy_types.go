package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TrafficPolicy sets how clients in the mesh call one Service: retries, timeouts, connection
// limits (circuit breaking), outlier detection and load balancing. It applies to every client
// sidecar that calls the target Service.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=tp,categories=trellis
// +kubebuilder:printcolumn:name="Target",type=string,JSONPath=`.spec.targetRef.name`
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type TrafficPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec   TrafficPolicySpec `json:"spec"`
	Status PolicyStatus      `json:"status,omitempty"`
}

// TrafficPolicySpec is the desired client-side behaviour toward the target Service.
//
// +kubebuilder:validation:XValidation:rule="has(self.retries) || has(self.timeouts) || has(self.connectionPool) || has(self.outlierDetection) || has(self.loadBalancer)",message="set at least one of retries, timeouts, connectionPool, outlierDetection or loadBalancer: a policy with none of them changes nothing"
// +kubebuilder:validation:XValidation:rule="!has(self.retries) || !has(self.retries.perTryTimeout) || !has(self.timeouts) || !has(self.timeouts.request) || duration(self.timeouts.request) == duration('0s') || duration(self.retries.perTryTimeout) <= duration(self.timeouts.request)",message="retries.perTryTimeout is longer than timeouts.request, so no retry could ever run: shorten perTryTimeout or lengthen the request timeout"
type TrafficPolicySpec struct {
	// TargetRef is the Service, in the policy's namespace, whose clients this policy configures.
	// +required
	TargetRef PolicyTargetReference `json:"targetRef"`

	// Retries re-sends failed requests.
	// +optional
	Retries *RetryPolicy `json:"retries,omitempty"`

	// Timeouts bound how long requests and idle connections may last.
	// +optional
	Timeouts *Timeouts `json:"timeouts,omitempty"`

	// ConnectionPool limits connections and requests to the Service (circuit breaking): past a
	// limit the client sidecar fails fast with 503 instead of queueing.
	// +optional
	ConnectionPool *ConnectionPool `json:"connectionPool,omitempty"`

	// OutlierDetection ejects failing endpoints from load balancing for a while.
	// +optional
	OutlierDetection *OutlierDetection `json:"outlierDetection,omitempty"`

	// LoadBalancer picks how requests are spread over the Service's endpoints.
	// +optional
	LoadBalancer *LoadBalancer `json:"loadBalancer,omitempty"`
}

// PolicyTargetReference names the object a policy attaches to.
type PolicyTargetReference struct {
	// Kind of the target; only Service is supported.
	// +optional
	// +kubebuilder:default=Service
	// +kubebuilder:validation:Enum=Service
	Kind string `json:"kind,omitempty"`

	// Name of the target, in the policy's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",message="must be the name of a Service in this namespace: lowercase letters, digits and '-', starting with a letter"
	Name string `json:"name"`
}

// RetryPolicy re-sends requests that failed in a retryable way, within a budget.
type RetryPolicy struct {
	// Attempts is the most retries after the first try; 0 turns retries off.
	// +optional
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=10
	Attempts *int32 `json:"attempts,omitempty"`

	// PerTryTimeout bounds each try, the first one included. Unset: each try may use what is
	// left of the request timeout.
	// +optional
	PerTryTimeout *Duration `json:"perTryTimeout,omitempty"`

	// RetryOn lists the failures that are retried.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:default={"connect-failure","refused-stream","unavailable","cancelled","gateway-error"}
	RetryOn []RetryCondition `json:"retryOn,omitempty"`

	// Budget caps retries to a share of the original traffic so that retries cannot turn a
	// slow backend into an overloaded one.
	// +optional
	// +kubebuilder:default={}
	Budget *RetryBudget `json:"budget,omitempty"`
}

// RetryCondition names a kind of failure to retry.
//
// - connect-failure: the connection to the endpoint could not be made.
// - refused-stream: the endpoint refused the HTTP/2 stream before processing it.
// - reset: the connection was reset before a response arrived.
// - 5xx: any 5xx response.
// - gateway-error: a 502, 503 or 504 response.
// - retriable-4xx: a 409 response.
// - cancelled, deadline-exceeded, internal, resource-exhausted, unavailable: the gRPC status.
//
// +kubebuilder:validation:Enum=connect-failure;refused-stream;reset;5xx;gateway-error;retriable-4xx;cancelled;deadline-exceeded;internal;resource-exhausted;unavailable
type RetryCondition string

// RetryBudget allows retries up to Percent of the original requests, plus a floor of
// MinRetriesPerSecond, measured over Window.
type RetryBudget struct {
	// Percent is the extra load retries may add, as a percentage of the original requests.
	// +optional
	// +kubebuilder:default=20
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	Percent *int32 `json:"percent,omitempty"`

	// MinRetriesPerSecond is allowed whatever the percentage, so that low-traffic clients can
	// still retry.
	// +optional
	// +kubebuilder:default=10
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100000
	MinRetriesPerSecond *int32 `json:"minRetriesPerSecond,omitempty"`

	// Window is how far back requests and retries are counted.
	// +optional
	// +kubebuilder:default="10s"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('1h')",message="the budget window must be between 1s and 1h"
	Window *Duration `json:"window,omitempty"`
}

// Timeouts bound requests and idle connections. "0s" turns a timeout off.
type Timeouts struct {
	// Request bounds the whole request, retries included, from the first byte sent to the last
	// byte of the response. Unset: no request timeout.
	// +optional
	Request *Duration `json:"request,omitempty"`

	// Idle closes a connection (or an HTTP/2 stream) with no traffic for this long. Unset: 1h.
	// +optional
	Idle *Duration `json:"idle,omitempty"`
}

// ConnectionPool limits the load each client sidecar puts on the Service. Unset limits are
// unlimited. Past a limit, requests fail fast with 503 and are counted as overflow.
type ConnectionPool struct {
	// MaxConnections is the most TCP connections to all endpoints of the Service together.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000
	MaxConnections *int32 `json:"maxConnections,omitempty"`

	// MaxPendingRequests is the most requests waiting for a connection.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000
	MaxPendingRequests *int32 `json:"maxPendingRequests,omitempty"`

	// MaxRequests is the most requests in flight to the Service.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000
	MaxRequests *int32 `json:"maxRequests,omitempty"`

	// MaxRequestsPerConnection closes a connection after this many requests; 0 means no limit.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000000
	MaxRequestsPerConnection *int32 `json:"maxRequestsPerConnection,omitempty"`
}

// OutlierDetection ejects an endpoint after consecutive failures, for BaseEjectionTime times
// the number of times it has been ejected.
//
// +kubebuilder:validation:XValidation:rule="!has(self.interval) || duration(self.interval) > duration('0s')",message="interval must be longer than 0s"
// +kubebuilder:validation:XValidation:rule="!has(self.baseEjectionTime) || duration(self.baseEjectionTime) > duration('0s')",message="baseEjectionTime must be longer than 0s"
type OutlierDetection struct {
	// Consecutive5xxErrors ejects an endpoint after this many 5xx responses (or gRPC
	// UNAVAILABLE, INTERNAL, UNKNOWN) in a row; 0 turns this check off.
	// +optional
	// +kubebuilder:default=5
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	Consecutive5xxErrors *int32 `json:"consecutive5xxErrors,omitempty"`

	// ConsecutiveConnectFailures ejects an endpoint after this many failed connection
	// attempts (refused, reset, timed out) in a row; 0 turns this check off.
	// +optional
	// +kubebuilder:default=5
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	ConsecutiveConnectFailures *int32 `json:"consecutiveConnectFailures,omitempty"`

	// Interval is how often ejections are reviewed and expired ones returned.
	// +optional
	// +kubebuilder:default="10s"
	Interval *Duration `json:"interval,omitempty"`

	// BaseEjectionTime is how long a first ejection lasts; repeated ejections last longer.
	// +optional
	// +kubebuilder:default="30s"
	BaseEjectionTime *Duration `json:"baseEjectionTime,omitempty"`

	// MaxEjectionPercent: an endpoint is ejected only while fewer than this share of the
	// Service's endpoints are ejected (as in Envoy, so with 10% a 3-endpoint Service can
	// still eject one); 0 never ejects. At least one endpoint always stays in.
	// +optional
	// +kubebuilder:default=10
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	MaxEjectionPercent *int32 `json:"maxEjectionPercent,omitempty"`
}

// LoadBalancer picks the algorithm that chooses an endpoint for each request (HTTP, gRPC) or
// connection (TCP).
type LoadBalancer struct {
	// Type is the algorithm:
	// P2CEWMA picks the faster of two random endpoints by their moving average latency;
	// RoundRobin takes endpoints in turn; LeastRequest picks the one of two random endpoints
	// with fewer requests in flight.
	// +optional
	// +kubebuilder:default=P2CEWMA
	Type LoadBalancerType `json:"type,omitempty"`
}

// LoadBalancerType is a load-balancing algorithm.
//
// +kubebuilder:validation:Enum=P2CEWMA;RoundRobin;LeastRequest
type LoadBalancerType string

// The load-balancing algorithms.
const (
	LoadBalancerP2CEWMA      LoadBalancerType = "P2CEWMA"
	LoadBalancerRoundRobin   LoadBalancerType = "RoundRobin"
	LoadBalancerLeastRequest LoadBalancerType = "LeastRequest"
)

// TrafficPolicyList is a list of TrafficPolicies.
//
// +kubebuilder:object:root=true
type TrafficPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []TrafficPolicy `json:"items"`
}
