package xds

import (
	"context"
	"slices"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
	"github.com/trellis-mesh/trellis/controlplane/meshstate/meshstatetest"
	"github.com/trellis-mesh/trellis/controlplane/xds/xdstest"
)

var testSize = meshstatetest.Size{Namespaces: 2, Services: 10, EndpointsPerService: 2, Splits: 2, Policies: 2, AuthorizationsPerPod: true}

// connected is a proxy that subscribed to everything and ACKed its initial configuration.
type connected struct {
	*rawStream
	store       *meshstate.Store
	state       *meshstate.State
	server      *Server
	edsNames    []string
	rdsNames    []string
	rds         *discovery.DiscoveryResponse
	splitWeight uint32
}

func connect(t *testing.T) *connected {
	t.Helper()
	st := meshstatetest.Build(testSize)
	store := meshstatetest.NewStore(st)
	s := New(store, Options{})
	pod := meshstatetest.ProxyPods(testSize, 1)[0]
	r := openStream(t, serve(t, s, identityOf(t, st, pod)), NodeID(pod))
	c := &connected{rawStream: r, store: store, state: st, server: s}

	r.send(resourcev3.ClusterType, nil, "", "")
	cds := r.expect(resourcev3.ClusterType)
	r.ack(cds, nil)
	c.edsNames = xdstest.EndpointNames(cds)
	r.send(resourcev3.EndpointType, c.edsNames, "", "")
	eds := r.expect(resourcev3.EndpointType)
	if len(eds.GetResources()) != len(c.edsNames) {
		t.Fatalf("the first EDS response has %d assignments for the %d names asked for", len(eds.GetResources()), len(c.edsNames))
	}
	r.ack(eds, c.edsNames)
	r.send(resourcev3.ListenerType, nil, "", "")
	lds := r.expect(resourcev3.ListenerType)
	r.ack(lds, nil)
	c.rdsNames = xdstest.RouteNames(lds)
	r.send(resourcev3.RouteType, c.rdsNames, "", "")
	c.rds = r.expect(resourcev3.RouteType)
	if got := routeNamesOf(t, c.rds); !slices.Equal(got, c.rdsNames) {
		t.Fatalf("the first RDS response has %v, want every name asked for: %v", got, c.rdsNames)
	}
	r.ack(c.rds, c.rdsNames)
	c.splitWeight = 50
	return c
}

// changeWeights moves split-0's weights and makes a new generation.
func (c *connected) changeWeights() {
	c.changeWeightsInStore()
	c.server.Rebuild()
}

// changeWeightsInStore moves split-0's weights in the store only.
func (c *connected) changeWeightsInStore() {
	split := *c.state.Splits[meshstate.Key{Namespace: "ns-0", Name: "split-0"}]
	c.splitWeight++
	split.Backends = []meshstate.Backend{{Service: split.Backends[0].Service, Weight: c.splitWeight}, {Service: split.Backends[1].Service, Weight: 100 - c.splitWeight}}
	c.store.SetSplit(&split)
}

func routeNamesOf(t *testing.T, resp *discovery.DiscoveryResponse) []string {
	t.Helper()
	var out []string
	for _, a := range resp.GetResources() {
		rc := &routev3.RouteConfiguration{}
		if err := a.UnmarshalTo(rc); err != nil {
			t.Fatalf("resource of type %s: %v", a.GetTypeUrl(), err)
		}
		out = append(out, rc.GetName())
	}
	return out
}

// weightOf is the first weighted cluster's weight in the only route configuration of resp.
func weightOf(t *testing.T, resp *discovery.DiscoveryResponse) uint32 {
	t.Helper()
	if len(resp.GetResources()) != 1 {
		t.Fatalf("the RDS response has %d route configurations (%v), want only the changed one", len(resp.GetResources()), routeNamesOf(t, resp))
	}
	rc := &routev3.RouteConfiguration{}
	if err := resp.GetResources()[0].UnmarshalTo(rc); err != nil {
		t.Fatal(err)
	}
	for _, vh := range rc.GetVirtualHosts() {
		for _, rt := range vh.GetRoutes() {
			if wc := rt.GetRoute().GetWeightedClusters().GetClusters(); len(wc) > 0 {
				return wc[0].GetWeight().GetValue()
			}
		}
	}
	t.Fatalf("route configuration %s has no weighted clusters", rc.GetName())
	return 0
}

// TestWeightChangeSendsOnlyTheChangedRoute: a TrafficSplit weight change sends each proxy
// one RDS response with the one route configuration that changed, and no other type (the
// next response after it is the next change's).
func TestWeightChangeSendsOnlyTheChangedRoute(t *testing.T) {
	c := connect(t)
	prev := c.rds.GetVersionInfo()
	for range 3 {
		c.changeWeights()
		resp := c.expect(resourcev3.RouteType)
		if w := weightOf(t, resp); w != c.splitWeight {
			t.Errorf("the route has weight %d, want %d", w, c.splitWeight)
		}
		if resp.GetVersionInfo() == prev {
			t.Errorf("the new routes kept version %s", prev)
		}
		prev = resp.GetVersionInfo()
		c.ack(resp, c.rdsNames)
	}
}

// TestNewNamesGetTheirResources: asking for more route names sends those (and only those);
// asking for fewer is answered with nothing to add.
func TestNewNamesGetTheirResources(t *testing.T) {
	c := connect(t)
	if len(c.rdsNames) < 3 {
		t.Fatalf("the test mesh has only %d route names", len(c.rdsNames))
	}
	fewer := c.rdsNames[:2]
	c.send(resourcev3.RouteType, fewer, c.rds.GetVersionInfo(), c.rds.GetNonce())
	shrunk := c.expect(resourcev3.RouteType)
	if got := routeNamesOf(t, shrunk); len(got) != 0 {
		t.Errorf("asking for fewer names sent %v, want nothing", got)
	}
	c.ack(shrunk, fewer)
	more := c.rdsNames[:3]
	c.send(resourcev3.RouteType, more, shrunk.GetVersionInfo(), shrunk.GetNonce())
	grown := c.expect(resourcev3.RouteType)
	if got := routeNamesOf(t, grown); !slices.Equal(got, c.rdsNames[2:3]) {
		t.Errorf("asking for one more name sent %v, want %v", got, c.rdsNames[2:3])
	}
}

// TestNACKedVersionIsNotResent: a rejected route version is not sent again; the next change
// brings the changed route (measured against what the proxy holds, not what it rejected).
func TestNACKedVersionIsNotResent(t *testing.T) {
	c := connect(t)
	c.changeWeights()
	bad := c.expect(resourcev3.RouteType)
	if err := c.ads.Send(&discovery.DiscoveryRequest{
		Node: c.node, TypeUrl: resourcev3.RouteType, ResourceNames: c.rdsNames,
		VersionInfo: c.rds.GetVersionInfo(), ResponseNonce: bad.GetNonce(),
		ErrorDetail: &status.Status{Code: 3, Message: "test rejects it"},
	}); err != nil {
		t.Fatal(err)
	}
	c.server.Rebuild() // same model: nothing new, and the rejected version must not come back
	c.changeWeights()
	resp := c.expect(resourcev3.RouteType)
	if resp.GetVersionInfo() == bad.GetVersionInfo() {
		t.Fatalf("the rejected version %s was sent again", bad.GetVersionInfo())
	}
	if w := weightOf(t, resp); w != c.splitWeight {
		t.Errorf("the route has weight %d, want %d", w, c.splitWeight)
	}
}

// TestUnackedChangesWait: while a response awaits its ACK nothing more of that type is sent;
// the ACK brings what changed since, measured from the acknowledged version.
func TestUnackedChangesWait(t *testing.T) {
	c := connect(t)
	c.changeWeights()
	first := c.expect(resourcev3.RouteType)
	c.changeWeights()
	c.changeWeights()
	c.ack(first, c.rdsNames)
	resp := c.expect(resourcev3.RouteType)
	if w := weightOf(t, resp); w != c.splitWeight {
		t.Errorf("after the ACK the route has weight %d, want the latest, %d", w, c.splitWeight)
	}
}

// TestOwnPodChangeIsSent: a change to the proxy's own pod (a new container port) rebuilds its
// own side: the new inbound cluster arrives, with every other cluster (CDS is whole).
func TestOwnPodChangeIsSent(t *testing.T) {
	c := connect(t)
	pod := meshstatetest.ProxyPods(testSize, 1)[0]
	p := *c.state.Pods[pod]
	p.Ports = append(slices.Clone(p.Ports), meshstate.ContainerPort{Name: "admin", Port: 9191})
	c.store.SetPod(&p)
	c.server.Rebuild()
	cds := c.expect(resourcev3.ClusterType)
	var found bool
	for _, a := range cds.GetResources() {
		cl := &clusterv3.Cluster{}
		if err := a.UnmarshalTo(cl); err != nil {
			t.Fatal(err)
		}
		found = found || cl.GetName() == "inbound|9191||"
	}
	if !found {
		t.Errorf("no cluster inbound|9191|| among the %d clusters sent after the pod changed", len(cds.GetResources()))
	}
	if len(xdstest.EndpointNames(cds)) != len(c.edsNames) {
		t.Errorf("the cluster response is not whole: %d EDS clusters, want %d", len(xdstest.EndpointNames(cds)), len(c.edsNames))
	}
}

// TestRunTranslatesAnIsolatedChangeAtOnce: with an hour's debounce, a change after a quiet
// spell still reaches the proxy (it is translated at once); the change that follows it
// waits for the quiet hour, coalesced with any others.
func TestRunTranslatesAnIsolatedChangeAtOnce(t *testing.T) {
	c := connect(t)
	c.server.opts.Debounce, c.server.opts.MaxDelay = time.Hour, time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = c.server.Run(ctx) }()
	time.Sleep(50 * time.Millisecond) // Run subscribes to the store first

	c.changeWeightsInStore()
	resp := c.expect(resourcev3.RouteType)
	if w := weightOf(t, resp); w != c.splitWeight {
		t.Fatalf("the route has weight %d, want %d", w, c.splitWeight)
	}
	c.ack(resp, c.rdsNames)
	c.changeWeightsInStore()
	select {
	case r := <-c.resps:
		t.Fatalf("the change right after another was not debounced: a %s response came", shortType(r.GetTypeUrl()))
	case <-time.After(500 * time.Millisecond):
	}
}
