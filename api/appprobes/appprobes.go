// Package appprobes is the contract between the injector and the proxy for rewritten
// application probes (docs/injection.md): the injector writes these types into the
// trellis.dev/original-probes annotation, which the kubelet hands to the proxy as the
// environment variable EnvVar; the proxy runs them. One definition for both sides, with no
// Kubernetes types, because the sidecar imports nothing from k8s.io.
package appprobes

// EnvVar is the environment variable that carries the original probes (filled by the
// kubelet from the trellis.dev/original-probes annotation through the downward API).
const EnvVar = "TRELLIS_APP_PROBES"

// PathPrefix is where the status port serves the rewritten probes:
// PathPrefix + "<container>/<kind>".
const PathPrefix = "/app-health/"

// The probe kinds, the last segment of a rewritten probe's path.
const (
	Liveness  = "livez"
	Readiness = "readyz"
	Startup   = "startupz"
)

// The HTTP schemes of an HTTP probe.
const (
	SchemeHTTP  = "HTTP"
	SchemeHTTPS = "HTTPS"
)

// DefaultTimeoutSeconds is the kubelet's default timeoutSeconds, used when a probe has none.
const DefaultTimeoutSeconds = 1

// Probe is one original probe: exactly one of HTTPGet, TCPSocket and GRPC is set.
type Probe struct {
	HTTPGet   *HTTPGetAction   `json:"httpGet,omitempty"`
	TCPSocket *TCPSocketAction `json:"tcpSocket,omitempty"`
	GRPC      *GRPCAction      `json:"grpc,omitempty"`
	// TimeoutSeconds bounds the probe; 0 (absent) means DefaultTimeoutSeconds.
	TimeoutSeconds int32 `json:"timeoutSeconds"`
}

// HTTPGetAction is an HTTP GET; 200-399 is a success, as for the kubelet.
type HTTPGetAction struct {
	// Path is the request's path, and may carry a query; "" means "/".
	Path string `json:"path"`
	Port int32  `json:"port"`
	// Host, when set, is dialled instead of 127.0.0.1.
	Host string `json:"host,omitempty"`
	// Scheme is HTTP or HTTPS ("" means HTTP); HTTPS does not verify the certificate, as
	// the kubelet.
	Scheme string `json:"scheme"`
	// Headers are sent in order; a Host header sets the request's host.
	Headers []HTTPHeader `json:"httpHeaders,omitempty"`
}

// HTTPHeader is a request header of an HTTP probe.
type HTTPHeader struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// TCPSocketAction succeeds when a TCP connection opens.
type TCPSocketAction struct {
	Port int32 `json:"port"`
	// Host, when set, is dialled instead of 127.0.0.1.
	Host string `json:"host,omitempty"`
}

// GRPCAction calls grpc.health.v1.Health/Check in plaintext on 127.0.0.1 and succeeds
// on SERVING.
type GRPCAction struct {
	Port int32 `json:"port"`
	// Service is the service name of the health check ("" is the server as a whole).
	Service string `json:"service,omitempty"`
}

// Path is the status-port path of a container's rewritten probe of one kind.
func Path(container, kind string) string {
	return PathPrefix + container + "/" + kind
}
