package outlier

import (
	"testing"
	"time"
)

func BenchmarkEjected(b *testing.B) {
	for _, bc := range []struct {
		name  string
		eject int // how many of 16 endpoints to eject first
		probe int // which endpoint to ask about
	}{
		{"none ejected", 0, 5},
		{"one ejected, asking about another", 1, 5},
		{"one ejected, asking about it", 1, 0},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := cfg()
			c.BaseEjectionTime = time.Hour
			d := New(c, nil)
			eps := addrs(16)
			d.Update(c, eps)
			for i := range bc.eject {
				report(d, eps[i], Failure5xx, 5)
			}
			ep := eps[bc.probe]
			b.ReportAllocs()
			for b.Loop() {
				_ = d.Ejected(ep)
			}
		})
	}
}

func BenchmarkReport(b *testing.B) {
	c := cfg()
	d := New(c, nil)
	eps := addrs(16)
	d.Update(c, eps)
	b.ReportAllocs()
	for b.Loop() {
		d.Report(eps[1], Success)
		d.Report(eps[1], Failure5xx)
	}
}
