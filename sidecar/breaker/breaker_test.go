package breaker

import (
	"sync"
	"sync/atomic"
	"testing"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

// kinds lets one test run over the three kinds of resource.
var kinds = []struct {
	name    string
	limits  func(n uint32) config.Limits
	acquire func(*Breaker) (func(), bool)
	stats   func(Stats) KindStats
}{
	{"connections", func(n uint32) config.Limits { return config.Limits{MaxConnections: n} }, (*Breaker).Connection, func(s Stats) KindStats { return s.Connections }},
	{"pending requests", func(n uint32) config.Limits { return config.Limits{MaxPendingRequests: n} }, (*Breaker).Pending, func(s Stats) KindStats { return s.Pending }},
	{"requests", func(n uint32) config.Limits { return config.Limits{MaxRequests: n} }, (*Breaker).Request, func(s Stats) KindStats { return s.Requests }},
}

func TestLimitsAndOverflowCounts(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name+" stop at the limit and count each refusal as an overflow", func(t *testing.T) {
			b := New(k.limits(3))
			var releases []func()
			for i := range 3 {
				release, ok := k.acquire(b)
				if !ok {
					t.Fatalf("acquisition %d of 3 refused", i+1)
				}
				releases = append(releases, release)
			}
			for range 2 {
				release, ok := k.acquire(b)
				if ok {
					t.Fatal("an acquisition past the limit was allowed")
				}
				if release == nil {
					t.Fatal("a refused acquisition returned a nil release")
				}
				release() // a no-op
			}
			if got, want := k.stats(b.Stats()), (KindStats{Active: 3, Limit: 3, Overflows: 2}); got != want {
				t.Errorf("stats = %+v, want %+v", got, want)
			}
			releases[0]()
			if _, ok := k.acquire(b); !ok {
				t.Error("an acquisition after a release was refused")
			}
			// Only this kind moved.
			for _, other := range kinds {
				if other.name == k.name {
					continue
				}
				if got := other.stats(b.Stats()); got != (KindStats{}) {
					t.Errorf("%s stats = %+v, want untouched", other.name, got)
				}
			}
		})
	}
}

func TestReleaseIsIdempotent(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name+": releasing twice gives back one", func(t *testing.T) {
			b := New(k.limits(2))
			r1, _ := k.acquire(b)
			_, _ = k.acquire(b)
			r1()
			r1()
			r1()
			if got := k.stats(b.Stats()).Active; got != 1 {
				t.Errorf("active = %d after releasing one of two three times, want 1", got)
			}
		})
	}
}

func TestUpdateAppliesToNewAcquisitions(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name+": a lowered limit keeps what is held and refuses until below it", func(t *testing.T) {
			b := New(k.limits(4))
			var held []func()
			for range 4 {
				r, _ := k.acquire(b)
				held = append(held, r)
			}
			b.Update(k.limits(2))
			if got := k.stats(b.Stats()); got.Active != 4 || got.Limit != 2 {
				t.Fatalf("stats = %+v, want 4 active under a limit of 2", got)
			}
			if _, ok := k.acquire(b); ok {
				t.Fatal("an acquisition over the lowered limit was allowed")
			}
			held[0]()
			held[1]()
			if _, ok := k.acquire(b); ok {
				t.Fatal("an acquisition at the lowered limit was allowed")
			}
			held[2]()
			if _, ok := k.acquire(b); !ok {
				t.Error("an acquisition below the lowered limit was refused")
			}
		})
		t.Run(k.name+": a raised limit allows more at once", func(t *testing.T) {
			b := New(k.limits(1))
			k.acquire(b)
			if _, ok := k.acquire(b); ok {
				t.Fatal("a second acquisition under a limit of 1 was allowed")
			}
			b.Update(k.limits(2))
			if _, ok := k.acquire(b); !ok {
				t.Error("a second acquisition under the raised limit was refused")
			}
		})
		t.Run(k.name+": an update to 0 lifts the limit", func(t *testing.T) {
			b := New(k.limits(1))
			k.acquire(b)
			b.Update(config.Limits{})
			for range 100 {
				if _, ok := k.acquire(b); !ok {
					t.Fatal("an acquisition was refused with no limit")
				}
			}
		})
	}
	b := New(config.Limits{MaxRequestsPerConnection: 7})
	if got := b.MaxRequestsPerConnection(); got != 7 {
		t.Errorf("MaxRequestsPerConnection() = %d, want 7", got)
	}
	b.Update(config.Limits{MaxRequestsPerConnection: 9})
	if got := b.MaxRequestsPerConnection(); got != 9 {
		t.Errorf("MaxRequestsPerConnection() = %d after Update, want 9", got)
	}
}

func TestZeroLimitsAreUnlimited(t *testing.T) {
	b := New(config.Limits{})
	for _, k := range kinds {
		for range 10_000 {
			if _, ok := k.acquire(b); !ok {
				t.Fatalf("%s: an acquisition was refused with no limit", k.name)
			}
		}
		if got := k.stats(b.Stats()); got != (KindStats{Active: 10_000}) {
			t.Errorf("%s stats = %+v, want 10000 active, no limit, no overflow", k.name, got)
		}
	}
}

func TestConcurrentAcquisitionsNeverExceedTheLimit(t *testing.T) {
	const limit = 5
	b := New(config.Limits{MaxRequests: limit})
	var inside, peak atomic.Int64
	var allowed, refused atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 2000 {
				release, ok := b.Request()
				if !ok {
					refused.Add(1)
					continue
				}
				allowed.Add(1)
				n := inside.Add(1)
				for {
					p := peak.Load()
					if n <= p || peak.CompareAndSwap(p, n) {
						break
					}
				}
				inside.Add(-1)
				release()
				release()
			}
		})
	}
	wg.Wait()
	s := b.Stats().Requests
	if p := peak.Load(); p > limit {
		t.Errorf("%d requests were inside at once, limit %d", p, limit)
	}
	if s.Active != 0 {
		t.Errorf("active = %d after every release, want 0", s.Active)
	}
	if s.Overflows != uint64(refused.Load()) || allowed.Load()+refused.Load() != 16*2000 {
		t.Errorf("overflows = %d, refused = %d, allowed = %d; want overflows = refused and a total of 32000", s.Overflows, refused.Load(), allowed.Load())
	}
}

func BenchmarkRequest(b *testing.B) {
	br := New(config.Limits{MaxRequests: 1 << 20})
	b.ReportAllocs()
	for b.Loop() {
		release, ok := br.Request()
		if ok {
			release()
		}
	}
}

func BenchmarkRequestParallel(b *testing.B) {
	br := New(config.Limits{MaxRequests: 1 << 20})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			release, ok := br.Request()
			if ok {
				release()
			}
		}
	})
}

var sinkRelease func()

// The release outlives the caller's frame: the ticket and the method value are allocated.
func BenchmarkRequestReleaseStored(b *testing.B) {
	br := New(config.Limits{MaxRequests: 1 << 20})
	b.ReportAllocs()
	for b.Loop() {
		sinkRelease, _ = br.Request()
		sinkRelease()
	}
}
