package balance

import (
	"errors"
	"math/rand/v2"
)

// Weighted picks an index in proportion to weights (the TrafficSplit choice per request). It
// is immutable and safe for concurrent use; Pick takes no lock and allocates nothing.
type Weighted struct {
	// cum[i] is the sum of weights[0..i]; an index of weight 0 repeats its predecessor's sum
	// and is never picked.
	cum   []uint64
	total uint64
}

// ErrNoWeight is returned by NewWeighted for an empty list or one whose weights are all 0.
var ErrNoWeight = errors.New("balance: no backend has a weight above 0")

// linearMax is the length up to which Pick scans instead of bisecting.
const linearMax = 8

// NewWeighted returns a picker over len(weights) indexes; error if empty or all zero.
func NewWeighted(weights []uint32) (*Weighted, error) {
	w := &Weighted{cum: make([]uint64, len(weights))}
	for i, x := range weights {
		w.total += uint64(x)
		w.cum[i] = w.total
	}
	if w.total == 0 {
		return nil, ErrNoWeight
	}
	return w, nil
}

// Pick returns index i with probability weights[i] / sum(weights).
func (w *Weighted) Pick() int {
	if len(w.cum) == 1 {
		return 0
	}
	r := rand.Uint64N(w.total)
	// The first i with cum[i] > r.
	if len(w.cum) <= linearMax {
		for i, c := range w.cum {
			if c > r {
				return i
			}
		}
	}
	lo, hi := 0, len(w.cum)-1
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if w.cum[m] > r {
			hi = m
		} else {
			lo = m + 1
		}
	}
	return lo
}

// Len is the number of indexes.
func (w *Weighted) Len() int { return len(w.cum) }
