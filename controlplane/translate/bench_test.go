package translate

import (
	"testing"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
	"github.com/trellis-mesh/trellis/controlplane/meshstate/meshstatetest"
)

// benchSize is the mesh of the control-plane targets: 1000 Services (one port each), 10k
// injected endpoints, 100 TrafficSplits, 100 TrafficPolicies, one AuthorizationPolicy per
// namespace, and 2000 proxies.
var benchSize = meshstatetest.Size{Namespaces: 10, Services: 1000, EndpointsPerService: 10, Splits: 100, Policies: 100, AuthorizationsPerPod: true}

const benchProxies = 2000

// BenchmarkBuild translates that mesh:
//
//   - NewBuilder: the shared outbound side, once per State;
//   - Build: one proxy with a shared Builder (ns/op is per proxy);
//   - 2000Proxies: a State change as the xDS server sees it, NewBuilder then 2000 Builds
//     (ns/proxy includes each proxy's share of NewBuilder).
func BenchmarkBuild(b *testing.B) {
	ix := meshstate.NewIndex(meshstatetest.Build(benchSize))
	proxies := meshstatetest.ProxyPods(benchSize, benchProxies)

	b.Run("NewBuilder", func(b *testing.B) {
		for b.Loop() {
			NewBuilder(ix)
		}
	})
	b.Run("Build", func(b *testing.B) {
		builder := NewBuilder(ix)
		i := 0
		for b.Loop() {
			if _, err := builder.Build(Proxy{Pod: proxies[i%len(proxies)]}); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("2000Proxies", func(b *testing.B) {
		for b.Loop() {
			builder := NewBuilder(ix)
			for _, p := range proxies {
				if _, err := builder.Build(Proxy{Pod: p}); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(proxies)), "ns/proxy")
	})
}
