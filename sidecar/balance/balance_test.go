package balance

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

// fakeClock is a time source tests move by hand.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

func addrs(n int) []netip.AddrPort {
	out := make([]netip.AddrPort, n)
	for i := range out {
		out[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 8080)
	}
	return out
}

// near reports whether d is want within the estimate's precision (1.5e-5, rounded up).
func near(d, want time.Duration) bool {
	return math.Abs(float64(d-want)) <= float64(want)*2e-5
}

func only(allowed ...netip.AddrPort) func(netip.AddrPort) bool {
	return func(a netip.AddrPort) bool {
		for _, x := range allowed {
			if a == x {
				return true
			}
		}
		return false
	}
}

func statsOf(t *testing.T, b *Balancer, a netip.AddrPort) EndpointStats {
	t.Helper()
	for _, s := range b.Stats() {
		if s.Address == a {
			return s
		}
	}
	t.Fatalf("no stats for %v", a)
	return EndpointStats{}
}

func TestWeightedRatios(t *testing.T) {
	const picks = 100_000
	for _, tc := range []struct {
		name    string
		weights []uint32
	}{
		{"90/10 lands within ±1 percentage point over 100k picks", []uint32{90, 10}},
		{"1/1/1 lands within ±1 percentage point over 100k picks", []uint32{1, 1, 1}},
		{"1000/500 lands within ±1 percentage point over 100k picks", []uint32{1000, 500}},
		{"twelve backends (bisection) land within ±1 percentage point over 100k picks", []uint32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}},
		{"a weight of 0 among others is never picked and the rest stay within ±1 percentage point", []uint32{0, 3, 0, 1, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := NewWeighted(tc.weights)
			if err != nil {
				t.Fatal(err)
			}
			counts := make([]int, len(tc.weights))
			for range picks {
				counts[w.Pick()]++
			}
			var total float64
			for _, x := range tc.weights {
				total += float64(x)
			}
			for i, x := range tc.weights {
				want := 100 * float64(x) / total
				got := 100 * float64(counts[i]) / picks
				if x == 0 && counts[i] != 0 {
					t.Errorf("index %d has weight 0 but was picked %d times", i, counts[i])
				}
				if math.Abs(got-want) > 1 {
					t.Errorf("index %d: %.2f%% of picks, want %.2f%% ± 1", i, got, want)
				}
			}
		})
	}
}

func TestNewWeighted(t *testing.T) {
	for _, tc := range []struct {
		name    string
		weights []uint32
		wantErr bool
	}{
		{"a nil list is an error", nil, true},
		{"an empty list is an error", []uint32{}, true},
		{"all weights 0 is an error", []uint32{0, 0}, true},
		{"one backend of weight 0 is an error", []uint32{0}, true},
		{"one backend with a weight is fine", []uint32{7}, false},
		{"weights summing past 32 bits are fine", []uint32{math.MaxUint32, math.MaxUint32}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := NewWeighted(tc.weights)
			if tc.wantErr {
				if !errors.Is(err, ErrNoWeight) || w != nil {
					t.Fatalf("NewWeighted(%v) = %v, %v; want nil, ErrNoWeight", tc.weights, w, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewWeighted(%v): %v", tc.weights, err)
			}
			if i := w.Pick(); i < 0 || i >= len(tc.weights) {
				t.Errorf("Pick() = %d, out of range", i)
			}
		})
	}
}

func TestRoundRobinSpreadsEvenly(t *testing.T) {
	eps := addrs(3)
	b := New(config.LoadBalancerRoundRobin)
	b.Update(eps)
	counts := map[netip.AddrPort]int{}
	for i := range 3000 {
		a, call, ok := b.Pick(nil)
		if !ok {
			t.Fatal("no endpoint picked")
		}
		if want := eps[i%3]; a != want {
			t.Fatalf("pick %d went to %v, want %v (endpoints in turn)", i, a, want)
		}
		counts[a]++
		call.Done(time.Millisecond, false)
	}
	for _, a := range eps {
		if counts[a] != 1000 {
			t.Errorf("%v got %d of 3000 picks, want exactly 1000", a, counts[a])
		}
	}
}

func TestRoundRobinSpreadsAnIneligibleEndpointsShareEvenly(t *testing.T) {
	eps := addrs(4)
	b := New(config.LoadBalancerRoundRobin)
	b.Update(eps)
	eligible := only(eps[1], eps[2], eps[3]) // eps[0] is out
	counts := map[netip.AddrPort]int{}
	const picks = 60_000
	for range picks {
		a, call, ok := b.Pick(eligible)
		if !ok {
			t.Fatal("no endpoint picked")
		}
		counts[a]++
		call.Done(0, false)
	}
	if counts[eps[0]] != 0 {
		t.Errorf("the ineligible endpoint got %d picks", counts[eps[0]])
	}
	for _, a := range eps[1:] {
		if got := 100 * float64(counts[a]) / picks; math.Abs(got-100.0/3) > 1.5 {
			t.Errorf("%v got %.2f%% of picks, want 33.33%% ± 1.5 (not the ineligible one's share on top)", a, got)
		}
	}
}

func TestLeastRequestPrefersTheEndpointWithFewerInFlight(t *testing.T) {
	eps := addrs(2)
	b := New(config.LoadBalancerLeastRequest)
	b.Update(eps)
	// Five requests held on eps[0].
	var held []*Call
	for range 5 {
		_, call, ok := b.Pick(only(eps[0]))
		if !ok {
			t.Fatal("no endpoint picked")
		}
		held = append(held, call)
	}
	// With two endpoints both are drawn every time: each new request goes to eps[1] until it
	// has as many in flight (ties go to either).
	for i := range 4 {
		a, _, _ := b.Pick(nil)
		if a != eps[1] {
			t.Fatalf("request %d went to %v with 5 in flight against %d on %v", i, a, i, eps[1])
		}
	}
	for _, c := range held {
		c.Done(time.Millisecond, false)
	}
	if s := statsOf(t, b, eps[0]); s.InFlight != 0 {
		t.Errorf("eps[0] in flight = %d after Done, want 0", s.InFlight)
	}
	// Now eps[0] has 0 in flight against 4: it takes the next ones.
	for i := range 4 {
		if a, _, _ := b.Pick(nil); a != eps[0] {
			t.Fatalf("request %d after release went to %v, want the idle %v", i, a, eps[0])
		}
	}
}

// simulate runs n sequential requests, each picked, answered after latency(ep) and finished,
// the clock moving step per request; it returns how many each endpoint got.
func simulate(b *Balancer, clk *fakeClock, n int, step time.Duration, latency func(netip.AddrPort) time.Duration) map[netip.AddrPort]int {
	counts := map[netip.AddrPort]int{}
	for range n {
		a, call, ok := b.Pick(nil)
		if !ok {
			panic("no endpoint picked")
		}
		counts[a]++
		call.Done(latency(a), false)
		clk.advance(step)
	}
	return counts
}

func TestP2CEWMAShiftsTrafficAwayFromASlowEndpointAndBackWhenItRecovers(t *testing.T) {
	clk := &fakeClock{}
	eps := addrs(3)
	slow := eps[0]
	b := NewWithClock(config.LoadBalancerP2CEWMA, clk.now)
	b.Update(eps)
	slowness := 200 * time.Millisecond
	latency := func(a netip.AddrPort) time.Duration {
		if a == slow {
			return slowness
		}
		return 10 * time.Millisecond
	}

	// Warm up for 10 s at 100 requests a second, then measure the next 10 s.
	simulate(b, clk, 1000, 10*time.Millisecond, latency)
	counts := simulate(b, clk, 1000, 10*time.Millisecond, latency)
	if got := counts[slow]; got > 50 {
		t.Errorf("while slow, %v got %d of 1000 requests, want under 5%%", slow, got)
	}
	if s := statsOf(t, b, slow); s.EWMA < 10*time.Millisecond {
		t.Errorf("the slow endpoint's estimate is %v, want well above the fast ones' 10ms", s.EWMA)
	}

	// It recovers. Without samples its estimate decays (τ = 10 s) until it wins a draw again
	// and shows its new latency; after a minute it has its share back.
	slowness = 10 * time.Millisecond
	simulate(b, clk, 6000, 10*time.Millisecond, latency)
	counts = simulate(b, clk, 3000, 10*time.Millisecond, latency)
	if got := 100 * float64(counts[slow]) / 3000; got < 25 || got > 42 {
		t.Errorf("after recovering, %v got %.1f%% of requests, want about a third (25-42%%)", slow, got)
	}
}

func TestP2CEWMACountsFastFailuresAsSlow(t *testing.T) {
	clk := &fakeClock{}
	eps := addrs(3)
	bad := eps[0]
	b := NewWithClock(config.LoadBalancerP2CEWMA, clk.now)
	b.Update(eps)
	counts := map[netip.AddrPort]int{}
	for i := range 2000 {
		a, call, _ := b.Pick(nil)
		if i >= 1000 {
			counts[a]++
		}
		// The bad endpoint answers at once, with an error: without the penalty it would
		// look like the fastest.
		call.Done(time.Millisecond, a == bad)
		if a != bad {
			call.Done(0, false) // a second Done is a no-op
		}
		clk.advance(10 * time.Millisecond)
	}
	if got := counts[bad]; got > 50 {
		t.Errorf("the failing endpoint got %d of 1000 requests, want under 5%%", got)
	}
	// Right after a failure its estimate is the penalty, and stays so on the next one.
	for _, want := range []time.Duration{FailurePenalty, FailurePenalty} {
		_, call, _ := b.Pick(only(bad))
		call.Done(time.Millisecond, true)
		if s := statsOf(t, b, bad); !near(s.EWMA, want) {
			t.Errorf("the failing endpoint's estimate after a failure is %v, want %v", s.EWMA, want)
		}
	}
}

func TestTheEstimateFollowsThePeakEWMAFormula(t *testing.T) {
	clk := &fakeClock{}
	a := addrs(1)
	b := NewWithClock(config.LoadBalancerP2CEWMA, clk.now)
	b.Update(a)
	ms := func(x float64) time.Duration { return time.Duration(x * float64(time.Millisecond)) }
	for _, step := range []struct {
		name    string
		advance time.Duration
		sample  time.Duration // 0: no call, only the clock moves
		failed  bool
		want    time.Duration
	}{
		{"a first sample above the empty estimate is taken as it is", 0, 10 * time.Millisecond, false, 10 * time.Millisecond},
		{"without news the estimate decays by e after τ", DecayTime, 0, false, ms(10 * math.Exp(-1))},
		{"a sample above the decayed estimate replaces it (peak)", 0, 50 * time.Millisecond, false, 50 * time.Millisecond},
		{"a lower sample pulls it down by 1 − exp(−s/τ)", 0, 10 * time.Millisecond, false, ms(50*math.Exp(-0.001) + 10*(1-math.Exp(-0.001)))},
		{"a fast failure counts as the penalty", 0, time.Millisecond, true, FailurePenalty},
		{"a failure slower than the penalty counts as its latency", 0, 3 * time.Second, true, 3 * time.Second},
		{"a success with latency 0 records nothing", 0, -1, false, 3 * time.Second},
	} {
		clk.advance(step.advance)
		if step.sample != 0 {
			_, call, _ := b.Pick(nil)
			call.Done(max(step.sample, 0), step.failed)
		}
		if got := statsOf(t, b, a[0]).EWMA; !near(got, step.want) {
			t.Errorf("%s: estimate = %v, want %v", step.name, got, step.want)
		}
	}
}

func TestP2CEWMABreaksEqualCostsByInFlight(t *testing.T) {
	eps := addrs(2)
	b := New(config.LoadBalancerP2CEWMA)
	b.Update(eps) // no estimates yet: every cost is 0
	_, held, _ := b.Pick(only(eps[0]))
	defer held.Done(0, false)
	for i := range 10 {
		a, call, _ := b.Pick(nil)
		if a != eps[1] {
			t.Fatalf("request %d went to %v, which has a request in flight", i, a)
		}
		call.Done(0, false) // no sample: the costs stay equal
	}
}

func TestUpdateKeepsTheStatisticsOfRemainingEndpoints(t *testing.T) {
	for _, policy := range []config.LoadBalancer{config.LoadBalancerP2CEWMA, config.LoadBalancerRoundRobin, config.LoadBalancerLeastRequest} {
		t.Run(policy.String()+" keeps picks, in-flight and the estimate of endpoints that remain", func(t *testing.T) {
			clk := &fakeClock{}
			eps := addrs(4)
			b := NewWithClock(policy, clk.now)
			b.Update(eps[:3])
			lat := map[netip.AddrPort]time.Duration{eps[0]: 10 * time.Millisecond, eps[1]: 20 * time.Millisecond, eps[2]: 60 * time.Millisecond}
			for _, a := range eps[:3] {
				for range 3 {
					_, call, _ := b.Pick(only(a))
					call.Done(lat[a], false)
				}
			}
			_, heldOnA, _ := b.Pick(only(eps[0]))
			_, heldOnC, _ := b.Pick(only(eps[2]))
			before := statsOf(t, b, eps[0])

			b.Update([]netip.AddrPort{eps[3], eps[0], eps[3], eps[1]}) // eps[2] goes, eps[3] comes, a duplicate

			if got := b.Len(); got != 3 {
				t.Fatalf("Len() = %d after Update, want 3 (duplicate dropped)", got)
			}
			stats := b.Stats()
			if stats[0].Address != eps[3] || stats[1].Address != eps[0] || stats[2].Address != eps[1] {
				t.Errorf("Stats order = %v, %v, %v; want the Update's order", stats[0].Address, stats[1].Address, stats[2].Address)
			}
			if after := statsOf(t, b, eps[0]); after != before {
				t.Errorf("eps[0] stats changed across Update: %+v, then %+v", before, after)
			}
			if before.Picks != 4 || before.InFlight != 1 {
				t.Errorf("eps[0] stats = %+v, want 4 picks and 1 in flight", before)
			}
			fresh := statsOf(t, b, eps[3])
			if fresh.Picks != 0 || fresh.InFlight != 0 {
				t.Errorf("new endpoint stats = %+v, want zero counts", fresh)
			}
			if policy == config.LoadBalancerP2CEWMA {
				if !near(before.EWMA, 10*time.Millisecond) {
					t.Errorf("eps[0] estimate = %v, want 10ms", before.EWMA)
				}
				// Neutral start: the median of 10, 20 and 60 ms.
				if !near(fresh.EWMA, 20*time.Millisecond) {
					t.Errorf("new endpoint estimate = %v, want the median 20ms", fresh.EWMA)
				}
			}
			// Calls picked before the Update finish normally, even on a removed endpoint.
			heldOnA.Done(time.Millisecond, false)
			heldOnC.Done(time.Millisecond, false)
			if s := statsOf(t, b, eps[0]); s.InFlight != 0 {
				t.Errorf("eps[0] in flight = %d after Done, want 0", s.InFlight)
			}
		})
	}
}

func TestANewEndpointInAWarmClusterGetsTraffic(t *testing.T) {
	clk := &fakeClock{}
	eps := addrs(4)
	b := NewWithClock(config.LoadBalancerP2CEWMA, clk.now)
	b.Update(eps[:3])
	latency := func(netip.AddrPort) time.Duration { return 10 * time.Millisecond }
	simulate(b, clk, 1000, 10*time.Millisecond, latency)
	b.Update(eps)
	counts := simulate(b, clk, 4000, 10*time.Millisecond, latency)
	if got := 100 * float64(counts[eps[3]]) / 4000; got < 15 || got > 35 {
		t.Errorf("the new endpoint got %.1f%% of requests, want about a quarter (15-35%%)", got)
	}
}

func TestPickHonoursTheEligibleFilter(t *testing.T) {
	eps := addrs(10)
	for _, policy := range []config.LoadBalancer{config.LoadBalancerP2CEWMA, config.LoadBalancerRoundRobin, config.LoadBalancerLeastRequest} {
		for _, tc := range []struct {
			name    string
			allowed []netip.AddrPort
		}{
			{"one eligible endpoint of ten gets every pick", eps[7:8]},
			{"two eligible endpoints of ten share every pick", []netip.AddrPort{eps[2], eps[9]}},
			{"nine eligible endpoints of ten share every pick", eps[1:]},
		} {
			t.Run(policy.String()+": "+tc.name, func(t *testing.T) {
				b := New(policy)
				b.Update(eps)
				eligible := only(tc.allowed...)
				counts := map[netip.AddrPort]int{}
				for range 2000 {
					a, call, ok := b.Pick(eligible)
					if !ok {
						t.Fatal("no endpoint picked though some are eligible")
					}
					if !eligible(a) {
						t.Fatalf("picked the ineligible %v", a)
					}
					counts[a]++
					call.Done(time.Millisecond, false)
				}
				for _, a := range tc.allowed {
					if counts[a] == 0 {
						t.Errorf("eligible %v never picked", a)
					}
				}
			})
		}
		t.Run(policy.String()+": no eligible endpoint means no pick", func(t *testing.T) {
			b := New(policy)
			b.Update(eps)
			if a, call, ok := b.Pick(func(netip.AddrPort) bool { return false }); ok || call != nil {
				t.Errorf("Pick = %v, %v, %v; want ok=false", a, call, ok)
			}
		})
		t.Run(policy.String()+": an empty cluster means no pick", func(t *testing.T) {
			b := New(policy)
			if _, _, ok := b.Pick(nil); ok {
				t.Error("Pick on an empty balancer returned ok")
			}
			b.Update(eps[:1])
			b.Update(nil)
			if _, _, ok := b.Pick(nil); ok {
				t.Error("Pick after Update(nil) returned ok")
			}
		})
	}
}

func TestExactSampleDrawsEveryEligiblePairUniformly(t *testing.T) {
	// The fallback used when random draws keep hitting ineligible endpoints.
	eps := New(config.LoadBalancerP2CEWMA)
	eps.Update(addrs(10))
	set := eps.set.Load().eps
	eligible := only(set[0].addr, set[4].addr, set[8].addr)
	pairs := map[[2]netip.AddrPort]int{}
	const draws = 60_000
	for range draws {
		x, y := exactSample(set, eligible, true)
		if x == nil || y == nil || x == y || !eligible(x.addr) || !eligible(y.addr) {
			t.Fatalf("exactSample = %v, %v; want two distinct eligible endpoints", x, y)
		}
		pairs[[2]netip.AddrPort{x.addr, y.addr}]++
	}
	if len(pairs) != 6 {
		t.Fatalf("saw %d ordered pairs, want all 6", len(pairs))
	}
	for p, n := range pairs {
		if got := 100 * float64(n) / draws; math.Abs(got-100.0/6) > 1 {
			t.Errorf("pair %v drawn %.2f%% of the time, want 16.67%% ± 1", p, got)
		}
	}
}

func TestDoneIsIdempotent(t *testing.T) {
	eps := addrs(1)
	b := New(config.LoadBalancerLeastRequest)
	b.Update(eps)
	_, c1, _ := b.Pick(nil)
	_, c2, _ := b.Pick(nil)
	c1.Done(time.Millisecond, false)
	c1.Done(time.Millisecond, false)
	c1.Done(time.Millisecond, true)
	if s := statsOf(t, b, eps[0]); s.InFlight != 1 {
		t.Errorf("in flight = %d after three Done on one of two calls, want 1", s.InFlight)
	}
	c2.Done(time.Millisecond, false)
	var nilCall *Call
	nilCall.Done(time.Millisecond, false) // no panic
	if s := statsOf(t, b, eps[0]); s.InFlight != 0 || s.Picks != 2 {
		t.Errorf("stats = %+v, want 0 in flight and 2 picks", s)
	}
}

func TestAnUnknownPolicyIsP2CEWMA(t *testing.T) {
	if got := New(config.LoadBalancer(42)).Policy(); got != config.LoadBalancerP2CEWMA {
		t.Errorf("Policy() = %v, want P2CEWMA", got)
	}
}

func TestEstimatePackingKeepsStampAndEstimate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		stamp uint64
		est   float64
	}{
		{"zero", 0, 0},
		{"a millisecond at the epoch", 0, 1e6},
		{"a minute after 30 years", 30 * 365 * 24 * 3600 * 1000, 60e9},
		{"an odd value keeps 1.5e-5 relative precision", 123456789, 12_345_678.9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stamp, est := unpack(pack(tc.stamp, tc.est))
			if stamp != tc.stamp {
				t.Errorf("stamp = %d, want %d", stamp, tc.stamp)
			}
			if math.Abs(est-tc.est) > tc.est*1.6e-5 {
				t.Errorf("estimate = %v, want %v within 1.5e-5", est, tc.est)
			}
		})
	}
}

func TestConcurrentPicksDoneUpdatesAndStats(t *testing.T) {
	eps := addrs(8)
	for _, policy := range []config.LoadBalancer{config.LoadBalancerP2CEWMA, config.LoadBalancerRoundRobin, config.LoadBalancerLeastRequest} {
		t.Run(policy.String()+" stays consistent under concurrent picks, updates and stats", func(t *testing.T) {
			b := New(policy)
			b.Update(eps)
			stop := make(chan struct{})
			var updater sync.WaitGroup
			updater.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					b.Update(eps[i%3 : 5+i%4])
					_ = b.Stats()
				}
			})
			var pickers sync.WaitGroup
			for g := range 8 {
				pickers.Go(func() {
					eligible := func(a netip.AddrPort) bool { return a != eps[g] }
					for i := range 2000 {
						if _, call, ok := b.Pick(eligible); ok {
							call.Done(time.Duration(i%50)*time.Millisecond, i%17 == 0)
						}
					}
				})
			}
			pickers.Wait()
			close(stop)
			updater.Wait()
			for _, s := range b.Stats() {
				if s.InFlight != 0 {
					t.Errorf("%v has %d in flight after every call finished", s.Address, s.InFlight)
				}
			}
		})
	}
}

func ExampleWeighted() {
	w, _ := NewWeighted([]uint32{90, 10})
	backends := []string{"reviews-v1", "reviews-v2"}
	fmt.Println(backends[w.Pick()] != "")
	// Output: true
}
