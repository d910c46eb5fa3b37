// Package outlier ejects a cluster's endpoints after consecutive failures, for a time that
// grows with repeated ejections (TrafficPolicy outlierDetection, Envoy's consecutive_5xx and
// consecutive_local_origin_failure with split_external_local_origin_errors).
//
// # Rules
//
// Counting: a Failure5xx (a 5xx response, or gRPC UNAVAILABLE, INTERNAL or UNKNOWN) adds one
// to the endpoint's consecutive 5xx counter; a ConnectFailure adds one to its consecutive
// connect-failure counter and leaves the 5xx counter alone (they are counted apart, as local
// and external errors are in Envoy). A Success resets both; a Failure5xx resets the
// connect-failure counter (the endpoint was reached).
//
// Ejection: when a counter reaches its threshold (Consecutive5xx, ConsecutiveConnectFailures;
// 0 turns that check off) the endpoint is ejected while the share already ejected is below
// MaxEjectionPercent, as in Envoy, and never the last endpoint in:
//
//	ejected × 100 < MaxEjectionPercent × endpoints   and   ejected + 1 < endpoints
//
// So with the default 10%, a 3-endpoint Service can eject one failing endpoint (a stricter
// reading, "never more than 10% out", would never eject anything below 10 endpoints, which is
// where outlier detection matters most); MaxEjectionPercent 0 never ejects. Either way
// the counter starts again from 0, so a refused ejection is tried again after as many
// failures; refusals are counted (EjectionsRefused).
//
// Duration: an ejection lasts
//
//	min(BaseEjectionTime × multiplier, max(BaseEjectionTime, 300 s))
//
// where the multiplier is the number of times the endpoint has been ejected, less one for
// every full Interval it has spent in since it last came back (Envoy's ejection backoff, with
// Envoy's default max_ejection_time of 300 s), and stops growing at the cap.
//
// Return: an endpoint comes back at the end of its ejection, exactly: Ejected compares the
// time with it on every call, and the bookkeeping (the ejected count, the multiplier's
// return time) is settled lazily by the next Report decision, Ejected call, States or Update
// that sees it expired. No goroutine or timer is needed; Interval serves only the backoff.
//
// Update keeps the counters and ejections of endpoints that remain; if the new set would
// leave more than MaxEjectionPercent ejected, or none in, the ejections closest to their end
// are ended first. A nil configuration never ejects and returns every ejected endpoint.
// Zero durations take the API defaults (Interval 10 s, BaseEjectionTime 30 s).
package outlier

import (
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

// The API defaults, for zero durations.
const (
	DefaultInterval         = 10 * time.Second
	DefaultBaseEjectionTime = 30 * time.Second
	// MaxEjectionTime caps an ejection (unless BaseEjectionTime is longer).
	MaxEjectionTime = 300 * time.Second
)

// Result is the outcome of one request or connection attempt, as the detector counts it.
type Result int

// The results.
const (
	// Success is any response that is not a Failure5xx.
	Success Result = iota
	// Failure5xx is a 5xx response, or gRPC UNAVAILABLE, INTERNAL or UNKNOWN.
	Failure5xx
	// ConnectFailure is a connection that could not be made (refused, reset, timed out).
	ConnectFailure
)

func (r Result) String() string {
	switch r {
	case Success:
		return "success"
	case Failure5xx:
		return "5xx"
	case ConnectFailure:
		return "connect-failure"
	}
	return "unknown"
}

// Detector ejects the endpoints of one cluster. It is safe for concurrent use. Ejected and
// the counting in Report take no lock; a lock of this detector is taken only to decide an
// ejection (when a counter reaches its threshold), by States and by Update.
type Detector struct {
	now     func() time.Time
	epoch   time.Time
	mu      sync.Mutex
	snap    atomic.Pointer[snapshot]
	refused atomic.Uint64
}

// snapshot is one configuration and endpoint set; the map and slice are immutable once
// published, the states are shared with later snapshots.
type snapshot struct {
	on       bool
	c5xx     uint32
	cConnect uint32
	interval int64 // ns
	base     int64 // ns
	max      int64 // ns
	percent  uint32
	states   map[netip.AddrPort]*state
	order    []*state
	// ejected counts the endpoints with an ejection (some may have ended and not yet been
	// swept): 0 lets Ejected answer without a lookup.
	ejected atomic.Int32
}

type state struct {
	addr     netip.AddrPort
	c5xx     atomic.Uint32
	cConnect atomic.Uint32
	// until is when the ejection ends, in ns since the detector's epoch; 0 when in.
	until atomic.Int64
	// Under Detector.mu:
	multiplier uint32
	ejections  uint64
	returned   int64 // ns since epoch when it last came back; 0 never ejected
}

// New returns a detector with no endpoints; nil cfg never ejects. now is the clock (nil
// means time.Now).
func New(cfg *config.OutlierDetection, now func() time.Time) *Detector {
	if now == nil {
		now = time.Now
	}
	d := &Detector{now: now, epoch: now()}
	d.snap.Store(newSnapshot(cfg))
	return d
}

func newSnapshot(cfg *config.OutlierDetection) *snapshot {
	s := &snapshot{states: map[netip.AddrPort]*state{}}
	if cfg == nil {
		return s
	}
	s.on = true
	s.c5xx = cfg.Consecutive5xx
	s.cConnect = cfg.ConsecutiveConnectFailures
	s.interval = int64(orDefault(cfg.Interval, DefaultInterval))
	base := orDefault(cfg.BaseEjectionTime, DefaultBaseEjectionTime)
	s.base = int64(base)
	s.max = int64(max(base, MaxEjectionTime))
	s.percent = min(cfg.MaxEjectionPercent, 100)
	return s
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// nanos is the time since the epoch.
func (d *Detector) nanos() int64 {
	n := int64(d.now().Sub(d.epoch))
	return max(n, 0)
}

// Update sets the configuration and the endpoint set, keeping the state of endpoints that
// remain.
func (d *Detector) Update(cfg *config.OutlierDetection, endpoints []netip.AddrPort) {
	d.mu.Lock()
	defer d.mu.Unlock()
	old := d.snap.Load()
	s := newSnapshot(cfg)
	s.order = make([]*state, 0, len(endpoints))
	for _, a := range endpoints {
		if s.states[a] != nil {
			continue
		}
		st := old.states[a]
		if st == nil {
			st = &state{addr: a}
		}
		s.states[a] = st
		s.order = append(s.order, st)
	}
	now := d.nanos()
	if !s.on {
		for _, st := range s.order {
			if u := st.until.Load(); u != 0 {
				st.until.Store(0)
				st.returned = min(u, now)
			}
		}
	}
	sweep(s, now)
	// Within the bounds again, ending first the ejections closest to their end.
	if e := s.ejected.Load(); e > 0 && !allowed(s, e) {
		var out []*state
		for _, st := range s.order {
			if st.until.Load() != 0 {
				out = append(out, st)
			}
		}
		sort.Slice(out, func(i, j int) bool { return out[i].until.Load() < out[j].until.Load() })
		for _, st := range out {
			if e := s.ejected.Load(); e == 0 || allowed(s, e) {
				break
			}
			st.until.Store(0)
			st.returned = now
			s.ejected.Add(-1)
		}
	}
	d.snap.Store(s)
}

// allowed reports whether e ejected endpoints are within the bounds of s: each of them was
// ejected while fewer than MaxEjectionPercent were out, and at least one endpoint is in.
func allowed(s *snapshot, e int32) bool {
	if e == 0 {
		return true
	}
	n := int64(len(s.order))
	return int64(e) < n && int64(e-1)*100 < int64(s.percent)*n
}

// sweep brings back the endpoints whose ejection has ended and recounts the ejected ones.
// Callers hold Detector.mu.
func sweep(s *snapshot, now int64) {
	var n int32
	for _, st := range s.order {
		u := st.until.Load()
		if u == 0 {
			continue
		}
		if now >= u {
			st.until.Store(0)
			st.returned = u
			continue
		}
		n++
	}
	s.ejected.Store(n)
}

// Report counts the result of one request or connection attempt to ep; an endpoint not in
// the set is ignored.
func (d *Detector) Report(ep netip.AddrPort, r Result) {
	if d == nil {
		return
	}
	s := d.snap.Load()
	if !s.on {
		return
	}
	st := s.states[ep]
	if st == nil {
		return
	}
	switch r {
	case Success:
		reset(&st.c5xx)
		reset(&st.cConnect)
	case Failure5xx:
		reset(&st.cConnect)
		if n := st.c5xx.Add(1); s.c5xx != 0 && n >= s.c5xx {
			d.trip(st, &st.c5xx)
		}
	case ConnectFailure:
		if n := st.cConnect.Add(1); s.cConnect != 0 && n >= s.cConnect {
			d.trip(st, &st.cConnect)
		}
	}
}

// reset zeroes a counter, without writing (and taking the cache line) when it is 0 already.
func reset(c *atomic.Uint32) {
	if c.Load() != 0 {
		c.Store(0)
	}
}

// trip decides the ejection of st, whose counter reached its threshold.
func (d *Detector) trip(st *state, counter *atomic.Uint32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.snap.Load() // the current one: an Update may have come in between
	if !s.on || s.states[st.addr] != st {
		return
	}
	now := d.nanos()
	sweep(s, now)
	counter.Store(0)
	if st.until.Load() != 0 {
		return // already out
	}
	if !allowed(s, s.ejected.Load()+1) {
		d.refused.Add(1)
		return
	}
	if st.multiplier > 0 && st.returned > 0 {
		forgiven := (now - st.returned) / s.interval
		st.multiplier = uint32(max(int64(st.multiplier)-forgiven, 0))
	}
	if int64(st.multiplier)*s.base < s.max {
		st.multiplier++
	}
	st.until.Store(now + min(int64(st.multiplier)*s.base, s.max))
	st.ejections++
	s.ejected.Add(1)
	st.c5xx.Store(0)
	st.cConnect.Store(0)
}

// Ejected reports whether ep is ejected now. It is cheap: with no endpoint ejected it is two
// atomic loads; otherwise a map lookup, and a clock read for an ejected endpoint. An endpoint
// not in the set is not ejected.
func (d *Detector) Ejected(ep netip.AddrPort) bool {
	if d == nil {
		return false
	}
	s := d.snap.Load()
	if s.ejected.Load() == 0 {
		return false
	}
	st := s.states[ep]
	if st == nil {
		return false
	}
	u := st.until.Load()
	if u == 0 {
		return false
	}
	now := d.nanos()
	if now < u {
		return true
	}
	// Over: settle the books if nobody else is at it.
	if d.mu.TryLock() {
		if d.snap.Load() == s {
			sweep(s, now)
		}
		d.mu.Unlock()
	}
	return false
}

// EndpointState is one endpoint's state, for the admin /clusters page.
type EndpointState struct {
	Address netip.AddrPort
	// Ejected: out until EjectedUntil.
	Ejected      bool
	EjectedUntil time.Time
	// TimesEjected counts the ejections since the endpoint appeared; Multiplier is the
	// current backoff (see the package documentation).
	TimesEjected uint64
	Multiplier   uint32
	// The consecutive failure counters.
	Consecutive5xx             uint32
	ConsecutiveConnectFailures uint32
}

// States returns the state of every endpoint, in set order.
func (d *Detector) States() []EndpointState {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.snap.Load()
	sweep(s, d.nanos())
	out := make([]EndpointState, len(s.order))
	for i, st := range s.order {
		out[i] = EndpointState{
			Address:                    st.addr,
			TimesEjected:               st.ejections,
			Multiplier:                 st.multiplier,
			Consecutive5xx:             st.c5xx.Load(),
			ConsecutiveConnectFailures: st.cConnect.Load(),
		}
		if u := st.until.Load(); u != 0 {
			out[i].Ejected = true
			out[i].EjectedUntil = d.epoch.Round(0).Add(time.Duration(u))
		}
	}
	return out
}

// EjectionsRefused counts the ejections not made because of MaxEjectionPercent or to keep
// one endpoint in.
func (d *Detector) EjectionsRefused() uint64 { return d.refused.Load() }
