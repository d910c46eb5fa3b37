package xdsclient

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
	"github.com/trellis-mesh/trellis/controlplane/translate"
	"github.com/trellis-mesh/trellis/sidecar/config"
)

const (
	testNode = "shop/client"
	// waitFor bounds every wait of these tests; a delivery normally takes milliseconds.
	waitFor = 10 * time.Second
)

var (
	webVIP    = netip.MustParseAddrPort("10.96.0.10:80")
	webTCPVIP = netip.MustParseAddrPort("10.96.0.10:7000")
)

// controlPlane is an in-process go-control-plane ADS server, as the Trellis control plane
// runs it (snapshot cache in ADS mode, hashed by node ID), recording what clients send.
type controlPlane struct {
	t     *testing.T
	addr  string
	cache cachev3.SnapshotCache
	grpc  *grpc.Server

	mu       sync.Mutex
	requests []*discovery.DiscoveryRequest
	nacks    chan *discovery.DiscoveryRequest
}

func startControlPlane(t *testing.T, addr string) *controlPlane {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	cp := &controlPlane{t: t, addr: lis.Addr().String(), cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil), nacks: make(chan *discovery.DiscoveryRequest, 64)}
	xds := serverv3.NewServer(t.Context(), cp.cache, serverv3.CallbackFuncs{
		StreamRequestFunc: func(_ int64, req *discovery.DiscoveryRequest) error {
			cp.mu.Lock()
			cp.requests = append(cp.requests, proto.Clone(req).(*discovery.DiscoveryRequest))
			cp.mu.Unlock()
			if req.GetErrorDetail() != nil {
				select {
				case cp.nacks <- req:
				default:
				}
			}
			return nil
		},
	})
	cp.grpc = grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(cp.grpc, xds)
	go func() { _ = cp.grpc.Serve(lis) }()
	t.Cleanup(cp.grpc.Stop)
	return cp
}

// set publishes a snapshot of resources for the test node.
func (cp *controlPlane) set(version string, res *translate.Resources) {
	cp.t.Helper()
	snap, err := cachev3.NewSnapshot(version, map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: asResources(res.Listeners),
		resourcev3.RouteType:    asResources(res.Routes),
		resourcev3.ClusterType:  asResources(res.Clusters),
		resourcev3.EndpointType: asResources(res.Endpoints),
	})
	if err != nil {
		cp.t.Fatal(err)
	}
	if err := cp.cache.SetSnapshot(context.Background(), testNode, snap); err != nil {
		cp.t.Fatal(err)
	}
}

func (cp *controlPlane) nackCount() int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	n := 0
	for _, r := range cp.requests {
		if r.GetErrorDetail() != nil {
			n++
		}
	}
	return n
}

func asResources[T types.Resource](list []T) []types.Resource {
	out := make([]types.Resource, len(list))
	for i, r := range list {
		out[i] = r
	}
	return out
}

// runClient runs a Client against addr until the test ends; configurations arrive on the
// returned channel.
func runClient(t *testing.T, addr string) (*Client, <-chan *config.Config) {
	t.Helper()
	configs := make(chan *config.Config, 64)
	c := New(Options{
		Node: testNode,
		Dial: func(context.Context) (*grpc.ClientConn, error) {
			return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		},
		OnConfig:       func(cfg *config.Config) { configs <- cfg },
		Backoff:        Backoff{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond},
		ReferenceGrace: 200 * time.Millisecond,
		Logger:         testLogger(),
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after its context ended; want nil", err)
			}
		case <-time.After(waitFor):
			t.Error("Run did not return after its context ended")
		}
	})
	return c, configs
}

// splitState is split-90-10 with the split's weights replaced.
func splitState(t *testing.T, v1, v2 uint32) *translate.Resources {
	t.Helper()
	in := readGolden(t, "split-90-10")
	in.State.Splits[meshstate.Key{Namespace: "shop", Name: "web-canary"}].Backends = []meshstate.Backend{{Service: "web-v1", Weight: v1}, {Service: "web-v2", Weight: v2}}
	res, err := build(t, in)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// webWeights are the HTTP backends of the web Service's port 80, when its TCP port 7000
// splits the same way (so that both listeners and the route of one snapshot have arrived).
func webWeights(cfg *config.Config) []config.WeightedCluster {
	http, tcp := cfg.Outbound[webVIP], cfg.Outbound[webTCPVIP]
	if http == nil || http.HTTP == nil || tcp == nil || tcp.TCP == nil {
		return nil
	}
	if len(http.HTTP.Backends) != len(tcp.TCP.Backends) {
		return nil
	}
	for i, b := range tcp.TCP.Backends {
		if b.Weight != http.HTTP.Backends[i].Weight {
			return nil
		}
	}
	return http.HTTP.Backends
}

func weights(v1, v2 uint32) []config.WeightedCluster {
	return []config.WeightedCluster{
		{Cluster: "outbound|80||web-v1.shop.svc.cluster.local", Weight: v1},
		{Cluster: "outbound|80||web-v2.shop.svc.cluster.local", Weight: v2},
	}
}

// awaitConfig waits for a configuration whose web backends are want.
func awaitConfig(t *testing.T, configs <-chan *config.Config, want []config.WeightedCluster) *config.Config {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case cfg := <-configs:
			if cfg == nil {
				t.Fatal("OnConfig was called with nil")
			}
			t.Logf("configuration %s: web backends %v", cfg.Version, webWeights(cfg))
			if cmp.Equal(webWeights(cfg), want) {
				return cfg
			}
		case <-deadline:
			t.Fatalf("no configuration with web backends %v within %s", want, waitFor)
		}
	}
}

// expectNoConfig checks that no configuration is delivered for a while.
func expectNoConfig(t *testing.T, configs <-chan *config.Config, d time.Duration) {
	t.Helper()
	select {
	case cfg := <-configs:
		t.Fatalf("unexpected configuration %s (web backends %v)", cfg.Version, webWeights(cfg))
	case <-time.After(d):
	}
}

func awaitNACK(t *testing.T, cp *controlPlane, typeURL, contains string) *discovery.DiscoveryRequest {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case req := <-cp.nacks:
			if req.GetTypeUrl() == typeURL && strings.Contains(req.GetErrorDetail().GetMessage(), contains) {
				return req
			}
		case <-deadline:
			t.Fatalf("the control plane saw no NACK of %s mentioning %q within %s", typeURL, contains, waitFor)
		}
	}
}

func awaitStatus(t *testing.T, c *Client, what string, ok func(Status) bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !ok(c.Status()) {
		if time.Now().After(deadline) {
			t.Fatalf("status never showed %s: %+v", what, c.Status())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestClientFollowsTheControlPlane(t *testing.T) {
	cp := startControlPlane(t, "127.0.0.1:0")
	cp.set("1", splitState(t, 90, 10))
	c, configs := runClient(t, cp.addr)

	// The first snapshot is delivered, complete.
	first := awaitConfig(t, configs, weights(90, 10))
	if !c.Ready() {
		t.Error("Ready() is false after a configuration was delivered")
	}
	if first.Inbound == nil || len(first.Clusters) == 0 || first.Version != "cds=1 eds=1 lds=1 rds=1" {
		t.Errorf("first configuration is incomplete: version %q, %d clusters, inbound %v", first.Version, len(first.Clusters), first.Inbound != nil)
	}

	// A new snapshot (weight change) delivers a new configuration.
	cp.set("2", splitState(t, 50, 50))
	second := awaitConfig(t, configs, weights(50, 50))
	awaitVersions(t, c, "2")
	if second == first {
		t.Error("the same *Config was delivered twice; every delivery must be a new Config")
	}

	// A snapshot with an invalid cluster is NACKed and the configuration stays. (Only the
	// cluster differs: the other types, unchanged, are accepted, as Envoy would.)
	bad := splitState(t, 50, 50)
	bad.Clusters = cloneAll(bad.Clusters)
	const badName = "outbound|80||web-v1.shop.svc.cluster.local"
	for _, cl := range bad.Clusters {
		if cl.GetName() == badName {
			cl.LoadBalancingPolicy, cl.LbPolicy = nil, clusterv3.Cluster_RING_HASH
		}
	}
	cp.set("3", bad)
	nack := awaitNACK(t, cp, resourcev3.ClusterType, badName)
	if nack.GetVersionInfo() != "2" {
		t.Errorf("NACK carries version %q; want the last accepted, 2", nack.GetVersionInfo())
	}
	expectNoConfig(t, configs, 300*time.Millisecond)
	if st := typeStatus(c.Status(), resourcev3.ClusterType); st.Version != "2" || st.LastErrorVersion != "3" || !strings.Contains(st.LastError, "RING_HASH") {
		t.Errorf("cluster status after the NACK = %+v; want version 2 and version 3's error", st)
	}
	// go-control-plane resends a NACKed version at once; the client spaces its NACKs
	// instead of answering in a tight loop.
	if n := cp.nackCount(); n > 20 {
		t.Errorf("%d NACKs of the same version in 300ms", n)
	}
	if _, err := json.Marshal(c.Status()); err != nil {
		t.Errorf("the status does not marshal for the admin page: %v", err)
	}

	// The control plane fixes it: the fix is delivered.
	cp.set("4", splitState(t, 70, 30))
	awaitConfig(t, configs, weights(70, 30))
	awaitVersions(t, c, "4")

	// The control plane goes away: the configuration stays and the proxy stays ready.
	cp.grpc.Stop()
	awaitStatus(t, c, "disconnected", func(s Status) bool { return !s.Connected })
	if !c.Ready() {
		t.Error("Ready() turned false when the control plane went away")
	}
	expectNoConfig(t, configs, 200*time.Millisecond)

	// It comes back on the same address with a newer snapshot: the client reconnects.
	again := startControlPlane(t, cp.addr)
	again.set("5", splitState(t, 20, 80))
	fifth := awaitConfig(t, configs, weights(20, 80))
	if !strings.Contains(fifth.Version, "rds=5") {
		t.Errorf("configuration after reconnecting has version %q", fifth.Version)
	}
	awaitStatus(t, c, "connected", func(s Status) bool { return s.Connected && s.Streams >= 2 })
}

func TestClientAppliesARemovalWithoutNACK(t *testing.T) {
	// Removing a Service removes its cluster ahead of the listener and route that use it
	// (ADS sends clusters first): the client waits for them instead of refusing.
	cp := startControlPlane(t, "127.0.0.1:0")
	cp.set("1", splitState(t, 90, 10))
	c, configs := runClient(t, cp.addr)
	awaitConfig(t, configs, weights(90, 10))
	awaitVersions(t, c, "1")

	in := readGolden(t, "split-90-10")
	delete(in.State.Splits, meshstate.Key{Namespace: "shop", Name: "web-canary"})
	delete(in.State.Services, meshstate.Key{Namespace: "shop", Name: "web-v2"})
	res, err := build(t, in)
	if err != nil {
		t.Fatal(err)
	}
	cp.set("2", res)
	cfg := awaitConfig(t, configs, []config.WeightedCluster{{Cluster: "outbound|80||web.shop.svc.cluster.local", Weight: 1}})
	if _, ok := cfg.Clusters["outbound|80||web-v2.shop.svc.cluster.local"]; ok {
		t.Error("the removed Service's cluster is still in the configuration")
	}
	if n := cp.nackCount(); n != 0 {
		t.Errorf("the client sent %d NACKs during a consistent update", n)
	}
}

func TestClientNACKsAReferenceThatNeverComes(t *testing.T) {
	cp := startControlPlane(t, "127.0.0.1:0")
	cp.set("1", splitState(t, 90, 10))
	c, configs := runClient(t, cp.addr)
	awaitConfig(t, configs, weights(90, 10))
	awaitVersions(t, c, "1")

	// Version 2's route names a cluster the control plane never sends (and nothing else
	// changes).
	bad := splitState(t, 90, 10)
	bad.Routes = cloneAll(bad.Routes)
	for _, rc := range bad.Routes {
		if rc.GetName() == "outbound|web.shop|80" {
			wc := rc.GetVirtualHosts()[0].GetRoutes()[0].GetRoute().GetWeightedClusters()
			wc.Clusters[1].Name = "outbound|80||ghost.shop.svc.cluster.local"
		}
	}
	cp.set("2", bad)
	awaitNACK(t, cp, resourcev3.RouteType, "ghost")
	expectNoConfig(t, configs, 300*time.Millisecond)
	if st := typeStatus(c.Status(), resourcev3.RouteType); st.Version != "1" || !strings.Contains(st.LastError, "ghost") {
		t.Errorf("route status after the NACK = %+v; want version 1 and version 2's error", st)
	}

	cp.set("3", splitState(t, 30, 70))
	awaitConfig(t, configs, weights(30, 70))
}

func TestRunRefusesUnusableOptions(t *testing.T) {
	dial := func(context.Context) (*grpc.ClientConn, error) { return nil, io.EOF }
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"a node that is not namespace/pod is refused", Options{Node: "client", Dial: dial}, "<namespace>/<pod>"},
		{"a client without a dial function is refused", Options{Node: testNode}, "Dial"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := New(tc.opts).Run(t.Context())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Run() = %v; want an error mentioning %q", err, tc.want)
			}
		})
	}
}

// awaitVersions waits until every type has accepted version v (types whose content did
// not change are acknowledged without a new configuration).
func awaitVersions(t *testing.T, c *Client, v string) {
	t.Helper()
	awaitStatus(t, c, "every type at version "+v, func(s Status) bool {
		for _, ts := range s.Types {
			if ts.Version != v {
				return false
			}
		}
		return true
	})
}

func typeStatus(s Status, typeURL string) TypeStatus {
	for _, ts := range s.Types {
		if ts.TypeURL == typeURL {
			return ts
		}
	}
	return TypeStatus{}
}

func cloneAll[T proto.Message](list []T) []T {
	out := make([]T, len(list))
	for i, m := range list {
		out[i] = proto.Clone(m).(T)
	}
	return out
}

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}
