package xds

import (
	"context"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
	"github.com/trellis-mesh/trellis/controlplane/meshstate/meshstatetest"
)

// BenchmarkRebuild measures one rebuild after a TrafficSplit weight change: translate the
// model and update the snapshot of every connected proxy, for 1000 services, 10k endpoints
// and 2000 proxies. Run: go test -run=^$ -bench=Rebuild -benchtime=10x ./controlplane/xds
func BenchmarkRebuild(b *testing.B) {
	size := meshstatetest.Size{Namespaces: 20, Services: 1000, EndpointsPerService: 10, Splits: 100, Policies: 100, AuthorizationsPerPod: true}
	st := meshstatetest.Build(size)
	store := meshstate.NewStore()
	store.SetMesh(st.Mesh)
	for _, v := range st.Namespaces {
		store.SetNamespace(v)
	}
	for _, v := range st.Services {
		store.SetService(v)
	}
	for _, v := range st.EndpointSlices {
		store.SetEndpointSlice(v)
	}
	for _, v := range st.Pods {
		store.SetPod(v)
	}
	for _, v := range st.Splits {
		store.SetSplit(v)
	}
	for _, v := range st.TrafficPolicies {
		store.SetTrafficPolicy(v)
	}
	for _, v := range st.AuthorizationPolicies {
		store.SetAuthorizationPolicy(v)
	}
	s := New(store, Options{PeerIdentity: func(context.Context) (spiffeid.ID, error) { return spiffeid.ID{}, nil }})
	proxies := meshstatetest.ProxyPods(size, 2000)
	for _, p := range proxies {
		s.nodes[NodeID(p)] = 1
	}
	s.rebuild(time.Now()) // first snapshots
	var split *meshstate.Split
	for _, v := range st.Splits {
		split = v
		break
	}
	b.ResetTimer()
	for i := range b.N {
		changed := *split
		changed.Backends = []meshstate.Backend{{Service: split.Backends[0].Service, Weight: uint32(50 + i%40)}, split.Backends[1]}
		store.SetSplit(&changed)
		s.rebuild(time.Now())
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/rebuild")
	b.ReportMetric(float64(len(proxies)), "proxies")
}
