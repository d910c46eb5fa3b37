// Package breaker is a cluster's circuit breakers: the most connections, pending requests
// and requests in flight its endpoints may have together (TrafficPolicy connectionPool).
// Past a limit the proxy fails the request (or connection) at once with 503 and it is counted
// as an overflow; nothing is queued here.
package breaker

import (
	"sync/atomic"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

// Breaker is one cluster's limits. It is safe for concurrent use and takes no lock: each
// kind is an atomic count, and an acquisition is one compare-and-swap against the limit, so
// concurrent acquisitions never overshoot it.
type Breaker struct {
	requests, pending, connections gauge // requests first: the hottest, and the cheapest to address
	maxRequestsPerConnection       atomic.Uint32
}

// gauge is one kind of resource; padded so that the three kinds, each hot on its own, do not
// share a cache line.
type gauge struct {
	active    atomic.Int64
	limit     atomic.Uint32 // 0 = unlimited
	overflows atomic.Uint64
	_         [64 - 8 - 4 - 4 - 8]byte
}

// New returns a breaker with limits l (0 = unlimited).
func New(l config.Limits) *Breaker {
	b := &Breaker{}
	b.Update(l)
	return b
}

// Update sets new limits. They apply to new acquisitions: what was acquired stays acquired,
// and a lowered limit refuses new ones until enough are released.
func (b *Breaker) Update(l config.Limits) {
	b.connections.limit.Store(l.MaxConnections)
	b.pending.limit.Store(l.MaxPendingRequests)
	b.requests.limit.Store(l.MaxRequests)
	b.maxRequestsPerConnection.Store(l.MaxRequestsPerConnection)
}

// MaxRequestsPerConnection is the current limit of requests on one upstream connection (0 =
// no limit); the connection pool enforces it.
func (b *Breaker) MaxRequestsPerConnection() uint32 {
	return b.maxRequestsPerConnection.Load()
}

// Connection acquires an upstream connection (MaxConnections). release gives it back; it is
// idempotent, and a no-op (never nil) when ok is false.
//
// Connection, Pending and Request are small enough to be inlined: a caller that calls or
// defers release in the same function keeps the acquisition on its stack and allocates
// nothing; one that stores release allocates two small objects.
func (b *Breaker) Connection() (release func(), ok bool) {
	if b.connections.acquire() {
		t := &ticket{g: &b.connections}
		return t.release, true
	}
	return noop, false
}

// Pending acquires a place among the requests waiting for a connection
// (MaxPendingRequests). release is as for Connection.
func (b *Breaker) Pending() (release func(), ok bool) {
	if b.pending.acquire() {
		t := &ticket{g: &b.pending}
		return t.release, true
	}
	return noop, false
}

// Request acquires a request in flight (MaxRequests). release is as for Connection.
func (b *Breaker) Request() (release func(), ok bool) {
	if b.requests.acquire() {
		t := &ticket{g: &b.requests}
		return t.release, true
	}
	return noop, false
}

func noop() {}

// acquire is kept out of line so that Connection, Pending and Request stay inlinable.
//
//go:noinline
func (g *gauge) acquire() bool {
	for {
		n := g.active.Load()
		if l := g.limit.Load(); l != 0 && n >= int64(l) {
			g.overflows.Add(1)
			return false
		}
		if g.active.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// ticket is one acquisition; its release gives it back once.
type ticket struct {
	g    *gauge
	done atomic.Bool
}

func (t *ticket) release() {
	if t.done.CompareAndSwap(false, true) {
		t.g.active.Add(-1)
	}
}

// Stats are the breaker's counts, for the admin /clusters page and metrics.
type Stats struct {
	Connections, Pending, Requests KindStats
}

// KindStats is one kind of resource.
type KindStats struct {
	// Active is how many are acquired now.
	Active int64
	// Limit is the current limit, 0 = unlimited.
	Limit uint32
	// Overflows counts the acquisitions refused since the breaker was made.
	Overflows uint64
}

// Stats returns the current counts and overflow counters.
func (b *Breaker) Stats() Stats {
	return Stats{
		Connections: b.connections.stats(),
		Pending:     b.pending.stats(),
		Requests:    b.requests.stats(),
	}
}

func (g *gauge) stats() KindStats {
	return KindStats{Active: g.active.Load(), Limit: g.limit.Load(), Overflows: g.overflows.Load()}
}
