package meshstate

import (
	"net/netip"
	"testing"
	"time"
)

// TestStoreDropsWritesThatChangeNothing: an object set again with equal content (what the
// controllers do after the status writer updates a status) and a delete of an unknown key
// neither bump the version nor wake the subscribers; a real change does both.
func TestStoreDropsWritesThatChangeNothing(t *testing.T) {
	s := NewStore()
	changed := s.Subscribe()
	split := func(w uint32) *Split {
		return &Split{
			Key: Key{Namespace: "shop", Name: "canary"}, Generation: 1, Created: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
			Service: "web", Backends: []Backend{{Service: "web-v1", Weight: 100 - w}, {Service: "web-v2", Weight: w}},
		}
	}
	pod := func() *Pod {
		return &Pod{Key: Key{Namespace: "shop", Name: "web-1"}, ServiceAccount: "web", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}, Labels: map[string]string{"app": "web"}, Injected: true}
	}
	s.SetSplit(split(10))
	s.SetPod(pod())
	_, v := s.Snapshot()
	drain(changed)

	for name, write := range map[string]func(){
		"an equal split":         func() { s.SetSplit(split(10)) },
		"an equal pod":           func() { s.SetPod(pod()) },
		"the same mesh":          func() { s.SetMesh(DefaultMesh()) },
		"a delete of an unknown": func() { s.DeleteService(Key{Namespace: "shop", Name: "nope"}) },
	} {
		write()
		if _, got := s.Snapshot(); got != v {
			t.Errorf("%s: version %d → %d", name, v, got)
		}
		select {
		case <-changed:
			t.Errorf("%s: subscribers were woken", name)
		default:
		}
	}

	s.SetSplit(split(20))
	st, got := s.Snapshot()
	if got == v || st.Splits[split(20).Key].Backends[1].Weight != 20 {
		t.Errorf("a weight change: version %d → %d, weight %d", v, got, st.Splits[split(20).Key].Backends[1].Weight)
	}
	select {
	case <-changed:
	default:
		t.Errorf("a weight change did not wake the subscribers")
	}
}

func drain(ch <-chan struct{}) {
	select {
	case <-ch:
	default:
	}
}
