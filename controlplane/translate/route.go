package translate

import (
	"math"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

// defaultRetryOn is the API's default for RetryPolicy.RetryOn, used when the model leaves
// the list empty: an empty retry_on would silently retry nothing.
var defaultRetryOn = []string{"connect-failure", "refused-stream", "unavailable", "cancelled", "gateway-error"}

// defaultBudgetWindow is the API's default for RetryBudget.Window.
const defaultBudgetWindow = 10 * time.Second

// destination is where the traffic of one Service port goes: its own cluster, or the
// backends of the TrafficSplit rooted at it; and the TrafficPolicy of that root Service,
// which governs the route whichever backend a request lands on.
type destination struct {
	cluster  string            // the root Service port's own cluster
	backends []weightedCluster // the split's clusters; empty when no split applies
	policy   *meshstate.TrafficPolicy
}

// weightedCluster is one backend of a split.
type weightedCluster struct {
	name   string
	weight uint32
}

func (o *outbound) destination(root meshstate.Key, port uint32) destination {
	return destination{
		cluster:  outboundClusterName(root, port),
		backends: splitBackends(o.ix, root, port),
		policy:   o.ix.PolicyFor(root),
	}
}

// splitBackends resolves the TrafficSplit rooted at a Service for one of its ports, by the
// SMI rule: a backend receives the traffic on its port with the same number as the root
// port. It returns nil, so that traffic stays on the root Service, when no split applies.
//
//   - A split with matches is not applied at all: HTTPRouteGroups cannot be resolved yet, and
//     splitting all traffic would send requests the user meant to keep on the root elsewhere.
//   - A backend that does not exist, is headless (no cluster) or lacks the port is dropped,
//     and so is one with weight 0, which could receive nothing anyway.
//   - When nothing is left, traffic goes to the root: a split never loses traffic.
func splitBackends(ix *meshstate.Index, root meshstate.Key, port uint32) []weightedCluster {
	split := ix.SplitFor(root)
	if split == nil || len(split.Matches) > 0 {
		return nil
	}
	var out []weightedCluster
	var sum uint64
	for _, b := range split.Backends {
		key := meshstate.Key{Namespace: root.Namespace, Name: b.Service}
		if _, ok := servedPort(ix.State().Services[key], port); !ok || b.Weight == 0 {
			continue
		}
		sum += uint64(b.Weight)
		out = addWeight(out, outboundClusterName(key, port), b.Weight)
	}
	if sum == 0 {
		return nil
	}
	return fitWeights(out, sum)
}

// addWeight adds a backend, merging a Service listed twice (the API refuses that; the sum of
// its weights is what the user meant).
func addWeight(list []weightedCluster, name string, w uint32) []weightedCluster {
	for i := range list {
		if list[i].name == name {
			list[i].weight = uint32(min(uint64(list[i].weight)+uint64(w), math.MaxUint32))
			return list
		}
	}
	return append(list, weightedCluster{name: name, weight: w})
}

// fitWeights scales weights down when their sum overflows the uint32 clients add them up
// in (the API caps weights far below that), keeping the proportions and dropping what
// rounds to 0.
func fitWeights(list []weightedCluster, sum uint64) []weightedCluster {
	if sum <= math.MaxUint32 {
		return list
	}
	out := list[:0]
	for _, w := range list {
		if scaled := uint64(w.weight) * math.MaxUint32 / sum; scaled > 0 {
			out = append(out, weightedCluster{name: w.name, weight: uint32(scaled)})
		}
	}
	return out
}

// routeConfig is the RDS resource of an HTTP (or undeclared) Service port: one virtual host
// for any authority, one route for every path.
func routeConfig(key meshstate.Key, port uint32, dest destination) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: outboundName(key, port),
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    virtualHostName(key, port),
			Domains: []string{"*"},
			Routes:  []*routev3.Route{outboundRoute(dest)},
		}},
	}
}

// outboundRoute sends every request to the destination under the root's TrafficPolicy.
func outboundRoute(dest destination) *routev3.Route {
	action := &routev3.RouteAction{
		// Unset means no request timeout in the API, but 15s in Envoy: say it.
		Timeout: dur(0),
	}
	if len(dest.backends) == 0 {
		action.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: dest.cluster}
	} else {
		wc := &routev3.WeightedCluster{}
		for _, b := range dest.backends {
			wc.Clusters = append(wc.Clusters, &routev3.WeightedCluster_ClusterWeight{Name: b.name, Weight: u32(b.weight)})
		}
		action.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: wc}
	}
	r := &routev3.Route{
		Name:   "default",
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: action},
	}
	if tp := dest.policy; tp != nil {
		applyTimeouts(action, tp.Timeouts)
		if rp := retryPolicy(tp.Retries); rp != nil {
			action.RetryPolicy = rp
			r.Metadata = retryBudgetMetadata(tp.Retries.Budget)
		}
	}
	return r
}

// applyTimeouts sets the request and stream idle timeouts; 0 turns either off, as in Envoy.
func applyTimeouts(action *routev3.RouteAction, t *meshstate.Timeouts) {
	if t == nil {
		return
	}
	if d := nonNegative(t.Request); d != nil {
		action.Timeout = dur(*d)
	}
	if d := nonNegative(t.Idle); d != nil {
		action.IdleTimeout = dur(*d)
	}
}

// retryPolicy is Envoy's retry policy for the API's; nil when retries are off. RetryOn
// values are Envoy's own retry_on names (both the HTTP and the gRPC ones).
func retryPolicy(r *meshstate.Retries) *routev3.RetryPolicy {
	if r == nil || r.Attempts == 0 {
		return nil
	}
	on := r.RetryOn
	if len(on) == 0 {
		on = defaultRetryOn
	}
	rp := &routev3.RetryPolicy{RetryOn: strings.Join(on, ","), NumRetries: u32(r.Attempts)}
	if d := nonNegative(r.PerTryTimeout); d != nil && *d > 0 {
		rp.PerTryTimeout = dur(*d)
	}
	return rp
}

// retryBudgetMetadata carries the retry budget in route metadata. Envoy's own retry_budget
// caps concurrent retries as a share of active requests, which is not the API's rate-based
// budget (a share of requests over a window plus a floor per second), so the Trellis
// sidecar reads this instead and a stock Envoy ignores it (docs/xds.md).
func retryBudgetMetadata(b meshstate.RetryBudget) *corev3.Metadata {
	window := b.Window
	if window <= 0 {
		window = defaultBudgetWindow
	}
	return metadata(map[string]map[string]any{trellisMetadataKey: {
		"retryBudget": map[string]any{
			"percent":             float64(b.Percent),
			"minRetriesPerSecond": float64(b.MinPerSecond),
			"window":              durationText(window),
		},
	}})
}
