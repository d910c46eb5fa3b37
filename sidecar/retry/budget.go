package retry

import (
	"math"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

// DefaultWindow is the budget window when the configuration has none (the API default).
const DefaultWindow = 10 * time.Second

// buckets is how many slices the window is counted in.
const buckets = 10

// Budget caps the retries of one route of one client sidecar (docs/xds.md "Retry budget"): a
// retry is allowed while
//
//	retries in window < Percent/100 × requests in window + MinPerSecond × Window seconds
//
// where requests are original requests (Request) and retries those Retry allowed. The
// window slides in Window/10 steps: counts are kept in 10 buckets of Window/10, and a
// count leaves the window between 0.9 × Window and Window after it was made.
//
// A Budget is safe for concurrent use and takes no lock: each bucket is one atomic word
// holding the bucket's number (its start time / width) and its count, so that a bucket
// reused for a later slice is reset in the same compare-and-swap that counts into it. The
// check and the count of a retry are one compare-and-swap too, so concurrent Retry calls
// never overshoot the budget (except by the few that straddle a bucket boundary).
type Budget struct {
	unlimited bool
	percent   float64 // of the requests
	floor     float64 // MinPerSecond × window seconds
	width     time.Duration
	now       func() time.Time
	epoch     time.Time
	requests  [buckets]atomic.Uint64
	retries   [buckets]atomic.Uint64
}

// NewBudget returns the budget of one route; a nil configuration gives an unlimited budget
// (only NumRetries bounds retries). A Window of 0 or less is DefaultWindow; negative
// percentages or rates count as 0. now is the clock (nil means time.Now).
func NewBudget(b *config.RetryBudget, now func() time.Time) *Budget {
	if b == nil {
		return &Budget{unlimited: true}
	}
	if now == nil {
		now = time.Now
	}
	window := b.Window
	if window <= 0 {
		window = DefaultWindow
	}
	return &Budget{
		percent: positive(b.Percent),
		floor:   positive(b.MinPerSecond) * window.Seconds(),
		width:   max(window/buckets, 1),
		now:     now,
		epoch:   now(),
	}
}

func positive(x float64) float64 {
	if x > 0 && !math.IsInf(x, 1) {
		return x
	}
	return 0
}

// Unlimited reports whether the budget allows every retry.
func (b *Budget) Unlimited() bool { return b == nil || b.unlimited }

// Request counts an original request (not a retry).
func (b *Budget) Request() {
	if b.Unlimited() {
		return
	}
	add(&b.requests, b.bucket())
}

// Retry reports whether a retry may be sent now, and counts it when it may.
func (b *Budget) Retry() bool {
	if b.Unlimited() {
		return true
	}
	n := b.bucket()
	limit := b.percent*float64(sum(&b.requests, n))/100 + b.floor
	slot := &b.retries[n%buckets]
	others := sumExcept(&b.retries, n, n%buckets)
	for {
		w := slot.Load()
		if float64(others+current(w, n)) >= limit {
			return false
		}
		if slot.CompareAndSwap(w, next(w, n)) {
			return true
		}
	}
}

// Counts are the requests and retries in the window now (for the admin page).
func (b *Budget) Counts() (requests, retries uint64) {
	if b.Unlimited() {
		return 0, 0
	}
	n := b.bucket()
	return sum(&b.requests, n), sum(&b.retries, n)
}

// bucket is the number of the Window/10 slice now is in, counted from the budget's creation.
func (b *Budget) bucket() uint32 {
	d := b.now().Sub(b.epoch)
	if d < 0 {
		return 0
	}
	return uint32(uint64(d / b.width)) // wraps after 2^32 slices; ages are compared modulo
}

// A bucket word is the bucket number in the high 32 bits and its count in the low 32.
func word(n uint32, count uint64) uint64 { return uint64(n)<<32 | count }

// age is how many slices bucket word w is behind slice n (negative: ahead, when the clock
// went back).
func age(w uint64, n uint32) int32 { return int32(n - uint32(w>>32)) }

// current is w's count if it belongs to slice n (or a later one), else 0.
func current(w uint64, n uint32) uint64 {
	if age(w, n) <= 0 {
		return w & math.MaxUint32
	}
	return 0
}

// next is w counted once more in slice n: a word of an older slice starts again at 1. A
// count that would overflow 32 bits stays where it is.
func next(w uint64, n uint32) uint64 {
	if age(w, n) > 0 {
		return word(n, 1)
	}
	if w&math.MaxUint32 == math.MaxUint32 {
		return w
	}
	return w + 1
}

func add(ring *[buckets]atomic.Uint64, n uint32) {
	slot := &ring[n%buckets]
	for {
		w := slot.Load()
		if slot.CompareAndSwap(w, next(w, n)) {
			return
		}
	}
}

// sum is the count of the buckets in the window ending with slice n.
func sum(ring *[buckets]atomic.Uint64, n uint32) uint64 {
	return sumExcept(ring, n, buckets)
}

// sumExcept is sum without the bucket at index skip.
func sumExcept(ring *[buckets]atomic.Uint64, n uint32, skip uint32) uint64 {
	var s uint64
	for i := range ring {
		if uint32(i) == skip {
			continue
		}
		w := ring[i].Load()
		if age(w, n) < buckets {
			s += w & math.MaxUint32
		}
	}
	return s
}
