// Package xds serves each sidecar its own configuration over ADS (gRPC). It owns one
// debounced loop that turns the mesh model into per-proxy snapshots with translate, and it
// decides which node a stream may ask for from the stream's verified client certificate.
package xds

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
	"github.com/trellis-mesh/trellis/controlplane/translate"
)

// PeerIdentityFunc returns the SPIFFE ID of a stream's verified client certificate.
type PeerIdentityFunc func(ctx context.Context) (spiffeid.ID, error)

// Options configure the server.
type Options struct {
	// PeerIdentity authenticates streams; required.
	PeerIdentity PeerIdentityFunc
	// Debounce waits for this much quiet after a change before rebuilding (default 100ms);
	// MaxDelay bounds the wait under a steady stream of changes (default 1s).
	Debounce, MaxDelay time.Duration
	Logger             *slog.Logger
	Metrics            *Metrics
}

// Server is the ADS server and the snapshot loop.
type Server struct {
	opts  Options
	store *meshstate.Store
	cache cachev3.SnapshotCache
	xds   serverv3.Server
	log   *slog.Logger

	built atomic.Pointer[generation] // the latest translation, shared by all builds

	mu      sync.Mutex
	streams map[int64]*stream
	nodes   map[string]int // node ID → open streams

	pushMu sync.Mutex
	pushed map[string]uint64 // node ID → model version of its snapshot
}

type stream struct {
	identity spiffeid.ID
	node     string
}

// generation is one translation of one model version.
type generation struct {
	version uint64
	state   *meshstate.State
	builder *translate.Builder
	hash    *hasher
	changed time.Time // when the first change it contains was seen
	// shared holds, per resource type, the outbound resources every proxy gets, indexed and
	// versioned once: the go-control-plane snapshots of all proxies share these maps (they
	// are never written), so a rebuild costs one pass over the mesh plus each proxy's
	// inbound side, not one pass over the mesh per proxy.
	shared map[string]cachev3.Resources
}

// resourceTypes are the xDS types Trellis serves, in the order ADS clients ask for them.
var resourceTypes = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}

func byType(r *translate.Resources) map[string][]types.Resource {
	return map[string][]types.Resource{
		resourcev3.ListenerType: asResources(r.Listeners),
		resourcev3.RouteType:    asResources(r.Routes),
		resourcev3.ClusterType:  asResources(r.Clusters),
		resourcev3.EndpointType: asResources(r.Endpoints),
	}
}

// newGeneration translates st's shared side and checks it is consistent on its own (translate
// guarantees, and tests, that each proxy's inbound side references nothing outside itself).
func newGeneration(st *meshstate.State, version uint64, changed time.Time) (*generation, error) {
	gen := &generation{
		version: version,
		state:   st,
		builder: translate.NewBuilder(meshstate.NewIndex(st)),
		hash:    &hasher{},
		changed: changed,
		shared:  map[string]cachev3.Resources{},
	}
	out, err := gen.builder.Outbound()
	if err != nil {
		return nil, err
	}
	snap := &cachev3.Snapshot{}
	for typ, items := range byType(out) {
		res := cachev3.NewResources(gen.hash.version(items), items)
		gen.shared[typ] = res
		snap.Resources[cachev3.GetResponseType(typ)] = res
	}
	if err := snap.Consistent(); err != nil {
		return nil, fmt.Errorf("outbound resources are not consistent: %w", err)
	}
	return gen, nil
}

// New returns a server for store. Call Register, then Run.
func New(store *meshstate.Store, opts Options) *Server {
	if opts.Debounce <= 0 {
		opts.Debounce = 100 * time.Millisecond
	}
	if opts.MaxDelay <= 0 {
		opts.MaxDelay = time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Metrics == nil {
		opts.Metrics = NopMetrics()
	}
	s := &Server{
		opts:    opts,
		store:   store,
		log:     opts.Logger,
		streams: map[int64]*stream{},
		nodes:   map[string]int{},
		pushed:  map[string]uint64{},
	}
	s.cache = cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	s.xds = serverv3.NewServer(context.Background(), s.cache, serverv3.CallbackFuncs{
		StreamOpenFunc:      s.onStreamOpen,
		StreamRequestFunc:   s.onStreamRequest,
		StreamClosedFunc:    s.onStreamClosed,
		StreamResponseFunc:  s.onStreamResponse,
		DeltaStreamOpenFunc: refuseDelta,
		FetchRequestFunc:    refuseFetch,
	})
	s.rebuild(time.Now())
	return s
}

// Register adds the ADS service to a gRPC server.
func (s *Server) Register(g *grpc.Server) {
	discovery.RegisterAggregatedDiscoveryServiceServer(g, s.xds)
}

func refuseDelta(context.Context, int64, string) error {
	return status.Error(codes.Unimplemented, "Trellis serves state-of-the-world ADS only")
}

func refuseFetch(context.Context, *discovery.DiscoveryRequest) error {
	return status.Error(codes.Unimplemented, "Trellis serves ADS streams only")
}

func (s *Server) onStreamOpen(ctx context.Context, id int64, typeURL string) error {
	if typeURL != resourcev3.AnyType {
		return status.Errorf(codes.Unimplemented, "Trellis serves ADS only, not %s streams", typeURL)
	}
	peer, err := s.opts.PeerIdentity(ctx)
	if err != nil {
		s.opts.Metrics.refused(ctx, "no-client-certificate")
		return status.Errorf(codes.Unauthenticated, "xDS needs a client certificate issued by the Trellis CA: %v", err)
	}
	s.mu.Lock()
	s.streams[id] = &stream{identity: peer}
	s.mu.Unlock()
	return nil
}

// onStreamRequest binds the stream to the node of its first request, after checking that the
// certificate may have it, and refuses any later request naming another node (the ADS
// server would otherwise switch the stream to that node's snapshot).
func (s *Server) onStreamRequest(id int64, req *discovery.DiscoveryRequest) error {
	node := req.GetNode().GetId()
	s.mu.Lock()
	st, ok := s.streams[id]
	var bound string
	if ok {
		bound = st.node
	}
	s.mu.Unlock()
	switch {
	case !ok:
		return status.Error(codes.Internal, "unknown stream")
	case bound != "" && node != bound:
		s.opts.Metrics.refused(context.Background(), "node-changed")
		return status.Errorf(codes.PermissionDenied, "stream is bound to node %s; it cannot ask for %s", bound, node)
	case bound != "":
		return nil
	case node == "":
		return status.Error(codes.InvalidArgument, "the first request of a stream must carry the node")
	}

	gen := s.built.Load()
	if gen == nil {
		return status.Error(codes.Unavailable, "the control plane has no configuration built yet; retry")
	}
	if err := authorizeNode(gen.state, st.identity, node); err != nil {
		s.opts.Metrics.refused(context.Background(), status.Code(err).String())
		s.log.Warn("refused xDS stream", "node", node, "identity", st.identity.String(), "error", err)
		return err
	}
	// Bind before building, so that a rebuild running now either includes this node or
	// finishes before the generation loaded below, and push never lets an older generation
	// overwrite a newer one.
	s.mu.Lock()
	st.node = node
	s.nodes[node]++
	s.mu.Unlock()
	s.opts.Metrics.connected(context.Background(), 1)
	if err := s.push(s.built.Load(), node); err != nil {
		return status.Errorf(codes.FailedPrecondition, "build configuration for %s: %v", node, err)
	}
	s.log.Info("proxy connected", "node", node, "identity", st.identity.String())
	return nil
}

func (s *Server) onStreamClosed(id int64, _ *core.Node) {
	s.mu.Lock()
	st, ok := s.streams[id]
	delete(s.streams, id)
	last := false
	if ok && st.node != "" {
		s.nodes[st.node]--
		if s.nodes[st.node] <= 0 {
			delete(s.nodes, st.node)
			last = true
		}
	}
	s.mu.Unlock()
	if ok && st.node != "" {
		s.opts.Metrics.connected(context.Background(), -1)
		if last {
			s.pushMu.Lock()
			delete(s.pushed, st.node)
			s.cache.ClearSnapshot(st.node)
			s.pushMu.Unlock()
		}
	}
}

func (s *Server) onStreamResponse(ctx context.Context, _ int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	s.opts.Metrics.pushed(ctx, resp.GetTypeUrl())
}

// Run rebuilds snapshots when the model changes, until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	changed := s.store.Subscribe()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
		first := time.Now()
		deadline := time.NewTimer(s.opts.MaxDelay)
	quiet:
		for {
			select {
			case <-ctx.Done():
				deadline.Stop()
				return nil
			case <-changed:
			case <-time.After(s.opts.Debounce):
				break quiet
			case <-deadline.C:
				break quiet
			}
		}
		deadline.Stop()
		s.rebuild(first)
	}
}

// rebuild translates the current model and pushes a snapshot to every connected node.
func (s *Server) rebuild(changed time.Time) {
	start := time.Now()
	st, version := s.store.Snapshot()
	gen, err := newGeneration(st, version, changed)
	if err != nil {
		// Every proxy keeps its last good configuration.
		s.log.Error("translate the mesh model; proxies keep their last configuration", "error", err)
		s.opts.Metrics.rebuilt(context.Background(), 0, 1, time.Since(start), time.Since(changed))
		return
	}
	s.built.Store(gen)

	s.mu.Lock()
	nodes := make([]string, 0, len(s.nodes))
	for n := range s.nodes {
		nodes = append(nodes, n)
	}
	s.mu.Unlock()

	work := make(chan string)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range work {
				if err := s.push(gen, n); err != nil {
					// The proxy keeps its last good configuration.
					failed.Add(1)
					s.log.Error("build configuration; the proxy keeps its last one", "node", n, "error", err)
				}
			}
		}()
	}
	for _, n := range nodes {
		work <- n
	}
	close(work)
	wg.Wait()
	s.opts.Metrics.rebuilt(context.Background(), len(nodes), int(failed.Load()), time.Since(start), time.Since(changed))
}

// push builds node's snapshot from gen and hands it to the cache if any version changed.
// Types for which the proxy has no inbound resources reuse gen's shared, pre-indexed maps.
func (s *Server) push(gen *generation, node string) error {
	pod, err := ParseNodeID(node)
	if err != nil {
		return err
	}
	in, err := gen.builder.Inbound(translate.Proxy{Pod: pod})
	if err != nil {
		return err
	}
	// The proxy's current snapshot: a type whose version is unchanged keeps its map instead of
	// cloning the shared one again (a weight change touches routes only, yet cloning every
	// type cost most of a rebuild). Equal versions mean equal content, and snapshots are
	// never written once set, so sharing the map is safe even if another push replaces it.
	old, oldErr := s.cache.GetSnapshot(node)
	snap := &cachev3.Snapshot{}
	for typ, own := range byType(in) {
		shared := gen.shared[typ]
		res := shared
		if len(own) > 0 {
			version := shared.Version + "." + gen.hash.version(own)
			if oldErr == nil && old.GetVersion(typ) == version {
				snap.Resources[cachev3.GetResponseType(typ)] = cachev3.Resources{Version: version, Items: old.GetResourcesAndTTL(typ)}
				continue
			}
			items := maps.Clone(shared.Items)
			for _, r := range own {
				name := cachev3.GetResourceName(r)
				if _, clash := items[name]; clash {
					return fmt.Errorf("%s %q is both a shared and a per-proxy resource", typ, name)
				}
				items[name] = types.ResourceWithTTL{Resource: r}
			}
			res = cachev3.Resources{Version: version, Items: items}
		}
		snap.Resources[cachev3.GetResponseType(typ)] = res
	}
	s.pushMu.Lock()
	defer s.pushMu.Unlock()
	if v, ok := s.pushed[node]; ok && v > gen.version {
		return nil // a newer generation got there first
	}
	s.pushed[node] = gen.version
	if old, err := s.cache.GetSnapshot(node); err == nil && sameVersions(old, snap) {
		return nil
	}
	if err := s.cache.SetSnapshot(context.Background(), node, snap); err != nil {
		return fmt.Errorf("set snapshot for %s: %w", node, err)
	}
	return nil
}

func sameVersions(old cachev3.ResourceSnapshot, snap *cachev3.Snapshot) bool {
	for _, typ := range resourceTypes {
		if old.GetVersion(typ) != snap.GetVersion(typ) {
			return false
		}
	}
	return true
}

func asResources[T types.Resource](in []T) []types.Resource {
	out := make([]types.Resource, len(in))
	for i, r := range in {
		out[i] = r
	}
	return out
}

// ConnectedNodes lists the nodes with an open stream.
func (s *Server) ConnectedNodes() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.nodes))
	for n := range s.nodes {
		out = append(out, n)
	}
	return out
}

// Rebuild translates the current model now, outside the debounced loop (used once the model
// is primed, before serving).
func (s *Server) Rebuild() { s.rebuild(time.Now()) }
