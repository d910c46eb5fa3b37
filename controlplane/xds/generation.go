package xds

import (
	"errors"
	"fmt"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
	"github.com/trellis-mesh/trellis/controlplane/translate"
)

// resourceTypes are the xDS types Trellis serves, in the order ADS clients ask for them and
// in which a stream sends updates (clusters before the routes that use them).
var resourceTypes = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}

// generation is one translation of one model version: the shared (outbound) side of every
// type, marshalled once, and the Builder that makes each proxy's own (inbound) side.
type generation struct {
	version uint64
	state   *meshstate.State
	builder *translate.Builder
	changed time.Time // when the first change it contains was seen
	tables  map[string]*table
	names   map[string]*entry // every shared resource by name, for decoding requests (codec.go)
	// inbound names the inputs of the proxies' own side: the version of the first generation
	// with the same ones (translate.SameInbound). Views of generations with the same
	// inbound keep their own resources instead of building them again.
	inbound uint64
	// superseded is closed when a newer generation is published: the streams wait on it.
	superseded chan struct{}
}

// newGeneration translates st's shared side, reusing the entries of prev (nil for the first)
// that did not change.
func newGeneration(st *meshstate.State, version uint64, changed time.Time, prev *generation) (*generation, error) {
	gen := &generation{
		version:    version,
		inbound:    version,
		state:      st,
		builder:    translate.NewBuilder(meshstate.NewIndex(st)),
		changed:    changed,
		tables:     map[string]*table{},
		superseded: make(chan struct{}),
	}
	if prev != nil && translate.SameInbound(prev.state, st) {
		gen.inbound = prev.inbound
	}
	out, err := gen.builder.Outbound()
	if err != nil {
		return nil, err
	}
	prevTable := func(typ string) *table {
		if prev == nil {
			return nil
		}
		return prev.tables[typ]
	}
	if err := gen.fill(out, prevTable, gen.tables); err != nil {
		return nil, err
	}
	gen.names = map[string]*entry{}
	for _, t := range gen.tables {
		for name, e := range t.entries {
			gen.names[name] = e
		}
	}
	return gen, nil
}

// fill builds the tables of res into into, each on top of the one prev gives, the four
// types in parallel.
func (gen *generation) fill(res *translate.Resources, prev func(string) *table, into map[string]*table) error {
	var lis, rts, cls, eps *table
	var errs [4]error
	var wg sync.WaitGroup
	wg.Go(func() {
		lis, errs[0] = buildTable(resourcev3.ListenerType, gen.version, prev(resourcev3.ListenerType), res.Listeners, (*listenerv3.Listener).GetName)
	})
	wg.Go(func() {
		rts, errs[1] = buildTable(resourcev3.RouteType, gen.version, prev(resourcev3.RouteType), res.Routes, (*routev3.RouteConfiguration).GetName)
	})
	wg.Go(func() {
		cls, errs[2] = buildTable(resourcev3.ClusterType, gen.version, prev(resourcev3.ClusterType), res.Clusters, (*clusterv3.Cluster).GetName)
	})
	wg.Go(func() {
		eps, errs[3] = buildTable(resourcev3.EndpointType, gen.version, prev(resourcev3.EndpointType), res.Endpoints, (*endpointv3.ClusterLoadAssignment).GetClusterName)
	})
	wg.Wait()
	if err := errors.Join(errs[:]...); err != nil {
		return err
	}
	into[resourcev3.ListenerType], into[resourcev3.RouteType], into[resourcev3.ClusterType], into[resourcev3.EndpointType] = lis, rts, cls, eps
	return nil
}

// view is what one proxy is configured with in one generation: the shared tables and its
// own (inbound) resources, which never share a name with a shared one. It holds tables
// only, not the generation, so that what a stream keeps of an older view is the bytes sent.
type view struct {
	shared  map[string]*table // by type; the generation's
	own     map[string]*table // by type; the tables of the proxy's inbound resources
	inbound uint64            // the generation's inbound
}

// viewFor builds node's view of gen, on top of its view of an earlier generation (nil for
// none) so that unchanged inbound resources keep their entries.
func viewFor(gen *generation, pod meshstate.Key, prev *view) (*view, error) {
	if prev != nil && prev.inbound == gen.inbound {
		// Only the shared side changed (a TrafficSplit or TrafficPolicy, say).
		v := &view{shared: gen.tables, own: prev.own, inbound: gen.inbound}
		return v, v.checkNames()
	}
	in, err := gen.builder.Inbound(translate.Proxy{Pod: pod})
	if err != nil {
		return nil, err
	}
	v := &view{shared: gen.tables, own: map[string]*table{}, inbound: gen.inbound}
	prevOwn := func(typ string) *table {
		if prev == nil {
			return nil
		}
		return prev.own[typ]
	}
	if err := gen.fill(in, prevOwn, v.own); err != nil {
		return nil, fmt.Errorf("inbound resources of %s: %w", pod, err)
	}
	return v, v.checkNames()
}

// checkNames refuses a view whose own resources share a name with shared ones (translate
// names them apart; this guards the sending side, which would confuse them).
func (v *view) checkNames() error {
	for typ, own := range v.own {
		for name := range own.entries {
			if v.shared[typ].entries[name] != nil {
				return fmt.Errorf("%s %q is both a shared and a per-proxy resource", typ, name)
			}
		}
	}
	return nil
}

// version is the content version of one type of the view: the shared table's and the
// proxy's own, together.
func (v *view) version(typ string) string {
	return v.shared[typ].version + "." + v.own[typ].version
}
