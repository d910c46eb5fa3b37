// Package retry decides whether a failed try is retried (Envoy's retry_on conditions), how
// long to wait before the retry (jittered exponential backoff), and whether the route's retry
// budget allows it.
package retry

import (
	"math/rand/v2"
	"strings"
	"time"
)

// Outcome of one try.
type Outcome struct {
	// ConnectFailure: no connection could be made to the endpoint (refused, timed out, TLS
	// handshake failed).
	ConnectFailure bool
	// Reset: the stream or connection was reset, or closed, before a response arrived; a
	// per-try timeout counts as a Reset (Envoy retries it under reset, 5xx and gateway-error).
	Reset bool
	// RefusedStream: the endpoint refused the HTTP/2 stream (REFUSED_STREAM) before
	// processing it.
	RefusedStream bool
	// Status is the HTTP status of the response, 0 if none arrived.
	Status int
	// GRPCStatus is the grpc-status of the response (headers, or a trailers-only response),
	// -1 if none.
	GRPCStatus int
}

// Conditions is a parsed retry_on list: a set of the conditions below.
type Conditions uint32

// The conditions, by Envoy's names.
const (
	ConnectFailure    Conditions = 1 << iota // connect-failure
	RefusedStream                            // refused-stream
	Reset                                    // reset
	Status5xx                                // 5xx
	GatewayError                             // gateway-error
	Retriable4xx                             // retriable-4xx
	Cancelled                                // cancelled (gRPC 1)
	DeadlineExceeded                         // deadline-exceeded (gRPC 4)
	Internal                                 // internal (gRPC 13)
	ResourceExhausted                        // resource-exhausted (gRPC 8)
	Unavailable                              // unavailable (gRPC 14)
)

var names = map[string]Conditions{
	"connect-failure":    ConnectFailure,
	"refused-stream":     RefusedStream,
	"reset":              Reset,
	"5xx":                Status5xx,
	"gateway-error":      GatewayError,
	"retriable-4xx":      Retriable4xx,
	"cancelled":          Cancelled,
	"deadline-exceeded":  DeadlineExceeded,
	"internal":           Internal,
	"resource-exhausted": ResourceExhausted,
	"unavailable":        Unavailable,
}

// gRPC status codes.
const (
	grpcCancelled         = 1
	grpcDeadlineExceeded  = 4
	grpcResourceExhausted = 8
	grpcInternal          = 13
	grpcUnavailable       = 14
)

// Parse turns a retry_on list into Conditions. Names are Envoy's, surrounding spaces are
// ignored, and names this version does not know are ignored (as Envoy ignores them). Parse
// the list once per route and use Match per try; ShouldRetry does both.
func Parse(on []string) Conditions {
	var c Conditions
	for _, n := range on {
		c |= names[strings.TrimSpace(n)]
	}
	return c
}

// Match reports whether a try with outcome o is retried under c, with Envoy's semantics:
//
//   - a connect failure, a refused stream or a reset (no response) is retried under reset,
//     5xx and gateway-error (Envoy counts a reset as the 503 it turns into), and under
//     connect-failure and refused-stream respectively;
//   - a response is retried by its status: 5xx for 500-599, gateway-error for 502, 503 and
//     504, retriable-4xx for 409;
//   - and by its gRPC status: cancelled (1), deadline-exceeded (4), resource-exhausted (8),
//     internal (13), unavailable (14).
//
// An empty set retries nothing. Requests the proxy refused itself (circuit-breaker overflow)
// are not outcomes of a try and must not be retried.
func (c Conditions) Match(o Outcome) bool {
	if o.ConnectFailure || o.Reset || o.RefusedStream {
		return c&(Reset|Status5xx|GatewayError) != 0 ||
			(o.ConnectFailure && c&ConnectFailure != 0) ||
			(o.RefusedStream && c&RefusedStream != 0)
	}
	switch s := o.Status; {
	case c&Status5xx != 0 && s >= 500 && s <= 599,
		c&GatewayError != 0 && (s == 502 || s == 503 || s == 504),
		c&Retriable4xx != 0 && s == 409:
		return true
	}
	switch o.GRPCStatus {
	case grpcCancelled:
		return c&Cancelled != 0
	case grpcDeadlineExceeded:
		return c&DeadlineExceeded != 0
	case grpcResourceExhausted:
		return c&ResourceExhausted != 0
	case grpcInternal:
		return c&Internal != 0
	case grpcUnavailable:
		return c&Unavailable != 0
	}
	return false
}

// ShouldRetry reports whether a try with outcome o is retried under the retry_on list on:
// Parse(on).Match(o).
func ShouldRetry(on []string, o Outcome) bool {
	return Parse(on).Match(o)
}

// The backoff between tries.
const (
	BackoffBase = 25 * time.Millisecond
	BackoffMax  = 250 * time.Millisecond
)

// Backoff is how long to wait before retry number attempt (1 for the first retry): full
// jitter, uniform in [0, min(BackoffBase × 2^(attempt−1), BackoffMax)), so at most 25, 50,
// 100, 200, then 250 ms. An attempt below 1 counts as 1.
func Backoff(attempt int) time.Duration {
	return rand.N(backoffCeiling(attempt))
}

func backoffCeiling(attempt int) time.Duration {
	if attempt < 1 {
		attempt = 1
	}
	if attempt > 5 { // 25 ms << 4 is already past the cap; avoid shifting far
		return BackoffMax
	}
	return min(BackoffBase<<(attempt-1), BackoffMax)
}
