package meshstate

import (
	"cmp"
	"net/netip"
	"slices"
)

// SPIFFEID is the identity of a ServiceAccount: spiffe://<trust domain>/ns/<ns>/sa/<sa>.
func (m Mesh) SPIFFEID(namespace, serviceAccount string) string {
	td := m.TrustDomain
	if td == "" {
		td = DefaultTrustDomain
	}
	return "spiffe://" + td + "/ns/" + namespace + "/sa/" + serviceAccount
}

// Endpoint is one ready address of a Service port.
type Endpoint struct {
	Address netip.Addr
	Port    uint32
	Pod     *Pod // nil when the endpoint has no known pod
}

// Index answers the questions translate and the status reporter ask of a State, with one
// definition of each answer. Build it once per State with NewIndex.
type Index struct {
	state    *State
	slices   map[Key][]*EndpointSlice
	splits   map[Key]*Split
	policies map[Key]*TrafficPolicy
	// Conflicts maps a split or policy that lost to an older one on the same Service to the
	// winner's key.
	Conflicts map[Key]Key
}

// NewIndex indexes a State.
func NewIndex(s *State) *Index {
	ix := &Index{
		state:     s,
		slices:    map[Key][]*EndpointSlice{},
		splits:    map[Key]*Split{},
		policies:  map[Key]*TrafficPolicy{},
		Conflicts: map[Key]Key{},
	}
	for _, es := range s.EndpointSlices {
		ix.slices[es.Service] = append(ix.slices[es.Service], es)
	}
	for _, list := range ix.slices {
		slices.SortFunc(list, func(a, b *EndpointSlice) int { return cmp.Compare(a.Key.Name, b.Key.Name) })
	}
	for _, sp := range sortedValues(s.Splits, func(v *Split) (int64, Key) { return v.Created.UnixNano(), v.Key }) {
		root := Key{Namespace: sp.Key.Namespace, Name: sp.Service}
		if winner, ok := ix.splits[root]; ok {
			ix.Conflicts[sp.Key] = winner.Key
			continue
		}
		ix.splits[root] = sp
	}
	for _, tp := range sortedValues(s.TrafficPolicies, func(v *TrafficPolicy) (int64, Key) { return v.Created.UnixNano(), v.Key }) {
		target := Key{Namespace: tp.Key.Namespace, Name: tp.Target}
		if winner, ok := ix.policies[target]; ok {
			ix.Conflicts[tp.Key] = winner.Key
			continue
		}
		ix.policies[target] = tp
	}
	return ix
}

// sortedValues orders values oldest first, then by key, so that "the oldest wins" is
// deterministic.
func sortedValues[V any](m map[Key]V, order func(V) (int64, Key)) []V {
	out := make([]V, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b V) int {
		ta, ka := order(a)
		tb, kb := order(b)
		if c := cmp.Compare(ta, tb); c != 0 {
			return c
		}
		return cmp.Or(cmp.Compare(ka.Namespace, kb.Namespace), cmp.Compare(ka.Name, kb.Name))
	})
	return out
}

// State is the indexed state.
func (ix *Index) State() *State { return ix.state }

// SplitFor is the TrafficSplit in effect for a root Service, or nil. When several split the
// same Service, the oldest wins and the others are in Conflicts.
func (ix *Index) SplitFor(svc Key) *Split { return ix.splits[svc] }

// PolicyFor is the TrafficPolicy in effect for a Service, or nil; the oldest wins.
func (ix *Index) PolicyFor(svc Key) *TrafficPolicy { return ix.policies[svc] }

// ReadyEndpoints lists the ready endpoints of a Service port (by the Service port's name),
// sorted by address and port, without duplicates.
func (ix *Index) ReadyEndpoints(svc Key, portName string) []Endpoint {
	var out []Endpoint
	for _, es := range ix.slices[svc] {
		var port uint32
		found := false
		for _, p := range es.Ports {
			if p.Name == portName {
				port, found = p.Port, true
				break
			}
		}
		if !found {
			continue
		}
		for _, e := range es.Endpoints {
			if !e.Ready {
				continue
			}
			var pod *Pod
			if e.Pod != nil {
				pod = ix.state.Pods[*e.Pod]
			}
			for _, a := range e.Addresses {
				out = append(out, Endpoint{Address: a, Port: port, Pod: pod})
			}
		}
	}
	slices.SortFunc(out, func(a, b Endpoint) int {
		return cmp.Or(a.Address.Compare(b.Address), cmp.Compare(a.Port, b.Port))
	})
	return slices.CompactFunc(out, func(a, b Endpoint) bool { return a.Address == b.Address && a.Port == b.Port })
}

// Identities lists the SPIFFE IDs allowed to serve a Service port: those of the meshed pods
// behind its ready endpoints, sorted and without duplicates.
func (ix *Index) Identities(svc Key, portName string) []string {
	var out []string
	for _, e := range ix.ReadyEndpoints(svc, portName) {
		if e.Pod != nil && e.Pod.Injected {
			out = append(out, ix.state.Mesh.SPIFFEID(e.Pod.Key.Namespace, e.Pod.ServiceAccount))
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// AuthorizationPoliciesFor lists the AuthorizationPolicies that select a pod, by key.
func (ix *Index) AuthorizationPoliciesFor(pod *Pod) []*AuthorizationPolicy {
	var out []*AuthorizationPolicy
	for _, ap := range ix.state.AuthorizationPolicies {
		if ap.Key.Namespace == pod.Key.Namespace && ap.Selector.Matches(pod.Labels) {
			out = append(out, ap)
		}
	}
	slices.SortFunc(out, func(a, b *AuthorizationPolicy) int { return cmp.Compare(a.Key.Name, b.Key.Name) })
	return out
}
