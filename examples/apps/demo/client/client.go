// Package client holds the demo's client tools. Each runs to completion, counts what
// happened (failures included) and returns one result that the command prints as a single
// JSON object; the end-to-end suite runs them with kubectl exec and decodes that object.
package client

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// MaxErrors is how many distinct error strings a result keeps.
const MaxErrors = 5

// Latency is in milliseconds, over the attempts that got an answer.
type Latency struct {
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

func latencyOf(ds []time.Duration) Latency {
	if len(ds) == 0 {
		return Latency{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return Latency{P50: ms(rank(0.50)), P99: ms(rank(0.99)), Max: ms(s[len(s)-1])}
}

// ms is d in milliseconds, rounded to the microsecond.
func ms(d time.Duration) float64 { return math.Round(float64(d.Microseconds())) / 1000 }

// set collects distinct non-empty strings; its list is sorted and never nil.
type set map[string]struct{}

func (s set) add(v string) {
	if v != "" {
		s[v] = struct{}{}
	}
}

func (s set) list() []string {
	out := make([]string, 0, len(s))
	for v := range s {
		out = append(out, v)
	}
	slices.Sort(out)
	return out
}

// errorList keeps the first MaxErrors distinct errors, in the order they happened.
type errorList []string

func (e *errorList) add(msg string) {
	if len(*e) < MaxErrors && !slices.Contains(*e, msg) {
		*e = append(*e, msg)
	}
}

// ParseHeaders reads repeated --header k=v (or "k: v") flags.
func ParseHeaders(kvs []string) ([][2]string, error) {
	var out [][2]string
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			k, v, ok = strings.Cut(kv, ":")
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" || strings.ContainsAny(k, " \t\r\n") {
			return nil, fmt.Errorf("--header %q: want name=value, e.g. x-user=alice", kv)
		}
		out = append(out, [2]string{k, v})
	}
	return out, nil
}
