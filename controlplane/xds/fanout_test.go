package xds

import (
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/controlplane/meshstate/meshstatetest"
)

// TestFanoutHoldsRequestDecoding: while streams bound before a generation have not sent it,
// decoding requests waits; the last stream's send releases it, and an old generation holds
// nothing.
func TestFanoutHoldsRequestDecoding(t *testing.T) {
	s := New(meshstatetest.NewStore(meshstatetest.Build(testSize)), Options{})
	s.bound.Store(2)
	s.Rebuild()
	gen := s.built.Load()
	if gen.fanout.Load() != 2 {
		t.Fatalf("the fan-out counts %d streams, want the 2 bound", gen.fanout.Load())
	}
	gen.published = time.Now().Add(time.Hour) // the cap must not be what releases it
	done := make(chan struct{})
	go func() {
		s.awaitFanout()
		close(done)
	}()
	gen.sent()
	select {
	case <-done:
		t.Fatal("decoding went on with one stream still to send")
	case <-time.After(100 * time.Millisecond):
	}
	gen.sent()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("decoding still waits after every stream sent the generation")
	}

	s.Rebuild()
	s.built.Load().published = time.Now().Add(-time.Second) // published longer ago than the cap
	waited := make(chan struct{})
	go func() {
		s.awaitFanout()
		close(waited)
	}()
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatal("a generation published before the cap still holds decoding")
	}
}
