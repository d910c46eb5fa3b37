package proxy

import (
	"net/netip"
	"time"

	"github.com/trellis-mesh/trellis/sidecar/proxy/sniff"
)

// Direction is which side of the pod traffic is on.
type Direction string

// The directions.
const (
	Outbound Direction = "outbound"
	Inbound  Direction = "inbound"
)

// Observer receives the data path's telemetry events. Its methods are called on the data
// path, concurrently: they must be fast and must not block.
type Observer interface {
	// RequestDone is called when an HTTP request (including a gRPC call or an upgraded
	// connection) has ended.
	RequestDone(RequestInfo)
	// ConnDone is called when a TCP connection (proxied or passed through) has ended.
	ConnDone(ConnInfo)
	// Sniffed is called when protocol detection has decided.
	Sniffed(SniffInfo)
}

// RequestInfo describes a finished HTTP request.
type RequestInfo struct {
	Direction Direction
	// Listener is the outbound listener name, or inbound|<port>.
	Listener string
	// Cluster is the backend cluster (outbound) or inbound|<port>|| (inbound).
	Cluster string
	// SourceIdentity is the caller's SPIFFE ID (inbound over mTLS); DestinationIdentity the
	// endpoint's (outbound, meshed endpoints). "" when unknown.
	SourceIdentity, DestinationIdentity string
	Endpoint                            netip.AddrPort
	Method                              string
	Proto                               string // HTTP/1.1, HTTP/2.0
	// Status is the HTTP status sent to the client; 0 when the client went away first.
	Status int
	// GRPCStatus is the grpc-status of a gRPC response, -1 when there is none.
	GRPCStatus int
	// Retries is how many times the request was re-sent.
	Retries  int
	Duration time.Duration
	// LocalError is the x-trellis-error of a response the proxy made itself.
	LocalError string
}

// ConnInfo describes a finished TCP connection.
type ConnInfo struct {
	Direction                           Direction
	Listener, Cluster                   string
	SourceIdentity, DestinationIdentity string
	Endpoint                            netip.AddrPort
	// BytesSent went from the client to the upstream, BytesReceived back.
	BytesSent, BytesReceived int64
	Duration                 time.Duration
	// Err is why it ended, nil for a clean close on both sides.
	Err error
}

// SniffInfo describes one protocol detection.
type SniffInfo struct {
	Direction Direction
	Listener  string
	Protocol  sniff.Protocol
	// TimedOut: the client sent too little before the deadline (silence included) and the
	// connection was treated as TCP.
	TimedOut bool
	Duration time.Duration
}

// NopObserver ignores every event.
type NopObserver struct{}

// RequestDone does nothing.
func (NopObserver) RequestDone(RequestInfo) {}

// ConnDone does nothing.
func (NopObserver) ConnDone(ConnInfo) {}

// Sniffed does nothing.
func (NopObserver) Sniffed(SniffInfo) {}
