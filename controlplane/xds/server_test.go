package xds

import (
	"context"
	"reflect"
	"testing"
	"time"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
	"github.com/trellis-mesh/trellis/controlplane/meshstate/meshstatetest"
)

// TestPushReusesUnchangedTypes: a rebuild after a weight change gives the proxy a new route
// version, and keeps the very maps of the types whose version did not change and that hold
// resources of its own (no clone per proxy per type), while a change to the proxy's own pod
// gives it new ones.
func TestPushReusesUnchangedTypes(t *testing.T) {
	size := meshstatetest.Size{Namespaces: 2, Services: 10, EndpointsPerService: 2, Splits: 2, Policies: 2, AuthorizationsPerPod: true}
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
	for _, v := range st.AuthorizationPolicies {
		store.SetAuthorizationPolicy(v)
	}
	s := New(store, Options{PeerIdentity: func(context.Context) (spiffeid.ID, error) { return spiffeid.ID{}, nil }})
	pod := meshstatetest.ProxyPods(size, 1)[0]
	node := NodeID(pod)
	s.nodes[node] = 1
	s.rebuild(time.Now())
	before := snapshot(t, s, node)

	split := *st.Splits[meshstate.Key{Namespace: "ns-0", Name: "split-0"}]
	split.Backends = []meshstate.Backend{{Service: split.Backends[0].Service, Weight: 50}, {Service: split.Backends[1].Service, Weight: 50}}
	store.SetSplit(&split)
	s.rebuild(time.Now())
	after := snapshot(t, s, node)

	if before.GetVersion(resourcev3.RouteType) == after.GetVersion(resourcev3.RouteType) {
		t.Errorf("the weight change kept route version %s", after.GetVersion(resourcev3.RouteType))
	}
	for _, typ := range []string{resourcev3.ListenerType, resourcev3.ClusterType, resourcev3.EndpointType} {
		if before.GetVersion(typ) != after.GetVersion(typ) {
			t.Errorf("%s: a weight change moved the version from %s to %s", typ, before.GetVersion(typ), after.GetVersion(typ))
		}
		shared := s.built.Load().shared[typ].Items
		switch own := len(after.GetResourcesAndTTL(typ)) > len(shared); {
		case own && !sameMap(before.GetResourcesAndTTL(typ), after.GetResourcesAndTTL(typ)):
			t.Errorf("%s: the unchanged resources were copied into a new map", typ)
		case !own && !sameMap(shared, after.GetResourcesAndTTL(typ)):
			t.Errorf("%s: the proxy has no resources of its own, yet does not get the shared map", typ)
		}
	}

	// The proxy's own pod changes: its inbound listener changes, so it gets new maps.
	p := *st.Pods[pod]
	p.Ports = append(p.Ports, meshstate.ContainerPort{Name: "admin", Port: 9090})
	store.SetPod(&p)
	s.rebuild(time.Now())
	changed := snapshot(t, s, node)
	if changed.GetVersion(resourcev3.ListenerType) == after.GetVersion(resourcev3.ListenerType) && len(changed.GetResourcesAndTTL(resourcev3.ListenerType)) == len(after.GetResourcesAndTTL(resourcev3.ListenerType)) {
		t.Skip("a new container port does not change the inbound listeners here; nothing more to check")
	}
	if sameMap(after.GetResourcesAndTTL(resourcev3.ListenerType), changed.GetResourcesAndTTL(resourcev3.ListenerType)) {
		t.Errorf("the listeners changed but the old map was kept")
	}
}

func snapshot(t *testing.T, s *Server, node string) cachev3.ResourceSnapshot {
	t.Helper()
	snap, err := s.cache.GetSnapshot(node)
	if err != nil {
		t.Fatalf("no snapshot for %s: %v", node, err)
	}
	return snap
}

func sameMap[M ~map[K]V, K comparable, V any](a, b M) bool {
	return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}
