package balance

import (
	"net/netip"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

var sinkCall *Call

func BenchmarkPick(b *testing.B) {
	eps := addrs(16)
	ineligible := eps[3]
	for _, policy := range []config.LoadBalancer{config.LoadBalancerP2CEWMA, config.LoadBalancerRoundRobin, config.LoadBalancerLeastRequest} {
		for _, bc := range []struct {
			name     string
			eligible func(netip.AddrPort) bool
		}{
			{"all eligible", nil},
			{"one of 16 ineligible", func(a netip.AddrPort) bool { return a != ineligible }},
		} {
			b.Run(policy.String()+"/"+bc.name, func(b *testing.B) {
				bal := New(policy)
				bal.Update(eps)
				b.ReportAllocs()
				for b.Loop() {
					_, call, ok := bal.Pick(bc.eligible)
					if ok {
						call.Done(time.Millisecond, false)
					}
				}
			})
		}
	}
	// The Call outlives the caller's frame: the one allocation a Pick can cost.
	b.Run("P2CEWMA/call stored", func(b *testing.B) {
		bal := New(config.LoadBalancerP2CEWMA)
		bal.Update(eps)
		b.ReportAllocs()
		for b.Loop() {
			_, sinkCall, _ = bal.Pick(nil)
			sinkCall.Done(time.Millisecond, false)
		}
	})
	b.Run("P2CEWMA/parallel", func(b *testing.B) {
		bal := New(config.LoadBalancerP2CEWMA)
		bal.Update(eps)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				_, call, ok := bal.Pick(nil)
				if ok {
					call.Done(time.Millisecond, false)
				}
			}
		})
	})
}

func BenchmarkWeightedPick(b *testing.B) {
	for _, bc := range []struct {
		name    string
		weights []uint32
	}{
		{"2 backends", []uint32{90, 10}},
		{"32 backends", func() []uint32 {
			w := make([]uint32, 32)
			for i := range w {
				w[i] = uint32(i + 1)
			}
			return w
		}()},
	} {
		b.Run(bc.name, func(b *testing.B) {
			w, _ := NewWeighted(bc.weights)
			b.ReportAllocs()
			for b.Loop() {
				_ = w.Pick()
			}
		})
	}
}
