// Package wire is the demo application's contract with its callers: the HTTP headers it
// reads and writes, the JSON its HTTP servers answer with, and the gRPC service demo.Echo.
// The servers and the client tools share it, and so can a test that decodes their output.
package wire

const (
	// PeerIdentityHeader is set by the inbound sidecar to the caller's SPIFFE ID (any copy
	// sent by the caller is removed first). The servers report it as peerIdentity.
	PeerIdentityHeader = "x-trellis-peer-identity"
	// UpstreamIdentityHeader is set by the outbound sidecar on responses to the SPIFFE ID the
	// server proved in the mTLS handshake.
	UpstreamIdentityHeader = "x-trellis-upstream-identity"
	// TrellisErrorHeader is set on responses the proxy made itself (503, 403, ...).
	TrellisErrorHeader = "x-trellis-error"
	// VersionHeader is set by the demo's HTTP servers on every response.
	VersionHeader = "x-demo-version"
)

// Reply is the JSON body of GET / (and of every path the servers do not route elsewhere).
type Reply struct {
	Service      string `json:"service"`
	Version      string `json:"version"`
	Pod          string `json:"pod"`
	Namespace    string `json:"namespace"`
	Protocol     string `json:"protocol"`     // HTTP/1.1 or HTTP/2.0, as the server received it
	PeerIdentity string `json:"peerIdentity"` // the x-trellis-peer-identity request header, "" without
	Host         string `json:"host"`         // the request's Host (:authority)
	Path         string `json:"path"`

	// The frontend's call to its backend; absent in a plain server's reply.
	Backend                 *Reply `json:"backend,omitempty"`                 // the backend's JSON, if it answered JSON
	BackendStatus           int    `json:"backendStatus,omitempty"`           // the backend response's status code
	BackendUpstreamIdentity string `json:"backendUpstreamIdentity,omitempty"` // its x-trellis-upstream-identity header
	BackendError            string `json:"backendError,omitempty"`            // why the call failed, if it did
}
