package xdsclient

import (
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// Backoff spaces reconnection attempts: Initial, doubling up to Max, each delay shortened by
// a random part of up to Jitter of it so that many sidecars do not reconnect in step.
type Backoff struct {
	Initial time.Duration // default 250ms
	Max     time.Duration // default 15s
	Jitter  float64       // 0 to 1, default 0.5
}

func (b Backoff) withDefaults() Backoff {
	if b.Initial <= 0 {
		b.Initial = 250 * time.Millisecond
	}
	if b.Max <= 0 {
		b.Max = 15 * time.Second
	}
	if b.Max < b.Initial {
		b.Max = b.Initial
	}
	if b.Jitter <= 0 || b.Jitter > 1 {
		b.Jitter = 0.5
	}
	return b
}

// delay is the wait before attempt n (0 for the first retry).
func (b Backoff) delay(n int) time.Duration {
	d := b.Initial
	for i := 0; i < n && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	return d - time.Duration(rand.Float64()*b.Jitter*float64(d))
}

// Status is the state of the xDS client, for the admin page (/xds).
type Status struct {
	Node      string `json:"node"`
	Connected bool   `json:"connected"`
	// Ready: a first configuration was delivered. It stays true while the control plane
	// is unreachable: the last good configuration stays in effect.
	Ready bool `json:"ready"`
	// ConfigVersion is the Version of the configuration in effect, delivered at ConfigTime.
	ConfigVersion string    `json:"configVersion,omitempty"`
	ConfigTime    time.Time `json:"configTime,omitzero"`
	// Streams counts the ADS streams opened; StreamError is why the last one ended.
	Streams     int    `json:"streams"`
	StreamError string `json:"streamError,omitempty"`
	// Waiting lists the references an update waits for before it can be applied.
	Waiting []string     `json:"waiting,omitempty"`
	Types   []TypeStatus `json:"types"`
}

// TypeStatus is the state of one resource type on the stream.
type TypeStatus struct {
	TypeURL string `json:"typeUrl"`
	// Version was the last one accepted (ACKed), with Resources resources.
	Version   string `json:"version,omitempty"`
	Resources int    `json:"resources"`
	// Nonce is that of the last response; Pending the version received and waiting for
	// the resources it refers to.
	Nonce   string `json:"nonce,omitempty"`
	Pending string `json:"pending,omitempty"`
	// Subscribed are the names asked for (empty: all of them).
	Subscribed []string `json:"subscribed,omitempty"`
	// LastError is why version LastErrorVersion was rejected (NACKed), at LastErrorTime.
	LastError        string    `json:"lastError,omitempty"`
	LastErrorVersion string    `json:"lastErrorVersion,omitempty"`
	LastErrorTime    time.Time `json:"lastErrorTime,omitzero"`
}

// statusBox guards the Status the stream loop updates and Status() reads.
type statusBox struct {
	mu sync.Mutex
	s  Status
}

func newStatusBox(node string) *statusBox {
	b := &statusBox{s: Status{Node: node}}
	for _, t := range typeOrder {
		b.s.Types = append(b.s.Types, TypeStatus{TypeURL: t})
	}
	return b
}

func (b *statusBox) update(fn func(*Status)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	fn(&b.s)
}

func (b *statusBox) typ(typeURL string, fn func(*TypeStatus)) {
	b.update(func(s *Status) {
		for i := range s.Types {
			if s.Types[i].TypeURL == typeURL {
				fn(&s.Types[i])
			}
		}
	})
}

func (b *statusBox) get() Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.s
	s.Waiting = slices.Clone(s.Waiting)
	s.Types = slices.Clone(s.Types)
	for i := range s.Types {
		s.Types[i].Subscribed = slices.Clone(s.Types[i].Subscribed)
	}
	return s
}
