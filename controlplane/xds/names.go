package xds

import (
	"runtime"
	"slices"
	"sync"
	"weak"

	"github.com/cespare/xxhash/v2"
)

// names is a set of resource names a client asked for. It is never written once made: a
// request with other names gets another set, so comparing pointers tells whether the names
// changed. Streams asking for the same names share one set (nameCache): 2000 proxies that
// each ask for the same 1000 route names hold one set, not 2000.
type names struct{ set map[string]bool }

func (n *names) has(name string) bool { return n != nil && n.set[name] }

// sameAs says whether list holds exactly the names of n, without allocating when it does
// and is sorted (as the Trellis sidecar and Envoy send them).
func (n *names) sameAs(list []string) bool {
	if n == nil || len(list) != len(n.set) {
		return false
	}
	sorted := true
	for i, name := range list {
		if !n.set[name] {
			return false
		}
		if i > 0 && list[i-1] >= name {
			sorted = false
		}
	}
	if sorted {
		return true // strictly increasing: no duplicates, so the same set
	}
	distinct := map[string]bool{}
	for _, name := range list {
		distinct[name] = true
	}
	return len(distinct) == len(n.set)
}

// nameCache hands out one shared set per distinct list of names. It holds the sets weakly:
// a set no stream uses any more is collected and its entry removed.
type nameCache struct {
	mu   sync.Mutex
	sets map[uint64][]weak.Pointer[names] // by hashNames
}

func newNameCache() *nameCache { return &nameCache{sets: map[uint64][]weak.Pointer[names]{}} }

// get returns the set of list's names.
func (c *nameCache) get(list []string) *names {
	h := hashNames(list)
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, wp := range c.sets[h] {
		if n := wp.Value(); n != nil && n.sameAs(list) {
			return n
		}
	}
	n := &names{set: make(map[string]bool, len(list))}
	for _, name := range list {
		n.set[name] = true
	}
	c.sets[h] = append(c.sets[h], weak.Make(n))
	runtime.AddCleanup(n, c.drop, h)
	return n
}

// drop forgets the collected sets of one hash.
func (c *nameCache) drop(h uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	live := slices.DeleteFunc(c.sets[h], func(wp weak.Pointer[names]) bool { return wp.Value() == nil })
	if len(live) == 0 {
		delete(c.sets, h)
		return
	}
	c.sets[h] = live
}

// size is how many sets the cache knows, live or not yet dropped.
func (c *nameCache) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, l := range c.sets {
		n += len(l)
	}
	return n
}

// hashNames hashes the distinct names of list, in any order.
func hashNames(list []string) uint64 {
	var sum uint64
	for i, name := range list {
		if i > 0 && list[i-1] == name {
			continue // adjacent duplicate; others make a set no request shares, which is only slower
		}
		sum += xxhash.Sum64String(name)
	}
	return sum
}
