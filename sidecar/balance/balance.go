// Package balance picks an endpoint of a cluster for each request (HTTP) or connection (TCP),
// and a backend cluster of a TrafficSplit in proportion to its weight.
//
// Everything here runs on the proxy's hot path: a Balancer is one per cluster, safe for
// concurrent use, and a Pick takes no lock and allocates nothing of its own (see Pick for
// the one object it returns). Updates swap an immutable endpoint set in atomically.
//
// # Algorithms
//
// RoundRobin: an atomic counter walks the endpoint set; when the endpoint in turn is not
// eligible, a uniformly random eligible endpoint is taken instead, so that the share of
// ineligible endpoints spreads evenly over the others rather than all landing on the next.
//
// LeastRequest: two distinct eligible endpoints are drawn uniformly at random (power of two
// choices) and the one with fewer requests in flight wins; a tie goes to the first drawn.
//
// P2CEWMA (peak EWMA, after Finagle and Linkerd): two distinct eligible endpoints are drawn
// uniformly at random and the one of lower cost wins, where
//
//	cost = d × (inFlight + 1)
//	d    = ewma × exp(−(now − stamp) / τ),   τ = DecayTime (10 s)
//
// ewma and stamp are the endpoint's estimate (in nanoseconds) and the time it was last
// updated; d is the estimate as seen now: without news it decays toward 0, so an endpoint
// that was slow is tried again after a while (after τ × ln(its estimate / the others')) and
// wins its traffic back if it has recovered. Equal costs (two endpoints with no estimate, for
// example) go to the one with fewer in flight, then to the first drawn. Call.Done feeds a
// latency sample s:
//
//	if s ≥ d:  ewma = s                               (peak: a slowdown is seen at once)
//	else:      ewma = d × v + s × (1 − v),  v = exp(−s / τ)
//	stamp = now
//
// The else branch moves the estimate toward the sample as an EWMA would over the time the
// request took (this is Linkerd's update, where the estimate decays on every read and the
// request's own duration is the time since its pick's read). The estimate is therefore about
// the recent peak latency, decaying with time constant τ whatever the request rate.
//
// A failed call counts as the sample max(latency, FailurePenalty, d): a failure never makes
// an endpoint look faster, and a fast failure (a 503 in 1 ms) looks as slow as the penalty.
// A successful call with latency ≤ 0 records no sample (for TCP, where a connection's
// lifetime says nothing of the endpoint's speed: pass the connect time, or 0). For streams,
// pass the time to the response headers, not the stream's lifetime.
//
// A new endpoint (the first Update, or one that appears later) starts with a neutral
// estimate: the median of the current estimates of the endpoints that have one, or none (0)
// when no endpoint has an estimate yet. So a Pod added to a warm cluster is neither flooded
// (as an optimistic 0 would) nor starved.
package balance

import (
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

// The P2C-EWMA constants (see the package documentation).
const (
	// DecayTime is τ, the time constant of the latency estimate.
	DecayTime = 10 * time.Second
	// FailurePenalty is the least latency a failed call counts as.
	FailurePenalty = time.Second
)

// sampleTries is how many random draws look for an eligible endpoint before a Pick falls
// back to an exact scan of the set.
const sampleTries = 4

// Balancer picks an endpoint of one cluster per request (HTTP) or connection (TCP).
type Balancer struct {
	policy config.LoadBalancer
	clock  clock
	set    atomic.Pointer[endpointSet]
	rr     atomic.Uint64
	mu     sync.Mutex // serialises Update
}

// endpointSet is immutable once published; the endpoints' counters are atomics.
type endpointSet struct {
	eps []*endpoint
}

type endpoint struct {
	addr     netip.AddrPort
	clock    *clock
	useEWMA  bool // P2CEWMA: Done feeds the estimate
	inFlight atomic.Int64
	picks    atomic.Uint64
	// ewma packs the estimate and its stamp so that both change in one atomic step: the
	// stamp (milliseconds since the balancer's epoch) in the high 40 bits (34 years), the
	// estimate in nanoseconds as the top 24 bits of a float32 in the low 24 bits (sign,
	// exponent, 15 bits of mantissa, rounded: a relative precision of 1.5e-5).
	ewma atomic.Uint64
}

// clock turns the injected time source into milliseconds since the balancer was made.
type clock struct {
	now   func() time.Time
	epoch time.Time
}

func (c *clock) ms() uint64 {
	d := c.now().Sub(c.epoch)
	if d < 0 {
		return 0
	}
	return uint64(d / time.Millisecond)
}

const (
	estBits   = 24
	estMask   = 1<<estBits - 1
	stampMask = 1<<(64-estBits) - 1
)

func pack(stampMs uint64, estNs float64) uint64 {
	bits := math.Float32bits(float32(estNs))
	bits += 1 << (32 - estBits - 1) // round to nearest rather than truncate
	return (stampMs&stampMask)<<estBits | uint64(bits>>(32-estBits))
}

func unpack(v uint64) (stampMs uint64, estNs float64) {
	return v >> estBits, float64(math.Float32frombits(uint32(v&estMask) << (32 - estBits)))
}

// decayFactor is exp(−elapsed/τ) for an elapsed time in milliseconds.
func decayFactor(elapsedMs uint64) float64 {
	if elapsedMs == 0 {
		return 1
	}
	return math.Exp(-float64(elapsedMs) / float64(DecayTime/time.Millisecond))
}

// estimate is the endpoint's decayed latency estimate, in nanoseconds, at nowMs.
func (e *endpoint) estimate(nowMs uint64) float64 {
	stamp, est := unpack(e.ewma.Load())
	if est == 0 || nowMs <= stamp {
		return est
	}
	return est * decayFactor(nowMs-stamp)
}

// observe feeds one latency sample into the estimate (see the package documentation).
func (e *endpoint) observe(latency time.Duration, failed bool) {
	if latency <= 0 && !failed {
		return
	}
	now := e.clock.ms()
	for {
		old := e.ewma.Load()
		stamp, est := unpack(old)
		d := est
		if now > stamp {
			d = est * decayFactor(now-stamp)
		}
		s := float64(max(latency, 0))
		if failed {
			s = max(s, float64(FailurePenalty), d)
		}
		next := s
		if s < d {
			v := math.Exp(-s / float64(DecayTime))
			next = d*v + s*(1-v)
		}
		if e.ewma.CompareAndSwap(old, pack(max(now, stamp), next)) {
			return
		}
	}
}

// New returns a Balancer with no endpoints for the policy.
func New(policy config.LoadBalancer) *Balancer {
	return NewWithClock(policy, nil)
}

// NewWithClock is New with a time source for the P2C-EWMA decay (nil means time.Now), for
// tests. A policy this version does not know is P2CEWMA, the default.
func NewWithClock(policy config.LoadBalancer, now func() time.Time) *Balancer {
	if now == nil {
		now = time.Now
	}
	switch policy {
	case config.LoadBalancerRoundRobin, config.LoadBalancerLeastRequest:
	default:
		policy = config.LoadBalancerP2CEWMA // the API default, for values this version does not know
	}
	b := &Balancer{policy: policy, clock: clock{now: now}}
	b.clock.epoch = now()
	b.set.Store(&endpointSet{})
	return b
}

// Policy is the balancer's algorithm.
func (b *Balancer) Policy() config.LoadBalancer { return b.policy }

// Update replaces the endpoint set, keeping the statistics (EWMA, in-flight) of endpoints that
// remain. Duplicates are dropped; the order is kept (it is the round-robin order and the
// order of Stats). Calls picked before an Update finish normally, even on endpoints it
// removed.
func (b *Balancer) Update(endpoints []netip.AddrPort) {
	b.mu.Lock()
	defer b.mu.Unlock()
	old := b.set.Load()
	byAddr := make(map[netip.AddrPort]*endpoint, len(old.eps))
	for _, e := range old.eps {
		byAddr[e.addr] = e
	}
	now := b.clock.ms()
	neutral := -1.0 // computed on the first new endpoint
	next := &endpointSet{eps: make([]*endpoint, 0, len(endpoints))}
	seen := make(map[netip.AddrPort]bool, len(endpoints))
	for _, a := range endpoints {
		if seen[a] {
			continue
		}
		seen[a] = true
		if e := byAddr[a]; e != nil {
			next.eps = append(next.eps, e)
			continue
		}
		if neutral < 0 {
			neutral = medianEstimate(old.eps, now)
		}
		e := &endpoint{addr: a, clock: &b.clock, useEWMA: b.policy == config.LoadBalancerP2CEWMA}
		e.ewma.Store(pack(now, neutral))
		next.eps = append(next.eps, e)
	}
	b.set.Store(next)
}

// medianEstimate is the median of the non-zero estimates of eps at now, 0 if none has one.
func medianEstimate(eps []*endpoint, now uint64) float64 {
	ests := make([]float64, 0, len(eps))
	for _, e := range eps {
		if v := e.estimate(now); v > 0 {
			ests = append(ests, v)
		}
	}
	if len(ests) == 0 {
		return 0
	}
	slices.Sort(ests)
	m := len(ests) / 2
	if len(ests)%2 == 1 {
		return ests[m]
	}
	return (ests[m-1] + ests[m]) / 2
}

// Call is one picked request or connection in flight; finish it with Done.
type Call struct {
	ep   *endpoint
	done atomic.Bool
}

// Pick returns an endpoint for which eligible returns true (nil eligible = all), and a Call to
// finish; ok=false when none is eligible (or the set is empty). eligible must be cheap and
// safe for concurrent use; it is called a few times per Pick, and up to twice per endpoint
// when most endpoints are ineligible.
//
// Pick is small enough to be inlined: a caller that keeps the Call local (calls Done in the
// same function, or defers it) gets it on its stack, and the Pick allocates nothing.
func (b *Balancer) Pick(eligible func(netip.AddrPort) bool) (ep netip.AddrPort, call *Call, ok bool) {
	e := b.pick(eligible)
	if e == nil {
		return netip.AddrPort{}, nil, false
	}
	return e.addr, &Call{ep: e}, true
}

// Done records the outcome: latency feeds the EWMA (P2CEWMA), in-flight decrements
// (LeastRequest, P2CEWMA tie-break). Safe to call once; later calls are no-ops, and so is Done
// on a nil Call.
func (c *Call) Done(latency time.Duration, failed bool) {
	if c == nil || !c.done.CompareAndSwap(false, true) {
		return
	}
	c.ep.inFlight.Add(-1)
	if c.ep.useEWMA {
		c.ep.observe(latency, failed)
	}
}

func (b *Balancer) pick(eligible func(netip.AddrPort) bool) *endpoint {
	eps := b.set.Load().eps
	var e *endpoint
	switch {
	case len(eps) == 0:
		return nil
	case b.policy == config.LoadBalancerRoundRobin:
		e = eps[(b.rr.Add(1)-1)%uint64(len(eps))]
		if eligible != nil && !eligible(e.addr) {
			e, _ = sample(eps, eligible, false)
		}
	case b.policy == config.LoadBalancerLeastRequest:
		x, y := sample(eps, eligible, true)
		e = x
		if y != nil && y.inFlight.Load() < x.inFlight.Load() {
			e = y
		}
	default: // P2CEWMA
		x, y := sample(eps, eligible, true)
		e = x
		if y != nil {
			now := b.clock.ms()
			xf, yf := x.inFlight.Load(), y.inFlight.Load()
			xc, yc := x.estimate(now)*float64(xf+1), y.estimate(now)*float64(yf+1)
			if yc < xc || (yc == xc && yf < xf) {
				e = y
			}
		}
	}
	if e == nil {
		return nil
	}
	e.inFlight.Add(1)
	e.picks.Add(1)
	return e
}

// sample draws one (two=false) or two distinct (two=true) eligible endpoints uniformly at
// random. x is nil when none is eligible; y is nil when two=false or only one is eligible.
// It first draws at random and, when that keeps hitting ineligible endpoints, counts the
// eligible ones and draws among them exactly.
func sample(eps []*endpoint, eligible func(netip.AddrPort) bool, two bool) (x, y *endpoint) {
	n := len(eps)
	if n == 1 {
		if eligible == nil || eligible(eps[0].addr) {
			return eps[0], nil
		}
		return nil, nil
	}
	i := -1
	for range sampleTries {
		if c := rand.IntN(n); eligible == nil || eligible(eps[c].addr) {
			i = c
			break
		}
	}
	if i >= 0 && !two {
		return eps[i], nil
	}
	if i >= 0 {
		for range sampleTries {
			j := rand.IntN(n - 1)
			if j >= i {
				j++
			}
			if eligible == nil || eligible(eps[j].addr) {
				return eps[i], eps[j]
			}
		}
	}
	return exactSample(eps, eligible, two)
}

// exactSample counts the eligible endpoints and draws among them uniformly. If eligibility
// changes between its two passes, it settles for what it found.
func exactSample(eps []*endpoint, eligible func(netip.AddrPort) bool, two bool) (x, y *endpoint) {
	m := 0
	var last *endpoint
	for _, e := range eps {
		if eligible(e.addr) {
			m++
			last = e
		}
	}
	switch {
	case m == 0:
		return nil, nil
	case m == 1:
		return last, nil
	}
	r1, r2 := rand.IntN(m), -1
	if two {
		r2 = rand.IntN(m - 1)
		if r2 >= r1 {
			r2++
		}
	}
	rank := 0
	for _, e := range eps {
		if !eligible(e.addr) {
			continue
		}
		switch rank {
		case r1:
			x = e
		case r2:
			y = e
		}
		rank++
		if x != nil && (y != nil || !two) {
			break
		}
	}
	if x == nil {
		x, y = y, nil
	}
	if x == nil {
		x = last
	}
	return x, y
}

// EndpointStats is one endpoint's state, for the admin /clusters page.
type EndpointStats struct {
	Address  netip.AddrPort
	InFlight int64
	// EWMA is the decayed latency estimate now (P2CEWMA only; 0 for the other policies).
	EWMA  time.Duration
	Picks uint64
}

// Stats returns the state of every endpoint, in set order.
func (b *Balancer) Stats() []EndpointStats {
	eps := b.set.Load().eps
	now := b.clock.ms()
	out := make([]EndpointStats, len(eps))
	for i, e := range eps {
		out[i] = EndpointStats{
			Address:  e.addr,
			InFlight: e.inFlight.Load(),
			Picks:    e.picks.Load(),
		}
		if b.policy == config.LoadBalancerP2CEWMA {
			out[i].EWMA = time.Duration(e.estimate(now))
		}
	}
	return out
}

// Len is the number of endpoints.
func (b *Balancer) Len() int { return len(b.set.Load().eps) }
