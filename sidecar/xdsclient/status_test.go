package xdsclient

import (
	"testing"
	"time"
)

func TestBackoffDelays(t *testing.T) {
	b := Backoff{}.withDefaults()
	for _, tc := range []struct {
		name    string
		attempt int
		max     time.Duration
	}{
		{"the first retry waits at most the initial delay", 0, 250 * time.Millisecond},
		{"each retry doubles the wait", 2, time.Second},
		{"the wait stops growing at the maximum", 30, 15 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 100 {
				d := b.delay(tc.attempt)
				if d > tc.max || d < tc.max/2 {
					t.Fatalf("delay(%d) = %s; want within [%s, %s] (jitter takes off up to half)", tc.attempt, d, tc.max/2, tc.max)
				}
			}
		})
	}
}
