package outlier

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

// fakeClock is a time source tests move by hand.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Unix(1_700_000_000, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

func addrs(n int) []netip.AddrPort {
	out := make([]netip.AddrPort, n)
	for i := range out {
		out[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 1, byte(i + 1)}), 9090)
	}
	return out
}

// cfg is the API defaults with every endpoint ejectable.
func cfg() *config.OutlierDetection {
	return &config.OutlierDetection{
		Consecutive5xx:             5,
		ConsecutiveConnectFailures: 3,
		Interval:                   10 * time.Second,
		BaseEjectionTime:           30 * time.Second,
		MaxEjectionPercent:         100,
	}
}

func report(d *Detector, ep netip.AddrPort, r Result, n int) {
	for range n {
		d.Report(ep, r)
	}
}

func newDetector(c *config.OutlierDetection, n int) (*Detector, *fakeClock, []netip.AddrPort) {
	clk := &fakeClock{}
	eps := addrs(n)
	d := New(c, clk.now)
	d.Update(c, eps)
	return d, clk, eps
}

func stateOf(t *testing.T, d *Detector, ep netip.AddrPort) EndpointState {
	t.Helper()
	for _, s := range d.States() {
		if s.Address == ep {
			return s
		}
	}
	t.Fatalf("no state for %v", ep)
	return EndpointState{}
}

func TestConsecutiveFailures(t *testing.T) {
	for _, tc := range []struct {
		name    string
		results []Result
		ejected bool
	}{
		{"four 5xx in a row of five do not eject", repeat(Failure5xx, 4), false},
		{"five 5xx in a row eject", repeat(Failure5xx, 5), true},
		{"a success resets the 5xx counter", concat(repeat(Failure5xx, 4), []Result{Success}, repeat(Failure5xx, 4)), false},
		{"two connect failures in a row of three do not eject", repeat(ConnectFailure, 2), false},
		{"three connect failures in a row eject", repeat(ConnectFailure, 3), true},
		{"a success resets the connect-failure counter", concat(repeat(ConnectFailure, 2), []Result{Success}, repeat(ConnectFailure, 2)), false},
		{"a 5xx resets the connect-failure counter (the endpoint was reached)", concat(repeat(ConnectFailure, 2), []Result{Failure5xx}, repeat(ConnectFailure, 2)), false},
		{"connect failures do not reset the 5xx counter", concat(repeat(Failure5xx, 2), []Result{ConnectFailure}, repeat(Failure5xx, 2), []Result{ConnectFailure}, repeat(Failure5xx, 1)), true},
		{"connect failures do not count toward the 5xx threshold", concat(repeat(Failure5xx, 4), []Result{ConnectFailure}), false},
		{"5xx do not count toward the connect-failure threshold", concat(repeat(ConnectFailure, 2), []Result{Failure5xx}), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, _, eps := newDetector(cfg(), 4)
			for _, r := range tc.results {
				d.Report(eps[0], r)
			}
			if got := d.Ejected(eps[0]); got != tc.ejected {
				t.Errorf("Ejected = %v, want %v (state %+v)", got, tc.ejected, stateOf(t, d, eps[0]))
			}
			for _, other := range eps[1:] {
				if d.Ejected(other) {
					t.Errorf("%v ejected though it had no failure", other)
				}
			}
		})
	}
}

func repeat(r Result, n int) []Result {
	out := make([]Result, n)
	for i := range out {
		out[i] = r
	}
	return out
}

func concat(parts ...[]Result) []Result {
	var out []Result
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func TestAThresholdOfZeroTurnsTheCheckOff(t *testing.T) {
	c := cfg()
	c.Consecutive5xx = 0
	c.ConsecutiveConnectFailures = 0
	d, _, eps := newDetector(c, 4)
	report(d, eps[0], Failure5xx, 100)
	report(d, eps[0], ConnectFailure, 100)
	if d.Ejected(eps[0]) {
		t.Error("ejected with both checks off")
	}
}

func TestMaxEjectionPercent(t *testing.T) {
	for _, tc := range []struct {
		name      string
		endpoints int
		percent   uint32
		want      int
	}{
		{"20% of 10 endpoints ejects at most 2", 10, 20, 2},
		{"10% of 10 endpoints ejects at most 1", 10, 10, 1},
		{"10% of 9 endpoints ejects 1 (ejecting is allowed while under 10% are out, as in Envoy)", 9, 10, 1},
		{"10% of 3 endpoints ejects 1, so small Services are protected too", 3, 10, 1},
		{"50% of 3 endpoints ejects 2 (the second while 33% are out)", 3, 50, 2},
		{"100% of 3 endpoints keeps one in", 3, 100, 2},
		{"100% of 1 endpoint keeps it in", 1, 100, 0},
		{"0% ejects none", 10, 0, 0},
		{"a percentage over 100 is 100 and keeps one in", 4, 250, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg()
			c.MaxEjectionPercent = tc.percent
			d, _, eps := newDetector(c, tc.endpoints)
			for _, ep := range eps {
				report(d, ep, Failure5xx, 5)
			}
			got := 0
			for _, ep := range eps {
				if d.Ejected(ep) {
					got++
				}
			}
			if got != tc.want {
				t.Errorf("%d endpoints ejected, want %d", got, tc.want)
			}
			if refused := d.EjectionsRefused(); refused != uint64(tc.endpoints-tc.want) {
				t.Errorf("EjectionsRefused() = %d, want %d", refused, tc.endpoints-tc.want)
			}
		})
	}
}

func TestARefusedEjectionIsTriedAgainAfterAsManyFailures(t *testing.T) {
	c := cfg()
	c.MaxEjectionPercent = 50
	d, clk, eps := newDetector(c, 2)
	report(d, eps[0], Failure5xx, 5) // 1 of 2 = 50%: allowed
	report(d, eps[1], Failure5xx, 5) // 2 of 2: refused
	if d.Ejected(eps[1]) || !d.Ejected(eps[0]) {
		t.Fatal("want eps[0] out and eps[1] in")
	}
	if s := stateOf(t, d, eps[1]); s.Consecutive5xx != 0 {
		t.Errorf("counter = %d after a refused ejection, want 0", s.Consecutive5xx)
	}
	clk.advance(30 * time.Second) // eps[0] comes back
	report(d, eps[1], Failure5xx, 4)
	if d.Ejected(eps[1]) {
		t.Fatal("ejected after 4 failures")
	}
	report(d, eps[1], Failure5xx, 1)
	if !d.Ejected(eps[1]) {
		t.Error("not ejected after 5 more failures once there was room")
	}
}

func TestEjectionTimeGrowsWithRepeats(t *testing.T) {
	c := cfg()
	c.Interval = time.Hour // no forgiveness within this test
	d, clk, eps := newDetector(c, 4)
	for i, want := range []time.Duration{30 * time.Second, 60 * time.Second, 90 * time.Second, 120 * time.Second} {
		report(d, eps[0], Failure5xx, 5)
		if !d.Ejected(eps[0]) {
			t.Fatalf("ejection %d did not happen", i+1)
		}
		s := stateOf(t, d, eps[0])
		if got := s.EjectedUntil.Sub(clk.now()); got != want {
			t.Errorf("ejection %d lasts %v, want %v", i+1, got, want)
		}
		if s.TimesEjected != uint64(i+1) || s.Multiplier != uint32(i+1) {
			t.Errorf("ejection %d: times ejected %d, multiplier %d", i+1, s.TimesEjected, s.Multiplier)
		}
		clk.advance(want - time.Nanosecond)
		if !d.Ejected(eps[0]) {
			t.Fatalf("ejection %d ended early", i+1)
		}
		clk.advance(time.Nanosecond)
	}
}

func TestEjectionTimeIsCappedAt300sOrTheBase(t *testing.T) {
	for _, tc := range []struct {
		name string
		base time.Duration
		cap  time.Duration
	}{
		{"a 30s base is capped at 300s after ten ejections", 30 * time.Second, 300 * time.Second},
		{"a base above 300s is its own cap", 400 * time.Second, 400 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg()
			c.BaseEjectionTime = tc.base
			c.Interval = 24 * time.Hour
			d, clk, eps := newDetector(c, 4)
			var last time.Duration
			for range 15 {
				report(d, eps[0], Failure5xx, 5)
				last = stateOf(t, d, eps[0]).EjectedUntil.Sub(clk.now())
				if last > tc.cap {
					t.Fatalf("an ejection lasts %v, over the %v cap", last, tc.cap)
				}
				clk.advance(last)
			}
			if last != tc.cap {
				t.Errorf("the 15th ejection lasts %v, want the %v cap", last, tc.cap)
			}
			if s := stateOf(t, d, eps[0]); int64(s.Multiplier)*int64(tc.base) > int64(tc.cap)+int64(tc.base) {
				t.Errorf("multiplier %d kept growing past the cap", s.Multiplier)
			}
		})
	}
}

func TestEachIntervalInForgivesOneEjection(t *testing.T) {
	d, clk, eps := newDetector(cfg(), 4) // interval 10s, base 30s
	for range 3 {
		report(d, eps[0], Failure5xx, 5)
		clk.advance(stateOf(t, d, eps[0]).EjectedUntil.Sub(clk.now()))
	}
	// Multiplier 3; 25s in forgives 2: the next ejection is 2 × 30s.
	clk.advance(25 * time.Second)
	report(d, eps[0], Failure5xx, 5)
	s := stateOf(t, d, eps[0])
	if got := s.EjectedUntil.Sub(clk.now()); got != 60*time.Second {
		t.Errorf("ejection after 25s in lasts %v, want 60s (multiplier 3 − 2 + 1)", got)
	}
	if s.TimesEjected != 4 {
		t.Errorf("times ejected = %d, want 4", s.TimesEjected)
	}
	// A long time in forgives everything.
	clk.advance(60*time.Second + time.Hour)
	report(d, eps[0], Failure5xx, 5)
	if got := stateOf(t, d, eps[0]).EjectedUntil.Sub(clk.now()); got != 30*time.Second {
		t.Errorf("ejection after an hour in lasts %v, want the 30s base", got)
	}
}

func TestAnEjectedEndpointReturnsWhenItsTimePasses(t *testing.T) {
	d, clk, eps := newDetector(cfg(), 4)
	report(d, eps[0], ConnectFailure, 3)
	if !d.Ejected(eps[0]) {
		t.Fatal("not ejected")
	}
	clk.advance(29 * time.Second)
	if !d.Ejected(eps[0]) {
		t.Fatal("back before 30s")
	}
	clk.advance(time.Second)
	if d.Ejected(eps[0]) {
		t.Fatal("still out after 30s")
	}
	if s := stateOf(t, d, eps[0]); s.Ejected || !s.EjectedUntil.IsZero() {
		t.Errorf("state after return = %+v, want in", s)
	}
	// The books are settled: the fast path answers again.
	if got := d.snap.Load().ejected.Load(); got != 0 {
		t.Errorf("ejected count = %d after the return, want 0", got)
	}
}

func TestANilConfigurationNeverEjects(t *testing.T) {
	clk := &fakeClock{}
	eps := addrs(4)
	d := New(nil, clk.now)
	d.Update(nil, eps)
	report(d, eps[0], Failure5xx, 1000)
	report(d, eps[0], ConnectFailure, 1000)
	if d.Ejected(eps[0]) {
		t.Error("ejected with outlier detection off")
	}
	var none *Detector
	none.Report(eps[0], Failure5xx)
	if none.Ejected(eps[0]) {
		t.Error("a nil detector ejected")
	}
}

func TestUpdate(t *testing.T) {
	t.Run("the state of remaining endpoints is kept", func(t *testing.T) {
		d, _, eps := newDetector(cfg(), 10)
		report(d, eps[0], Failure5xx, 5)
		report(d, eps[1], Failure5xx, 3)
		d.Update(cfg(), append([]netip.AddrPort{eps[0], eps[1], eps[0]}, eps[3:]...))
		if !d.Ejected(eps[0]) {
			t.Error("an Update returned an ejected endpoint")
		}
		if s := stateOf(t, d, eps[1]); s.Consecutive5xx != 3 {
			t.Errorf("counter = %d after Update, want 3", s.Consecutive5xx)
		}
		report(d, eps[1], Failure5xx, 2)
		if !d.Ejected(eps[1]) {
			t.Error("the kept counter did not reach the threshold")
		}
		if n := len(d.States()); n != 9 {
			t.Errorf("%d states, want 9 (eps[2] removed, duplicate dropped)", n)
		}
	})
	t.Run("a removed endpoint's reports are ignored", func(t *testing.T) {
		d, _, eps := newDetector(cfg(), 4)
		d.Update(cfg(), eps[1:])
		report(d, eps[0], Failure5xx, 10)
		if d.Ejected(eps[0]) {
			t.Error("an endpoint outside the set was ejected")
		}
	})
	t.Run("turning detection off returns every ejected endpoint", func(t *testing.T) {
		d, _, eps := newDetector(cfg(), 4)
		report(d, eps[0], Failure5xx, 5)
		d.Update(nil, eps)
		if d.Ejected(eps[0]) {
			t.Error("still ejected with detection off")
		}
	})
	t.Run("a shrinking set ends ejections to keep one endpoint in", func(t *testing.T) {
		d, clk, eps := newDetector(cfg(), 3)
		report(d, eps[0], Failure5xx, 5)
		clk.advance(time.Second)
		report(d, eps[1], Failure5xx, 5)
		d.Update(cfg(), eps[:2]) // both remaining endpoints are out
		if d.Ejected(eps[0]) {
			t.Error("the ejection closest to its end was kept")
		}
		if !d.Ejected(eps[1]) {
			t.Error("the later ejection was ended too")
		}
	})
	t.Run("a lower percentage ends ejections beyond it", func(t *testing.T) {
		d, _, eps := newDetector(cfg(), 4)
		report(d, eps[0], Failure5xx, 5)
		report(d, eps[1], Failure5xx, 5)
		c := cfg()
		c.MaxEjectionPercent = 25
		d.Update(c, eps)
		if n := btoi(d.Ejected(eps[0])) + btoi(d.Ejected(eps[1])); n != 1 {
			t.Errorf("%d endpoints out under 25%% of 4, want 1", n)
		}
	})
	t.Run("new thresholds apply to the next failures", func(t *testing.T) {
		d, _, eps := newDetector(cfg(), 4)
		c := cfg()
		c.Consecutive5xx = 2
		d.Update(c, eps)
		report(d, eps[0], Failure5xx, 2)
		if !d.Ejected(eps[0]) {
			t.Error("not ejected at the new threshold")
		}
	})
	t.Run("zero durations take the API defaults", func(t *testing.T) {
		c := cfg()
		c.BaseEjectionTime, c.Interval = 0, 0
		d, clk, eps := newDetector(c, 4)
		report(d, eps[0], Failure5xx, 5)
		if got := stateOf(t, d, eps[0]).EjectedUntil.Sub(clk.now()); got != DefaultBaseEjectionTime {
			t.Errorf("ejection lasts %v, want %v", got, DefaultBaseEjectionTime)
		}
	})
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestConcurrentReportsEjectedAndUpdates(t *testing.T) {
	c := cfg()
	c.MaxEjectionPercent = 50
	d, clk, eps := newDetector(c, 8)
	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			d.Update(c, eps[:4+i%5])
			clk.advance(time.Second)
			_ = d.States()
		}
	})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 5000 {
				ep := eps[(g+i)%len(eps)]
				switch i % 7 {
				case 0:
					d.Report(ep, Success)
				case 1, 2, 3:
					d.Report(ep, Failure5xx)
				default:
					d.Report(ep, ConnectFailure)
				}
				_ = d.Ejected(ep)
			}
		})
	}
	wg.Wait()
	close(stop)
	bg.Wait()
	d.Update(c, eps)
	out := 0
	for _, s := range d.States() {
		if s.Ejected {
			out++
		}
	}
	if out > 4 {
		t.Errorf("%d of 8 endpoints out, over 50%%", out)
	}
}
