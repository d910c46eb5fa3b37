// Package xds serves each sidecar its own configuration over ADS (gRPC, state of the world).
// One debounced loop turns each new model version into a generation: the resources every
// proxy shares, translated and marshalled once (table.go, generation.go). Each stream then
// adds its proxy's own resources and sends only what changed for it (stream.go). Which node a
// stream may ask for is decided from its verified client certificate (authz.go).
package xds

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

// PeerIdentityFunc returns the SPIFFE ID of a stream's verified client certificate.
type PeerIdentityFunc func(ctx context.Context) (spiffeid.ID, error)

// Options configure the server.
type Options struct {
	// PeerIdentity authenticates streams; required.
	PeerIdentity PeerIdentityFunc
	// Debounce is the quiet spell that separates bursts of changes (default 100ms): the
	// first change after one is translated at once, the changes that follow wait for this
	// much quiet. MaxDelay bounds that wait under a steady stream of changes (default 1s).
	Debounce, MaxDelay time.Duration
	Logger             *slog.Logger
	Metrics            *Metrics
}

// Server is the ADS server and the loop that translates the model into generations.
type Server struct {
	opts  Options
	store *meshstate.Store
	log   *slog.Logger

	built atomic.Pointer[generation] // the latest translation; streams build from it
	names *nameCache                 // the name sets streams ask for, shared
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
	s := &Server{opts: opts, store: store, log: opts.Logger, names: newNameCache()}
	s.rebuild(time.Now())
	return s
}

// Register adds the ADS service to a gRPC server.
func (s *Server) Register(g *grpc.Server) {
	discovery.RegisterAggregatedDiscoveryServiceServer(g, ads{s})
}

// ads is the gRPC service; a separate type keeps its methods off Server's API.
type ads struct{ s *Server }

// StreamAggregatedResources serves one proxy's ADS stream (state of the world).
func (a ads) StreamAggregatedResources(g discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	ctx := g.Context()
	peer, err := a.s.opts.PeerIdentity(ctx)
	if err != nil {
		a.s.opts.Metrics.refused(ctx, "no-client-certificate")
		return status.Errorf(codes.Unauthenticated, "xDS needs a client certificate issued by the Trellis CA: %v", err)
	}
	return a.s.newStream(g, peer).run(ctx)
}

// DeltaAggregatedResources is refused: the sidecar speaks state-of-the-world ADS.
func (ads) DeltaAggregatedResources(discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return status.Error(codes.Unimplemented, "Trellis serves state-of-the-world ADS only")
}

// Run makes a new generation when the model changes, until ctx ends. A change after a quiet
// spell (no generation for Debounce) is translated at once: a TrafficSplit step or a policy
// edit reaches the proxies without waiting. Changes that follow are coalesced: a
// generation is made once Debounce passes without one, or MaxDelay after the first.
func (s *Server) Run(ctx context.Context) error {
	changed := s.store.Subscribe()
	var built time.Time // when the last generation was made; zero: not by this loop yet
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
		first := time.Now()
		if first.Sub(built) >= s.opts.Debounce {
			s.rebuild(first)
			built = time.Now()
			continue
		}
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
		built = time.Now()
	}
}

// rebuild translates the current model into a new generation and wakes every stream, which
// builds its proxy's configuration from it and sends what changed.
func (s *Server) rebuild(changed time.Time) {
	start := time.Now()
	st, version := s.store.Snapshot()
	prev := s.built.Load()
	gen, err := newGeneration(st, version, changed, prev)
	if err != nil {
		// Every proxy keeps its last good configuration.
		s.log.Error("translate the mesh model; proxies keep their last configuration", "error", err)
		s.opts.Metrics.rebuildFailed(context.Background(), time.Since(start))
		return
	}
	s.built.Store(gen)
	if prev != nil {
		close(prev.superseded)
	}
	s.opts.Metrics.rebuilt(context.Background(), time.Since(start), time.Since(changed))
}

// Rebuild translates the current model now, outside the debounced loop (used once the model
// is primed, before serving).
func (s *Server) Rebuild() { s.rebuild(time.Now()) }
