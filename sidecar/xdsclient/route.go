package xdsclient

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

// retryConditions are the retry_on names the sidecar implements (docs/xds.md, Routes).
var retryConditions = []string{
	"connect-failure", "refused-stream", "reset", "5xx", "gateway-error", "retriable-4xx",
	"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
}

// trellisMetadataKey holds Trellis's own metadata on routes and endpoints.
const trellisMetadataKey = "trellis"

// parseRouteConfig reads a RouteConfiguration: one virtual host for every authority with
// one route for every path, whose action is the Route.
func parseRouteConfig(rc *routev3.RouteConfiguration) (*config.Route, error) {
	vhs := rc.GetVirtualHosts()
	if len(vhs) != 1 {
		return nil, fmt.Errorf("has %d virtual hosts; the contract has one, for every authority", len(vhs))
	}
	if rc.GetVhds() != nil {
		return nil, errors.New("vhds is not supported")
	}
	vh := vhs[0]
	if !slices.Contains(vh.GetDomains(), "*") {
		return nil, fmt.Errorf("virtual host %q: domains %v must include \"*\": the listener already chose the Service, every authority is routed", vh.GetName(), vh.GetDomains())
	}
	if vh.GetMatcher() != nil {
		return nil, fmt.Errorf("virtual host %q: matcher is not supported", vh.GetName())
	}
	routes := vh.GetRoutes()
	if len(routes) != 1 {
		return nil, fmt.Errorf("virtual host %q has %d routes; the contract has one, for every request", vh.GetName(), len(routes))
	}
	r, err := parseRoute(routes[0], vh.GetRetryPolicy())
	if err != nil {
		return nil, fmt.Errorf("virtual host %q: route %q: %w", vh.GetName(), routes[0].GetName(), err)
	}
	r.Name = rc.GetName()
	return r, nil
}

func parseRoute(rt *routev3.Route, vhRetry *routev3.RetryPolicy) (*config.Route, error) {
	m := rt.GetMatch()
	if extra := setFields(m, "prefix", "case_sensitive"); len(extra) > 0 {
		return nil, fmt.Errorf("match: %s not supported (the one route matches every request: prefix \"/\")", strings.Join(extra, ", "))
	}
	if p, ok := m.GetPathSpecifier().(*routev3.RouteMatch_Prefix); !ok || (p.Prefix != "/" && p.Prefix != "") {
		return nil, errors.New("match must be prefix \"/\": the one route matches every request")
	}
	action := rt.GetRoute()
	if action == nil {
		return nil, errors.New("the action must be route (redirects, direct responses and filter actions are not supported)")
	}
	out := &config.Route{}
	switch cs := action.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		if cs.Cluster == "" {
			return nil, errors.New("route.cluster is empty")
		}
		out.Backends = []config.WeightedCluster{{Cluster: cs.Cluster, Weight: 1}}
	case *routev3.RouteAction_WeightedClusters:
		var err error
		if out.Backends, err = weightedClusters(cs.WeightedClusters); err != nil {
			return nil, fmt.Errorf("route.weighted_clusters: %w", err)
		}
	default:
		return nil, errors.New("route needs cluster or weighted_clusters (cluster_header and cluster specifier plugins are not supported)")
	}
	var err error
	// Unset means no timeout to the sidecar, as in the API; the contract always says 0s.
	if out.Timeout, err = optDuration("route.timeout", action.GetTimeout(), 0); err != nil {
		return nil, err
	}
	if action.GetIdleTimeout() != nil {
		d, err := duration("route.idle_timeout", action.GetIdleTimeout())
		if err != nil {
			return nil, err
		}
		out.IdleTimeout = &d
	}
	rp := action.GetRetryPolicy()
	if rp == nil {
		rp = vhRetry // Envoy's rule: the route's policy, else the virtual host's
	}
	if out.Retry, err = retryPolicy(rp); err != nil {
		return nil, fmt.Errorf("route.retry_policy: %w", err)
	}
	if out.Retry != nil {
		if out.Retry.Budget, err = retryBudget(rt.GetMetadata().GetFilterMetadata()[trellisMetadataKey]); err != nil {
			return nil, fmt.Errorf("metadata.filter_metadata.trellis.retryBudget: %w", err)
		}
	}
	return out, nil
}

func weightedClusters(wc *routev3.WeightedCluster) ([]config.WeightedCluster, error) {
	var out []config.WeightedCluster
	var sum uint64
	for i, c := range wc.GetClusters() {
		if c.GetName() == "" {
			return nil, fmt.Errorf("clusters[%d]: no name (cluster_header is not supported)", i)
		}
		if c.GetWeight().GetValue() == 0 {
			return nil, fmt.Errorf("clusters[%d] %q: weight 0 or unset (weights are at least 1)", i, c.GetName())
		}
		sum += uint64(c.GetWeight().GetValue())
		out = append(out, config.WeightedCluster{Cluster: c.GetName(), Weight: c.GetWeight().GetValue()})
	}
	if len(out) == 0 {
		return nil, errors.New("no clusters")
	}
	if sum > math.MaxUint32 {
		return nil, errors.New("the weights add up to more than 2^32-1")
	}
	return out, nil
}

// retryPolicy reads Envoy's retry policy; nil when there is none or it retries on nothing.
func retryPolicy(rp *routev3.RetryPolicy) (*config.RetryPolicy, error) {
	if rp == nil {
		return nil, nil
	}
	out := &config.RetryPolicy{NumRetries: defaultNumRetries}
	for _, on := range strings.Split(rp.GetRetryOn(), ",") {
		on = strings.TrimSpace(on)
		switch {
		case on == "":
		case !slices.Contains(retryConditions, on):
			return nil, fmt.Errorf("retry_on %q is not a condition the sidecar implements (%s)", on, strings.Join(retryConditions, ", "))
		case !slices.Contains(out.On, on):
			out.On = append(out.On, on)
		}
	}
	if len(out.On) == 0 {
		return nil, nil
	}
	if n := rp.GetNumRetries(); n != nil {
		out.NumRetries = n.GetValue()
	}
	var err error
	if out.PerTryTimeout, err = optDuration("per_try_timeout", rp.GetPerTryTimeout(), 0); err != nil {
		return nil, err
	}
	return out, nil
}

// retryBudget reads trellis.retryBudget: {percent, minRetriesPerSecond, window}; nil when
// the route has none.
func retryBudget(md *structpb.Struct) (*config.RetryBudget, error) {
	v, ok := md.GetFields()["retryBudget"]
	if !ok {
		return nil, nil
	}
	s := v.GetStructValue()
	if s == nil {
		return nil, errors.New("must be an object {percent, minRetriesPerSecond, window}")
	}
	b := &config.RetryBudget{Window: defaultBudgetWindow}
	number := func(key string) (float64, error) {
		f, ok := s.GetFields()[key]
		if !ok {
			return 0, nil
		}
		n, isNumber := f.GetKind().(*structpb.Value_NumberValue)
		if !isNumber || math.IsNaN(n.NumberValue) || math.IsInf(n.NumberValue, 0) || n.NumberValue < 0 {
			return 0, fmt.Errorf("%s must be a number of at least 0, not %v", key, f.AsInterface())
		}
		return n.NumberValue, nil
	}
	var err error
	if b.Percent, err = number("percent"); err != nil {
		return nil, err
	}
	if b.MinPerSecond, err = number("minRetriesPerSecond"); err != nil {
		return nil, err
	}
	if w, ok := s.GetFields()["window"]; ok {
		if b.Window, err = jsonDuration(w); err != nil {
			return nil, fmt.Errorf("window: %w", err)
		}
		if b.Window == 0 {
			return nil, errors.New("window: 0s counts nothing")
		}
	}
	return b, nil
}

// jsonDuration reads a proto3 JSON duration ("10s", "0.250s").
func jsonDuration(v *structpb.Value) (time.Duration, error) {
	s, ok := v.GetKind().(*structpb.Value_StringValue)
	if !ok {
		return 0, fmt.Errorf("must be a duration string such as \"10s\", not %v", v.AsInterface())
	}
	quoted, err := json.Marshal(s.StringValue)
	if err != nil {
		return 0, err
	}
	d := &durationpb.Duration{}
	if err := protojson.Unmarshal(quoted, d); err != nil {
		return 0, fmt.Errorf("%q is not a duration such as \"10s\"", s.StringValue)
	}
	return duration("window", d)
}
