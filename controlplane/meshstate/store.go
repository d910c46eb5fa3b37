package meshstate

import (
	"maps"
	"reflect"
	"sync"
)

// Store holds the live model. Controllers write to it with the Set/Delete methods; readers
// take a Snapshot. Every write that changes the model bumps the version and signals the
// subscribers; a write that changes nothing (an object set again with equal content, as
// after the status writer updates its status, or a delete of an unknown key) is dropped, so
// it costs no rebuild.
type Store struct {
	mu          sync.Mutex
	state       State
	version     uint64
	subscribers []chan struct{}
}

// NewStore returns an empty store with the default mesh settings.
func NewStore() *Store {
	return &Store{state: *NewState()}
}

// NewState returns an empty State with the default mesh settings and every map made.
func NewState() *State {
	return &State{
		Mesh:                  DefaultMesh(),
		Namespaces:            map[string]*Namespace{},
		Services:              map[Key]*Service{},
		EndpointSlices:        map[Key]*EndpointSlice{},
		Pods:                  map[Key]*Pod{},
		Splits:                map[Key]*Split{},
		TrafficPolicies:       map[Key]*TrafficPolicy{},
		AuthorizationPolicies: map[Key]*AuthorizationPolicy{},
	}
}

// Subscribe returns a channel that receives a value after one or more writes since the last
// receive. Each consumer subscribes once; a slow consumer never blocks writers, it just sees
// several writes as one.
func (s *Store) Subscribe() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := make(chan struct{}, 1)
	s.subscribers = append(s.subscribers, ch)
	return ch
}

// Snapshot returns a copy of the state and its version. The copy's maps are fresh; the values
// they point to are never modified after being stored, so the copy is safe to read forever.
func (s *Store) Snapshot() (*State, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.state
	st.Mesh.NamespaceModes = maps.Clone(s.state.Mesh.NamespaceModes)
	st.Namespaces = maps.Clone(s.state.Namespaces)
	st.Services = maps.Clone(s.state.Services)
	st.EndpointSlices = maps.Clone(s.state.EndpointSlices)
	st.Pods = maps.Clone(s.state.Pods)
	st.Splits = maps.Clone(s.state.Splits)
	st.TrafficPolicies = maps.Clone(s.state.TrafficPolicies)
	st.AuthorizationPolicies = maps.Clone(s.state.AuthorizationPolicies)
	return &st, s.version
}

func (s *Store) write(fn func(*State) bool) {
	s.mu.Lock()
	if !fn(&s.state) {
		s.mu.Unlock()
		return
	}
	s.version++
	subs := s.subscribers
	s.mu.Unlock()
	for _, ch := range subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// SetMesh replaces the mesh-wide settings.
func (s *Store) SetMesh(m Mesh) {
	s.write(func(st *State) bool {
		if reflect.DeepEqual(st.Mesh, m) {
			return false
		}
		st.Mesh = m
		return true
	})
}

// SetNamespace stores or replaces a namespace.
func (s *Store) SetNamespace(n *Namespace) {
	s.write(func(st *State) bool { return put(st.Namespaces, n.Name, n) })
}

// DeleteNamespace forgets a namespace.
func (s *Store) DeleteNamespace(name string) {
	s.write(func(st *State) bool { return remove(st.Namespaces, name) })
}

// SetService stores or replaces a Service. The value must not be modified afterwards.
func (s *Store) SetService(v *Service) {
	s.write(func(st *State) bool { return put(st.Services, v.Key, v) })
}

// DeleteService forgets a Service.
func (s *Store) DeleteService(k Key) { s.write(func(st *State) bool { return remove(st.Services, k) }) }

// SetEndpointSlice stores or replaces an EndpointSlice.
func (s *Store) SetEndpointSlice(v *EndpointSlice) {
	s.write(func(st *State) bool { return put(st.EndpointSlices, v.Key, v) })
}

// DeleteEndpointSlice forgets an EndpointSlice.
func (s *Store) DeleteEndpointSlice(k Key) {
	s.write(func(st *State) bool { return remove(st.EndpointSlices, k) })
}

// SetPod stores or replaces a Pod.
func (s *Store) SetPod(v *Pod) { s.write(func(st *State) bool { return put(st.Pods, v.Key, v) }) }

// DeletePod forgets a Pod.
func (s *Store) DeletePod(k Key) { s.write(func(st *State) bool { return remove(st.Pods, k) }) }

// SetSplit stores or replaces a TrafficSplit.
func (s *Store) SetSplit(v *Split) { s.write(func(st *State) bool { return put(st.Splits, v.Key, v) }) }

// DeleteSplit forgets a TrafficSplit.
func (s *Store) DeleteSplit(k Key) { s.write(func(st *State) bool { return remove(st.Splits, k) }) }

// SetTrafficPolicy stores or replaces a TrafficPolicy.
func (s *Store) SetTrafficPolicy(v *TrafficPolicy) {
	s.write(func(st *State) bool { return put(st.TrafficPolicies, v.Key, v) })
}

// DeleteTrafficPolicy forgets a TrafficPolicy.
func (s *Store) DeleteTrafficPolicy(k Key) {
	s.write(func(st *State) bool { return remove(st.TrafficPolicies, k) })
}

// SetAuthorizationPolicy stores or replaces an AuthorizationPolicy.
func (s *Store) SetAuthorizationPolicy(v *AuthorizationPolicy) {
	s.write(func(st *State) bool { return put(st.AuthorizationPolicies, v.Key, v) })
}

// DeleteAuthorizationPolicy forgets an AuthorizationPolicy.
func (s *Store) DeleteAuthorizationPolicy(k Key) {
	s.write(func(st *State) bool { return remove(st.AuthorizationPolicies, k) })
}

// put stores v under k unless an equal value is there already; it says whether it did.
func put[K comparable, V any](m map[K]*V, k K, v *V) bool {
	if old, ok := m[k]; ok && (old == v || reflect.DeepEqual(old, v)) {
		return false
	}
	m[k] = v
	return true
}

// remove deletes k if present; it says whether it did.
func remove[K comparable, V any](m map[K]V, k K) bool {
	if _, ok := m[k]; !ok {
		return false
	}
	delete(m, k)
	return true
}
