package proxy

import (
	"net/netip"
	"slices"
	"sort"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/sidecar/balance"
	"github.com/trellis-mesh/trellis/sidecar/breaker"
	"github.com/trellis-mesh/trellis/sidecar/config"
	"github.com/trellis-mesh/trellis/sidecar/outlier"
	"github.com/trellis-mesh/trellis/sidecar/retry"
)

// snapshot pairs a configuration with the runtime state of its clusters and routes. It is
// immutable; the states it points to are shared between snapshots, so a configuration swap
// keeps balancer estimates, outlier ejections, breaker counts, pooled connections and retry
// budgets of the clusters and routes it keeps.
type snapshot struct {
	cfg      *config.Config
	clusters map[string]*clusterState
	routes   map[string]*routeState // "http|<route name>", "tcp|<listener name>"
}

// current returns the snapshot of the current configuration, bringing the runtime state up
// to date when the configuration changed since the last call. A nil configuration gives a
// snapshot with no configuration.
func (p *Proxy) current() *snapshot {
	cfg := p.o.Config()
	s := p.snap.Load()
	if cfg == nil || s.cfg == cfg {
		return s
	}
	p.snapMu.Lock()
	defer p.snapMu.Unlock()
	s = p.snap.Load()
	if s.cfg == cfg {
		return s
	}
	ns := s.next(p, cfg)
	p.snap.Store(ns)
	return ns
}

func (s *snapshot) next(p *Proxy, cfg *config.Config) *snapshot {
	ns := &snapshot{
		cfg:      cfg,
		clusters: make(map[string]*clusterState, len(cfg.Clusters)),
		routes:   make(map[string]*routeState),
	}
	for name, cl := range cfg.Clusters {
		if cl == nil {
			continue
		}
		cs := s.clusters[name]
		if cs == nil {
			cs = newClusterState(p, name, cl)
		} else {
			cs.update(cl)
		}
		ns.clusters[name] = cs
	}
	for name, cs := range s.clusters {
		if _, ok := ns.clusters[name]; !ok {
			cs.retire() // in-flight requests finish on it; new ones cannot reach it
		}
	}
	for _, l := range cfg.Outbound {
		if l == nil {
			continue
		}
		if l.HTTP != nil {
			key := "http|" + l.HTTP.Name
			ns.routes[key] = s.routes[key].updated(l.HTTP.Backends, l.HTTP.Retry)
		}
		if l.TCP != nil {
			key := "tcp|" + l.Name
			ns.routes[key] = s.routes[key].updated(l.TCP.Backends, nil)
		}
	}
	return ns
}

// cluster returns the state of a cluster of the snapshot, nil if it has none of that name.
func (s *snapshot) cluster(name string) *clusterState {
	return s.clusters[name]
}

// httpRoute returns the state of route; a route the snapshot does not have (the listener a
// connection was accepted with, since removed) gets a fresh state of its own.
func (s *snapshot) httpRoute(r *config.Route) *routeState {
	if rs := s.routes["http|"+r.Name]; rs != nil && slices.Equal(rs.backends, r.Backends) {
		return rs
	}
	return (*routeState)(nil).updated(r.Backends, r.Retry)
}

func (s *snapshot) tcpRoute(listener string, r *config.TCPRoute) *routeState {
	if rs := s.routes["tcp|"+listener]; rs != nil && slices.Equal(rs.backends, r.Backends) {
		return rs
	}
	return (*routeState)(nil).updated(r.Backends, nil)
}

// routeState is the runtime state of a route: the weighted backend picker and the retry
// budget. It is immutable; a configuration change that keeps the backends keeps the picker,
// and one that keeps the budget keeps the budget (and its counts).
type routeState struct {
	backends  []config.WeightedCluster
	weighted  *balance.Weighted // nil when no backend has a weight: pick the first
	budgetCfg *config.RetryBudget
	budget    *retry.Budget // nil: no budget
}

func (rs *routeState) updated(backends []config.WeightedCluster, rp *config.RetryPolicy) *routeState {
	var budgetCfg *config.RetryBudget
	if rp != nil && rp.Budget != nil {
		b := *rp.Budget
		budgetCfg = &b
	}
	if rs != nil && slices.Equal(rs.backends, backends) && equalBudget(rs.budgetCfg, budgetCfg) {
		return rs
	}
	n := &routeState{backends: slices.Clone(backends), budgetCfg: budgetCfg}
	if rs != nil && slices.Equal(rs.backends, backends) {
		n.weighted = rs.weighted
	} else if len(backends) > 0 {
		weights := make([]uint32, len(backends))
		for i, b := range backends {
			weights[i] = b.Weight
		}
		n.weighted, _ = balance.NewWeighted(weights) // all zero: nil, pick the first
	}
	if rs != nil && equalBudget(rs.budgetCfg, budgetCfg) {
		n.budget = rs.budget
	} else if budgetCfg != nil {
		n.budget = retry.NewBudget(budgetCfg, time.Now)
	}
	return n
}

func equalBudget(a, b *config.RetryBudget) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// pick returns the backend cluster name for one request or connection; "" when the route
// has no backend.
func (rs *routeState) pick() string {
	switch {
	case len(rs.backends) == 0:
		return ""
	case rs.weighted == nil:
		return rs.backends[0].Cluster
	}
	return rs.backends[rs.weighted.Pick()].Cluster
}

// clusterState is the runtime state of one cluster, kept across configuration changes.
type clusterState struct {
	p       *Proxy
	name    string
	cfg     atomic.Pointer[config.Cluster]
	eps     atomic.Pointer[map[netip.AddrPort]config.Endpoint]
	bal     atomic.Pointer[balance.Balancer]
	brk     *breaker.Breaker
	od      *outlier.Detector
	pool    atomic.Pointer[upstreamPool]
	retired atomic.Bool
}

func newClusterState(p *Proxy, name string, cl *config.Cluster) *clusterState {
	cs := &clusterState{
		p:    p,
		name: name,
		brk:  breaker.New(cl.Limits),
		od:   outlier.New(cl.Outlier, time.Now),
	}
	cs.update(cl)
	return cs
}

func normalPolicy(l config.LoadBalancer) config.LoadBalancer {
	switch l {
	case config.LoadBalancerRoundRobin, config.LoadBalancerLeastRequest:
		return l
	}
	return config.LoadBalancerP2CEWMA
}

func (cs *clusterState) update(cl *config.Cluster) {
	old := cs.cfg.Swap(cl)
	idx := make(map[netip.AddrPort]config.Endpoint, len(cl.Endpoints))
	addrs := make([]netip.AddrPort, 0, len(cl.Endpoints))
	for _, e := range cl.Endpoints {
		if _, dup := idx[e.Address]; dup {
			continue
		}
		idx[e.Address] = e
		addrs = append(addrs, e.Address)
	}
	oldIdx := cs.eps.Swap(&idx)

	if b := cs.bal.Load(); b != nil && b.Policy() == normalPolicy(cl.LoadBalancer) {
		b.Update(addrs)
	} else {
		nb := balance.New(cl.LoadBalancer) // a new algorithm starts afresh
		nb.Update(addrs)
		cs.bal.Store(nb)
	}
	cs.brk.Update(cl.Limits)
	cs.od.Update(cl.Outlier, addrs)

	idle := clusterIdle(cl)
	if pl := cs.pool.Load(); pl == nil || pl.idle != idle {
		cs.pool.Store(newUpstreamPool(cs, idle))
		if pl != nil {
			closeIdleNowAndLater(pl.closeIdle) // in-flight requests finish on their connections
		}
		return
	}
	if old != nil && !mtlsEqual(old.MTLS, cl.MTLS) {
		pl := cs.pool.Load()
		closeIdleNowAndLater(pl.closeIdle) // new connections check the new identities
		return
	}
	var removed []string
	if oldIdx != nil {
		for a := range *oldIdx {
			if _, ok := idx[a]; !ok {
				removed = append(removed, a.String())
			}
		}
	}
	if len(removed) > 0 {
		pl := cs.pool.Load()
		closeIdleNowAndLater(func() { pl.forget(removed) }) // stop reusing connections to removed endpoints
	}
}

// closeIdleAfter is when connections that were busy at a change are closed too.
const closeIdleAfter = 30 * time.Second

// closeIdleNowAndLater closes idle connections now, and again a little later for those
// that were busy.
func closeIdleNowAndLater(f func()) {
	f()
	time.AfterFunc(closeIdleAfter, f)
}

func mtlsEqual(a, b config.ClientTLS) bool {
	return a.SNI == b.SNI && slices.Equal(a.ALPN, b.ALPN) && slices.Equal(a.AllowedIdentities, b.AllowedIdentities)
}

func clusterIdle(cl *config.Cluster) time.Duration {
	if cl.IdleTimeout > 0 {
		return cl.IdleTimeout
	}
	return DefaultIdleTimeout
}

func (cs *clusterState) retire() {
	cs.retired.Store(true)
	closeIdleNowAndLater(cs.closeIdle)
}

func (cs *clusterState) closeIdle() {
	if pl := cs.pool.Load(); pl != nil {
		pl.closeIdle()
	}
}

// endpoint returns the configuration of an endpoint of the cluster (MTLS, identity).
func (cs *clusterState) endpoint(a netip.AddrPort) (config.Endpoint, bool) {
	e, ok := (*cs.eps.Load())[a]
	return e, ok
}

// ClusterStats is a cluster's runtime state, for the admin /clusters page.
type ClusterStats struct {
	Name         string
	LoadBalancer string
	Breaker      breaker.Stats
	Endpoints    []EndpointStats
}

// EndpointStats is an endpoint's runtime state.
type EndpointStats struct {
	Address  netip.AddrPort
	Identity string `json:",omitempty"`
	Pod      string `json:",omitempty"`
	MTLS     bool
	Balancer balance.EndpointStats
	Outlier  outlier.EndpointState
}

// ClusterStats returns every cluster of the current configuration, sorted by name, with
// its endpoints in configuration order.
func (p *Proxy) ClusterStats() []ClusterStats {
	s := p.current()
	out := make([]ClusterStats, 0, len(s.clusters))
	for name, cs := range s.clusters {
		bal := cs.bal.Load()
		st := ClusterStats{Name: name, LoadBalancer: bal.Policy().String(), Breaker: cs.brk.Stats()}
		byAddr := make(map[netip.AddrPort]balance.EndpointStats)
		for _, e := range bal.Stats() {
			byAddr[e.Address] = e
		}
		od := make(map[netip.AddrPort]outlier.EndpointState)
		for _, e := range cs.od.States() {
			od[e.Address] = e
		}
		for _, e := range cs.cfg.Load().Endpoints {
			st.Endpoints = append(st.Endpoints, EndpointStats{
				Address: e.Address, Identity: e.Identity, Pod: e.Pod, MTLS: e.MTLS,
				Balancer: byAddr[e.Address], Outlier: od[e.Address],
			})
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
