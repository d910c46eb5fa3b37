package xds

import (
	"testing"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
	"github.com/trellis-mesh/trellis/controlplane/meshstate/meshstatetest"
)

// BenchmarkWeightChange measures what a TrafficSplit weight change costs the control plane
// for 1000 services, 10k endpoints and 2000 proxies, without the network: one generation
// (translate and marshal the shared side) plus, per proxy, its own side and the routes to
// send it. Run: go test -run=^$ -bench=WeightChange -benchtime=10x ./controlplane/xds
func BenchmarkWeightChange(b *testing.B) {
	size := meshstatetest.Size{Namespaces: 20, Services: 1000, EndpointsPerService: 10, Splits: 100, Policies: 100, AuthorizationsPerPod: true}
	st := meshstatetest.Build(size)
	store := meshstatetest.NewStore(st)
	s := New(store, Options{})
	proxies := meshstatetest.ProxyPods(size, 2000)
	gen := s.built.Load()
	views := make([]*view, len(proxies))
	routeNames := map[string]bool{}
	for n := range gen.tables[resourcev3.RouteType].entries {
		routeNames[n] = true
	}
	asked := &names{set: routeNames}
	held := make([]*sent, len(proxies))
	for i, p := range proxies {
		v, err := viewFor(gen, p, nil)
		if err != nil {
			b.Fatal(err)
		}
		views[i], held[i] = v, sentOf(v, resourcev3.RouteType, "", asked)
	}
	var split *meshstate.Split
	for _, v := range st.Splits {
		split = v
		break
	}
	b.ResetTimer()
	sentRoutes := 0
	for i := range b.N {
		changed := *split
		changed.Backends = []meshstate.Backend{{Service: split.Backends[0].Service, Weight: uint32(50 + i%40)}, split.Backends[1]}
		store.SetSplit(&changed)
		s.rebuild(time.Now())
		gen := s.built.Load()
		for j, p := range proxies {
			v, err := viewFor(gen, p, views[j])
			if err != nil {
				b.Fatal(err)
			}
			sentRoutes += len(v.changed(resourcev3.RouteType, asked, held[j]))
			views[j], held[j] = v, sentOf(v, resourcev3.RouteType, "", asked)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/change")
	b.ReportMetric(float64(sentRoutes)/float64(b.N*len(proxies)), "routes/proxy")
}
