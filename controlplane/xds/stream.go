package xds

import (
	"cmp"
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

// adsStream is one state-of-the-world ADS stream. Everything runs on the stream's own
// goroutine: requests (read by a helper goroutine) and new generations are handled one at
// a time, and each type has at most one response awaiting its ACK, as in Envoy's protocol.
//
// What is sent (https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol):
//   - Listeners and clusters: every resource, each time one of them changes (the protocol
//     wants the whole state of the world for these two types).
//   - Route configurations and endpoint assignments: the resources asked for by name, and
//     of those only the ones whose content differs from what the client acknowledged.
//     The protocol allows this for every type but listeners and clusters; a client keeps
//     what a response does not list. A TrafficSplit weight change thus sends each proxy
//     one route configuration, not all of them.
type adsStream struct {
	s        *Server
	grpc     discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer
	identity spiffeid.ID
	log      *slog.Logger

	node  string // bound by the first request
	pod   meshstate.Key
	view  *view       // the latest configuration built for the node
	seen  *generation // the latest generation looked at (view's, unless building failed)
	types map[string]*typeState
	nonce uint64
}

// typeState is the stream's state for one resource type.
type typeState struct {
	subscribed bool
	wildcard   bool   // every resource of the type (always for listeners and clusters)
	names      *names // the names asked for, unless wildcard; replaced, never written
	// must is set by a request that needs an answer even if nothing changed: the first
	// one of the type, one that changes the names asked for, one with an empty nonce.
	must     bool
	acked    *sent  // what the client holds (nil: nothing yet)
	inflight *sent  // the response awaiting an ACK or NACK
	nonce    string // of the latest response
	rejected string // the version last NACKed: it is not sent again
}

// sent is the configuration of one type a response brings the client to: the shared and
// own tables it was taken from, limited to names.
type sent struct {
	version     string
	shared, own *table
	names       *names // nil for wildcard
}

// lookup finds a resource of the sent configuration by name.
func (s *sent) lookup(name string) *entry {
	if e := s.own.entries[name]; e != nil {
		return e
	}
	return s.shared.entries[name]
}

// sentOf is what sending type typ of v for asked brings the client to.
func sentOf(v *view, typ, version string, asked *names) *sent {
	return &sent{version: version, shared: v.shared[typ], own: v.own[typ], names: asked}
}

func (s *Server) newStream(g discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer, id spiffeid.ID) *adsStream {
	return &adsStream{s: s, grpc: g, identity: id, log: s.log.With("identity", id.String()), types: map[string]*typeState{}}
}

// run serves the stream until the client ends it or an error does.
func (st *adsStream) run(ctx context.Context) error {
	reqs := make(chan *discovery.DiscoveryRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := st.grpc.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	defer func() {
		if st.node != "" {
			st.s.opts.Metrics.connected(context.Background(), -1)
		}
	}()
	for {
		var superseded chan struct{}
		if st.seen != nil {
			superseded = st.seen.superseded
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-recvErr:
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		case req := <-reqs:
			if err := st.onRequest(ctx, req); err != nil {
				return err
			}
		case <-superseded:
			if err := st.onGeneration(ctx, st.s.built.Load()); err != nil {
				return err
			}
		}
	}
}

// onRequest handles one request: binds the stream to its node the first time, takes the
// ACK or NACK it carries, and answers if there is something to send.
func (st *adsStream) onRequest(ctx context.Context, req *discovery.DiscoveryRequest) error {
	if err := st.bind(ctx, req.GetNode().GetId()); err != nil {
		return err
	}
	typ := req.GetTypeUrl()
	if !isServed(typ) {
		st.log.Debug("ignoring a request for a type Trellis does not serve", "node", st.node, "type", typ)
		return nil
	}
	ts := st.types[typ]
	if ts == nil {
		ts = &typeState{}
		st.types[typ] = ts
	}
	nonce := req.GetResponseNonce()
	switch {
	case nonce == "":
		// An initial request: the client holds nothing of this type (a new subscription,
		// or the client started over).
		ts.acked, ts.inflight, ts.rejected, ts.must = nil, nil, "", true
	case ts.nonce != "" && nonce != ts.nonce:
		// It answers an older response than the latest: the client will answer that one.
		return nil
	case ts.inflight != nil:
		switch {
		case req.GetErrorDetail() != nil:
			st.s.opts.Metrics.nacked(ctx, typ)
			st.log.Warn("proxy rejected a configuration update; it keeps its last good one", "node", st.node,
				"type", shortType(typ), "version", ts.inflight.version, "error", truncate(req.GetErrorDetail().GetMessage(), maxLoggedError))
			ts.rejected = ts.inflight.version
		case req.GetVersionInfo() == ts.inflight.version:
			ts.acked = ts.inflight
		}
		// Otherwise the client dropped the response unapplied (it asked for other names
		// meanwhile): it holds what it acknowledged before.
		ts.inflight = nil
	}
	// Listeners and clusters are always all of them; for the other types no names means
	// all of them only in a first request (the legacy wildcard), later it means none.
	wildcard := typ == resourcev3.ListenerType || typ == resourcev3.ClusterType ||
		(len(req.GetResourceNames()) == 0 && (!ts.subscribed || ts.wildcard))
	switch {
	case wildcard:
		if !ts.subscribed || !ts.wildcard {
			ts.must = true
		}
		ts.names = nil
	case !ts.subscribed || ts.wildcard || !ts.names.sameAs(req.GetResourceNames()):
		ts.must = true
		ts.names = st.s.names.get(req.GetResourceNames())
	}
	ts.subscribed, ts.wildcard = true, wildcard
	return st.send(ctx, typ)
}

// bind checks, on the first request, that the stream's certificate may have the node's
// configuration, and builds it; later requests must name the same node.
func (st *adsStream) bind(ctx context.Context, node string) error {
	switch {
	case st.node != "" && node != st.node:
		st.s.opts.Metrics.refused(ctx, "node-changed")
		return status.Errorf(codes.PermissionDenied, "stream is bound to node %s; it cannot ask for %s", st.node, node)
	case st.node != "":
		return nil
	case node == "":
		return status.Error(codes.InvalidArgument, "the first request of a stream must carry the node")
	}
	gen := st.s.built.Load()
	if gen == nil {
		return status.Error(codes.Unavailable, "the control plane has no configuration built yet; retry")
	}
	if err := authorizeNode(gen.state, st.identity, node); err != nil {
		st.s.opts.Metrics.refused(ctx, status.Code(err).String())
		st.log.Warn("refused xDS stream", "node", node, "error", err)
		return err
	}
	pod, err := ParseNodeID(node)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	v, err := viewFor(gen, pod, nil)
	if err != nil {
		st.s.opts.Metrics.buildFailed(ctx)
		return status.Errorf(codes.FailedPrecondition, "build configuration for %s: %v", node, err)
	}
	st.node, st.pod, st.view, st.seen = node, pod, v, gen
	st.log = st.log.With("node", node)
	st.s.opts.Metrics.connected(ctx, 1)
	st.log.Info("proxy connected")
	return nil
}

// onGeneration builds the node's configuration from a new generation and sends each type
// that changed. If it cannot be built the proxy keeps its last configuration.
func (st *adsStream) onGeneration(ctx context.Context, gen *generation) error {
	st.seen = gen
	v, err := viewFor(gen, st.pod, st.view)
	if err != nil {
		st.s.opts.Metrics.buildFailed(ctx)
		st.log.Error("build configuration; the proxy keeps its last one", "version", gen.version, "error", err)
		return nil
	}
	st.view = v
	for _, typ := range resourceTypes {
		if err := st.send(ctx, typ); err != nil {
			return err
		}
	}
	return nil
}

// send sends the client what changed of one type since what it acknowledged, unless a
// response of that type still awaits its answer (the next request brings send back).
func (st *adsStream) send(ctx context.Context, typ string) error {
	ts := st.types[typ]
	if ts == nil || !ts.subscribed || ts.inflight != nil || st.view == nil {
		return nil
	}
	cur := st.view
	version := cur.version(typ)
	var list []*entry
	if ts.wildcard {
		if !ts.must && ((ts.acked != nil && ts.acked.version == version) || ts.rejected == version) {
			return nil
		}
		list = cur.all(typ)
	} else {
		list = cur.changed(typ, ts.names, ts.acked)
		if len(list) == 0 && !ts.must {
			// The client holds this version's content for every name it asked for.
			if ts.acked != nil {
				ts.acked = sentOf(cur, typ, ts.acked.version, ts.names)
			}
			return nil
		}
		if !ts.must && version == ts.rejected {
			return nil
		}
	}
	resources := make([]*anypb.Any, len(list))
	for i, e := range list {
		resources[i] = e.any
	}
	st.nonce++
	nonce := strconv.FormatUint(st.nonce, 10)
	if err := st.grpc.Send(&discovery.DiscoveryResponse{VersionInfo: version, Resources: resources, TypeUrl: typ, Nonce: nonce}); err != nil {
		return err
	}
	ts.nonce, ts.must = nonce, false
	ts.inflight = sentOf(cur, typ, version, ts.names)
	st.s.opts.Metrics.pushed(ctx, typ)
	return nil
}

// all lists every resource of a type, shared ones then the proxy's own.
func (v *view) all(typ string) []*entry {
	shared, own := v.shared[typ].sorted, v.own[typ].sorted
	out := make([]*entry, 0, len(shared)+len(own))
	return append(append(out, shared...), own...)
}

// changed lists the resources of names whose content the client, which holds had (nil:
// nothing), does not have. When had answered the same names and its tables are in the
// current tables' recent history, only the names those changes touched are looked at.
func (v *view) changed(typ string, asked *names, had *sent) []*entry {
	var candidates []string
	scan := true
	if had != nil && had.names == asked {
		shared, okShared := v.shared[typ].changedSince(had.shared)
		own, okOwn := v.own[typ].changedSince(had.own)
		if okShared && okOwn {
			candidates, scan = append(shared, own...), false
		}
	}
	if scan {
		candidates = make([]string, 0, len(asked.set))
		for n := range asked.set {
			candidates = append(candidates, n)
		}
	}
	var out []*entry
	seen := map[string]bool{}
	for _, n := range candidates {
		if !asked.has(n) || seen[n] {
			continue
		}
		seen[n] = true
		e := v.own[typ].entries[n]
		if e == nil {
			e = v.shared[typ].entries[n]
		}
		if e == nil {
			continue
		}
		if had != nil && had.names.has(n) {
			if old := had.lookup(n); old != nil && old.hash == e.hash {
				continue
			}
		}
		out = append(out, e)
	}
	sortByName(out)
	return out
}

func isServed(typ string) bool { return slices.Contains(resourceTypes, typ) }

// maxLoggedError bounds how much of a proxy's NACK message the control plane logs.
const maxLoggedError = 2 << 10

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

func sortByName(list []*entry) {
	slices.SortFunc(list, func(a, b *entry) int { return cmp.Compare(a.name, b.name) })
}
