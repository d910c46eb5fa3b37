package retry

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

func TestShouldRetry(t *testing.T) {
	var (
		connectFailure = Outcome{ConnectFailure: true, GRPCStatus: -1}
		refusedStream  = Outcome{RefusedStream: true, GRPCStatus: -1}
		reset          = Outcome{Reset: true, GRPCStatus: -1}
		status         = func(s int) Outcome { return Outcome{Status: s, GRPCStatus: -1} }
		grpc           = func(g int) Outcome { return Outcome{Status: 200, GRPCStatus: g} }
	)
	for _, tc := range []struct {
		name string
		on   []string
		o    Outcome
		want bool
	}{
		// connect-failure
		{"connect-failure retries a connect failure", []string{"connect-failure"}, connectFailure, true},
		{"connect-failure does not retry a reset", []string{"connect-failure"}, reset, false},
		{"connect-failure does not retry a refused stream", []string{"connect-failure"}, refusedStream, false},
		{"connect-failure does not retry a 503", []string{"connect-failure"}, status(503), false},
		// refused-stream
		{"refused-stream retries a refused stream", []string{"refused-stream"}, refusedStream, true},
		{"refused-stream does not retry a reset", []string{"refused-stream"}, reset, false},
		{"refused-stream does not retry a connect failure", []string{"refused-stream"}, connectFailure, false},
		// reset
		{"reset retries a reset", []string{"reset"}, reset, true},
		{"reset retries a connect failure (it is a reset too)", []string{"reset"}, connectFailure, true},
		{"reset retries a refused stream (it is a reset too)", []string{"reset"}, refusedStream, true},
		{"reset does not retry a 503 response", []string{"reset"}, status(503), false},
		// 5xx
		{"5xx retries a 500", []string{"5xx"}, status(500), true},
		{"5xx retries a 599", []string{"5xx"}, status(599), true},
		{"5xx retries a reset (the 503 it turns into)", []string{"5xx"}, reset, true},
		{"5xx retries a connect failure", []string{"5xx"}, connectFailure, true},
		{"5xx retries a refused stream", []string{"5xx"}, refusedStream, true},
		{"5xx does not retry a 499", []string{"5xx"}, status(499), false},
		{"5xx does not retry a 200", []string{"5xx"}, status(200), false},
		{"5xx does not retry a gRPC UNAVAILABLE over 200", []string{"5xx"}, grpc(14), false},
		// gateway-error
		{"gateway-error retries a 502", []string{"gateway-error"}, status(502), true},
		{"gateway-error retries a 503", []string{"gateway-error"}, status(503), true},
		{"gateway-error retries a 504", []string{"gateway-error"}, status(504), true},
		{"gateway-error does not retry a 500", []string{"gateway-error"}, status(500), false},
		{"gateway-error does not retry a 505", []string{"gateway-error"}, status(505), false},
		{"gateway-error retries a reset", []string{"gateway-error"}, reset, true},
		{"gateway-error retries a connect failure", []string{"gateway-error"}, connectFailure, true},
		// retriable-4xx
		{"retriable-4xx retries a 409", []string{"retriable-4xx"}, status(409), true},
		{"retriable-4xx does not retry a 429", []string{"retriable-4xx"}, status(429), false},
		{"retriable-4xx does not retry a 404", []string{"retriable-4xx"}, status(404), false},
		{"retriable-4xx does not retry a reset", []string{"retriable-4xx"}, reset, false},
		// gRPC
		{"cancelled retries gRPC CANCELLED", []string{"cancelled"}, grpc(1), true},
		{"deadline-exceeded retries gRPC DEADLINE_EXCEEDED", []string{"deadline-exceeded"}, grpc(4), true},
		{"resource-exhausted retries gRPC RESOURCE_EXHAUSTED", []string{"resource-exhausted"}, grpc(8), true},
		{"internal retries gRPC INTERNAL", []string{"internal"}, grpc(13), true},
		{"unavailable retries gRPC UNAVAILABLE", []string{"unavailable"}, grpc(14), true},
		{"unavailable does not retry gRPC INTERNAL", []string{"unavailable"}, grpc(13), false},
		{"cancelled does not retry gRPC UNKNOWN", []string{"cancelled"}, grpc(2), false},
		{"internal does not retry gRPC OK", []string{"internal"}, grpc(0), false},
		{"unavailable does not retry a response without a gRPC status", []string{"unavailable"}, status(200), false},
		{"the gRPC conditions do not retry a reset", []string{"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}, reset, false},
		{"a gRPC condition applies whatever the HTTP status (trailers-only on 200)", []string{"unavailable"}, Outcome{Status: 200, GRPCStatus: 14}, true},
		// lists
		{"the API default list retries gRPC UNAVAILABLE", []string{"connect-failure", "refused-stream", "unavailable", "cancelled", "gateway-error"}, grpc(14), true},
		{"the API default list does not retry a 500", []string{"connect-failure", "refused-stream", "unavailable", "cancelled", "gateway-error"}, status(500), false},
		{"an empty list retries nothing", nil, connectFailure, false},
		{"an unknown name is ignored", []string{"retriable-headers"}, status(503), false},
		{"spaces around names are ignored", []string{" gateway-error "}, status(503), true},
		{"no failure is never retried", []string{"5xx", "reset", "connect-failure"}, Outcome{GRPCStatus: -1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ShouldRetry(tc.on, tc.o); got != tc.want {
				t.Errorf("ShouldRetry(%q, %+v) = %v, want %v", tc.on, tc.o, got, tc.want)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	for _, tc := range []struct {
		name    string
		attempt int
		ceiling time.Duration
	}{
		{"the first retry waits up to 25ms", 1, 25 * time.Millisecond},
		{"the second retry waits up to 50ms", 2, 50 * time.Millisecond},
		{"the third retry waits up to 100ms", 3, 100 * time.Millisecond},
		{"the fourth retry waits up to 200ms", 4, 200 * time.Millisecond},
		{"the fifth retry is capped at 250ms", 5, 250 * time.Millisecond},
		{"the hundredth retry is capped at 250ms", 100, 250 * time.Millisecond},
		{"attempt 0 counts as the first retry", 0, 25 * time.Millisecond},
		{"a negative attempt counts as the first retry", -3, 25 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := backoffCeiling(tc.attempt); got != tc.ceiling {
				t.Fatalf("ceiling = %v, want %v", got, tc.ceiling)
			}
			var lo, hi time.Duration = tc.ceiling, 0
			for range 10_000 {
				d := Backoff(tc.attempt)
				if d < 0 || d >= tc.ceiling {
					t.Fatalf("Backoff(%d) = %v, outside [0, %v)", tc.attempt, d, tc.ceiling)
				}
				lo, hi = min(lo, d), max(hi, d)
			}
			// Full jitter: the whole range is used.
			if lo > tc.ceiling/20 || hi < tc.ceiling*19/20 {
				t.Errorf("10000 backoffs spanned [%v, %v], want about [0, %v)", lo, hi, tc.ceiling)
			}
		})
	}
}

// fakeClock is a time source tests move by hand.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Unix(1_700_000_000, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// retries counts how many of n Retry calls the budget allows.
func retries(b *Budget, n int) int {
	allowed := 0
	for range n {
		if b.Retry() {
			allowed++
		}
	}
	return allowed
}

func requests(b *Budget, n int) {
	for range n {
		b.Request()
	}
}

func TestBudget(t *testing.T) {
	window := 10 * time.Second
	for _, tc := range []struct {
		name   string
		budget *config.RetryBudget
		run    func(t *testing.T, b *Budget, clk *fakeClock)
	}{
		{"at 20% and min 0, 100 requests allow 20 retries then refuse", &config.RetryBudget{Percent: 20, Window: window}, func(t *testing.T, b *Budget, _ *fakeClock) {
			requests(b, 100)
			if got := retries(b, 30); got != 20 {
				t.Errorf("%d of 30 retries allowed, want 20", got)
			}
			if b.Retry() {
				t.Error("a retry past the budget was allowed")
			}
			if req, ret := b.Counts(); req != 100 || ret != 20 {
				t.Errorf("Counts() = %d, %d; want 100, 20 (refused retries are not counted)", req, ret)
			}
		}},
		{"more requests make room for more retries", &config.RetryBudget{Percent: 20, Window: window}, func(t *testing.T, b *Budget, _ *fakeClock) {
			requests(b, 100)
			retries(b, 20)
			requests(b, 10)
			if got := retries(b, 5); got != 2 {
				t.Errorf("%d of 5 retries allowed after 10 more requests, want 2", got)
			}
		}},
		{"without requests and min 0 no retry is allowed", &config.RetryBudget{Percent: 20, Window: window}, func(t *testing.T, b *Budget, _ *fakeClock) {
			if b.Retry() {
				t.Error("a retry was allowed with no request and no floor")
			}
		}},
		{"the min per second floor allows retries without requests", &config.RetryBudget{Percent: 20, MinPerSecond: 2, Window: window}, func(t *testing.T, b *Budget, _ *fakeClock) {
			if got := retries(b, 30); got != 20 {
				t.Errorf("%d of 30 retries allowed, want 2/s × 10s = 20", got)
			}
		}},
		{"the floor adds to the percentage", &config.RetryBudget{Percent: 10, MinPerSecond: 1, Window: window}, func(t *testing.T, b *Budget, _ *fakeClock) {
			requests(b, 50)
			if got := retries(b, 30); got != 15 {
				t.Errorf("%d of 30 retries allowed, want 10%% × 50 + 1/s × 10s = 15", got)
			}
		}},
		{"a fractional limit is allowed up to below it", &config.RetryBudget{Percent: 25, Window: window}, func(t *testing.T, b *Budget, _ *fakeClock) {
			requests(b, 10)
			if got := retries(b, 5); got != 3 {
				t.Errorf("%d of 5 retries allowed, want 3 (retries < 2.5)", got)
			}
		}},
		{"the window slides and forgets old counts", &config.RetryBudget{Percent: 20, Window: window}, func(t *testing.T, b *Budget, clk *fakeClock) {
			requests(b, 100)
			if got := retries(b, 20); got != 20 {
				t.Fatalf("%d of 20 retries allowed, want 20", got)
			}
			clk.advance(5 * time.Second)
			if b.Retry() {
				t.Fatal("a retry was allowed 5s later with the budget spent")
			}
			requests(b, 50) // 150 requests in window: 30 retries allowed, 20 used
			if got := retries(b, 20); got != 10 {
				t.Fatalf("%d of 20 retries allowed after 50 more requests, want 10", got)
			}
			clk.advance(5*time.Second + time.Millisecond)
			// The first 100 requests and 20 retries have left the window; 50 requests
			// and 10 retries remain: 0 more allowed.
			if req, ret := b.Counts(); req != 50 || ret != 10 {
				t.Fatalf("Counts() = %d, %d 10s after the first requests; want 50, 10", req, ret)
			}
			if b.Retry() {
				t.Error("a retry was allowed with 10 retries for 50 requests at 20%")
			}
			clk.advance(5 * time.Second)
			if req, ret := b.Counts(); req != 0 || ret != 0 {
				t.Errorf("Counts() = %d, %d after the whole window passed; want 0, 0", req, ret)
			}
			requests(b, 10)
			if got := retries(b, 5); got != 2 {
				t.Errorf("%d of 5 retries allowed with a fresh window of 10 requests, want 2", got)
			}
		}},
		{"a count leaves the window between 0.9 and 1 window later", &config.RetryBudget{Percent: 100, Window: window}, func(t *testing.T, b *Budget, clk *fakeClock) {
			clk.advance(500 * time.Millisecond) // mid-bucket
			requests(b, 10)
			clk.advance(9 * time.Second) // 9.5s later: still counted
			if req, _ := b.Counts(); req != 10 {
				t.Fatalf("requests = %d 9.5s later, want 10", req)
			}
			clk.advance(500 * time.Millisecond) // 10s later: gone
			if req, _ := b.Counts(); req != 0 {
				t.Errorf("requests = %d a window later, want 0", req)
			}
		}},
		{"a bucket reused after many windows starts from zero", &config.RetryBudget{Percent: 20, Window: window}, func(t *testing.T, b *Budget, clk *fakeClock) {
			requests(b, 100)
			retries(b, 20)
			clk.advance(10 * window) // same bucket index, ten windows on
			requests(b, 5)
			if req, ret := b.Counts(); req != 5 || ret != 0 {
				t.Errorf("Counts() = %d, %d; want 5, 0", req, ret)
			}
		}},
		{"a window of 0 is the 10s default", &config.RetryBudget{Percent: 0, MinPerSecond: 1}, func(t *testing.T, b *Budget, clk *fakeClock) {
			if got := retries(b, 20); got != 10 {
				t.Errorf("%d of 20 retries allowed, want 1/s × 10s = 10", got)
			}
		}},
		{"a clock that steps back keeps every count in the window", &config.RetryBudget{Percent: 20, Window: window}, func(t *testing.T, b *Budget, clk *fakeClock) {
			clk.advance(3 * time.Second)
			requests(b, 50)
			clk.advance(-2 * time.Second)
			requests(b, 50)
			if got := retries(b, 30); got != 20 {
				t.Errorf("%d of 30 retries allowed, want 20", got)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := &fakeClock{}
			b := NewBudget(tc.budget, clk.now)
			if b.Unlimited() {
				t.Fatal("a configured budget is unlimited")
			}
			tc.run(t, b, clk)
		})
	}
}

func TestANilBudgetConfigurationIsUnlimited(t *testing.T) {
	b := NewBudget(nil, nil)
	if !b.Unlimited() {
		t.Fatal("Unlimited() = false")
	}
	if got := retries(b, 1000); got != 1000 {
		t.Errorf("%d of 1000 retries allowed without a single request, want all", got)
	}
	b.Request()
	var none *Budget
	none.Request()
	if !none.Retry() || !none.Unlimited() {
		t.Error("a nil *Budget must allow every retry")
	}
}

func TestConcurrentRetriesNeverOvershootTheBudget(t *testing.T) {
	clk := &fakeClock{}
	b := NewBudget(&config.RetryBudget{Percent: 20, MinPerSecond: 0, Window: 10 * time.Second}, clk.now)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { requests(b, 125) })
	}
	wg.Wait()
	var allowed atomic.Int64
	for range 16 {
		wg.Go(func() { allowed.Add(int64(retries(b, 50))) })
	}
	wg.Wait()
	if got := allowed.Load(); got != 200 {
		t.Errorf("%d retries allowed for 1000 requests at 20%%, want exactly 200", got)
	}
}
