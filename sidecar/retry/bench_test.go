package retry

import (
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

func BenchmarkBudgetRetry(b *testing.B) {
	budget := NewBudget(&config.RetryBudget{Percent: 20, MinPerSecond: 10, Window: 10 * time.Second}, nil)
	b.ReportAllocs()
	for b.Loop() {
		budget.Request()
		_ = budget.Retry()
	}
}

func BenchmarkBudgetRetryParallel(b *testing.B) {
	budget := NewBudget(&config.RetryBudget{Percent: 20, MinPerSecond: 10, Window: 10 * time.Second}, nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			budget.Request()
			_ = budget.Retry()
		}
	})
}

func BenchmarkShouldRetry(b *testing.B) {
	on := []string{"connect-failure", "refused-stream", "unavailable", "cancelled", "gateway-error"}
	o := Outcome{Status: 503, GRPCStatus: -1}
	b.Run("ShouldRetry", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = ShouldRetry(on, o)
		}
	})
	b.Run("Parse once, Match", func(b *testing.B) {
		c := Parse(on)
		b.ReportAllocs()
		for b.Loop() {
			_ = c.Match(o)
		}
	})
}

func BenchmarkBackoff(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = Backoff(3)
	}
}
