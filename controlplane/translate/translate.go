// Package translate turns the mesh model (meshstate) into the Envoy v3 xDS resources of one
// proxy. It is a pure function of its input: no I/O, no clock, no randomness, and the same
// State always gives the same resources, sorted by name. docs/xds.md describes the subset of
// the Envoy API it emits and what each field means to the Trellis sidecar.
//
// The outbound side (one listener, route, cluster and ClusterLoadAssignment per Service
// port) is the same for every proxy, so a Builder makes it once per State and every Build
// shares it; only the inbound side (the proxy's own pod) is made per proxy.
package translate

import (
	"cmp"
	"fmt"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

// Proxy is the sidecar being configured, named by the pod it runs in.
type Proxy struct{ Pod meshstate.Key }

// Resources are the xDS resources of one proxy, each list sorted by name. The messages may
// be shared with other proxies built by the same Builder: treat them as read-only.
type Resources struct {
	Listeners []*listenerv3.Listener
	Routes    []*routev3.RouteConfiguration
	Clusters  []*clusterv3.Cluster
	Endpoints []*endpointv3.ClusterLoadAssignment
}

// Builder translates one indexed State for many proxies. It is safe for concurrent Build
// calls: after NewBuilder returns it is never written again.
type Builder struct {
	ix       *meshstate.Index
	outbound *Resources
	// outboundErr is why the outbound side could not be built; every Build reports it,
	// because a proxy with half a configuration would drop traffic silently.
	outboundErr error
	// targets maps a pod to the ports Services send it traffic on, with the protocol they
	// declare. Computed once: finding them per proxy would walk every endpoint every time.
	targets map[meshstate.Key]map[uint32]appProtocol
}

// NewBuilder prepares the translation of an indexed State. The State must not change while
// the Builder is in use (meshstate.Store snapshots never do).
func NewBuilder(ix *meshstate.Index) *Builder {
	b := &Builder{ix: ix, targets: podTargets(ix)}
	b.outbound, b.outboundErr = buildOutbound(ix)
	return b
}

// Build returns the resources of one proxy: Outbound and Inbound merged. It refuses a pod it
// does not know or that runs no Trellis sidecar: configuring such a proxy would mean
// guessing who it is.
func (b *Builder) Build(p Proxy) (*Resources, error) {
	out, err := b.Outbound()
	if err != nil {
		return nil, fmt.Errorf("proxy %s: %w", p.Pod, err)
	}
	in, err := b.Inbound(p)
	if err != nil {
		return nil, err
	}
	return &Resources{
		Listeners: mergeSorted(out.Listeners, in.Listeners, (*listenerv3.Listener).GetName),
		Routes:    mergeSorted(out.Routes, in.Routes, (*routev3.RouteConfiguration).GetName),
		Clusters:  mergeSorted(out.Clusters, in.Clusters, (*clusterv3.Cluster).GetName),
		Endpoints: mergeSorted(out.Endpoints, in.Endpoints, (*endpointv3.ClusterLoadAssignment).GetClusterName),
	}, nil
}

// Outbound returns the resources every proxy shares (read-only). They reference each other
// only: no inbound resource names them, and they name no inbound resource.
func (b *Builder) Outbound() (*Resources, error) {
	if b.outboundErr != nil {
		return nil, fmt.Errorf("outbound configuration: %w", b.outboundErr)
	}
	return b.outbound, nil
}

// Inbound returns the resources of one proxy's own pod. They reference no route or endpoint
// assignment by name (inbound routes are inline, inbound clusters static), so they are
// consistent on their own.
func (b *Builder) Inbound(p Proxy) (*Resources, error) {
	pod := b.ix.State().Pods[p.Pod]
	if pod == nil {
		return nil, fmt.Errorf("proxy %s: pod not found in the mesh state; it may not be synced yet", p.Pod)
	}
	if !pod.Injected {
		return nil, fmt.Errorf("proxy %s: pod is not injected with the Trellis sidecar, so it gets no configuration; label its namespace trellis.dev/inject=enabled and restart it", p.Pod)
	}
	in, err := buildInbound(b.ix, pod, b.targets[pod.Key])
	if err != nil {
		return nil, fmt.Errorf("proxy %s: inbound configuration: %w", p.Pod, err)
	}
	return in, nil
}

// sortResources orders every list by name.
func (r *Resources) sortResources() {
	sortByName(r.Listeners, (*listenerv3.Listener).GetName)
	sortByName(r.Routes, (*routev3.RouteConfiguration).GetName)
	sortByName(r.Clusters, (*clusterv3.Cluster).GetName)
	sortByName(r.Endpoints, (*endpointv3.ClusterLoadAssignment).GetClusterName)
}

func sortByName[T any](list []T, name func(T) string) {
	slices.SortFunc(list, func(a, b T) int { return cmp.Compare(name(a), name(b)) })
}

// mergeSorted merges two lists sorted by name into a new one, so that the shared outbound
// lists are never written and the per-proxy cost stays linear.
func mergeSorted[T any](a, b []T, name func(T) string) []T {
	out := make([]T, 0, len(a)+len(b))
	for len(a) > 0 && len(b) > 0 {
		if name(b[0]) < name(a[0]) {
			out, b = append(out, b[0]), b[1:]
		} else {
			out, a = append(out, a[0]), a[1:]
		}
	}
	out = append(out, a...)
	return append(out, b...)
}
