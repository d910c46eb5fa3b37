package xdsclient

import (
	"context"
	"net"
	"net/netip"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
	"github.com/trellis-mesh/trellis/controlplane/meshstate/meshstatetest"
	"github.com/trellis-mesh/trellis/controlplane/xds"
	"github.com/trellis-mesh/trellis/sidecar/config"
)

// TestClientMergesIncrementalRouteResponses: against the Trellis control plane's own xDS
// server, which sends only the route configurations that changed, a weight change leaves
// every other route of the configuration in place.
func TestClientMergesIncrementalRouteResponses(t *testing.T) {
	in := readGolden(t, "split-90-10")
	store := meshstatetest.NewStore(&in.State)
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/client")
	server := xds.New(store, xds.Options{PeerIdentity: func(context.Context) (spiffeid.ID, error) { return id, nil }, Logger: testLogger()})
	g := grpc.NewServer()
	server.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)

	_, configs := runClient(t, lis.Addr().String())
	first := awaitConfig(t, configs, weights(90, 10))
	routes := httpRoutes(first)
	if len(routes) < 2 {
		t.Fatalf("the test mesh has %d HTTP listeners; the test needs another besides web's", len(routes))
	}

	split := *in.State.Splits[meshstate.Key{Namespace: "shop", Name: "web-canary"}]
	split.Backends = []meshstate.Backend{{Service: "web-v1", Weight: 50}, {Service: "web-v2", Weight: 50}}
	store.SetSplit(&split)
	server.Rebuild()
	second := awaitConfig(t, configs, weights(50, 50))
	for vip := range routes {
		if second.Outbound[vip] == nil || second.Outbound[vip].HTTP == nil {
			t.Errorf("after a weight change the HTTP routes of %s are gone", vip)
		}
	}
	if len(httpRoutes(second)) != len(routes) {
		t.Errorf("after a weight change %d HTTP listeners have routes, want %d", len(httpRoutes(second)), len(routes))
	}
}

// httpRoutes are the outbound listeners with HTTP routes.
func httpRoutes(cfg *config.Config) map[netip.AddrPort]bool {
	out := map[netip.AddrPort]bool{}
	for vip, l := range cfg.Outbound {
		if l.HTTP != nil {
			out[vip] = true
		}
	}
	return out
}
