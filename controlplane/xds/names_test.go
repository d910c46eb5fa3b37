package xds

import (
	"runtime"
	"testing"
)

func TestNamesSameAs(t *testing.T) {
	c := newNameCache()
	n := c.get([]string{"a", "b", "c"})
	for _, tc := range []struct {
		name string
		list []string
		want bool
	}{
		{"the same names sorted", []string{"a", "b", "c"}, true},
		{"the same names in another order", []string{"c", "a", "b"}, true},
		{"a missing name", []string{"a", "b"}, false},
		{"another name", []string{"a", "b", "d"}, false},
		{"a duplicate in place of a name", []string{"a", "a", "b"}, false},
		{"an unsorted duplicate in place of a name", []string{"b", "a", "b"}, false},
	} {
		if got := n.sameAs(tc.list); got != tc.want {
			t.Errorf("%s: sameAs(%v) = %v, want %v", tc.name, tc.list, got, tc.want)
		}
	}
}

// TestNameCacheSharesAndForgets: equal lists get the same set, others another; a set no
// one holds any more is dropped from the cache.
func TestNameCacheSharesAndForgets(t *testing.T) {
	c := newNameCache()
	func() {
		a := c.get([]string{"x", "y"})
		if b := c.get([]string{"y", "x"}); b != a {
			t.Error("the same names in another order got another set")
		}
		if d := c.get([]string{"x"}); d == a || !d.has("x") || d.has("y") {
			t.Error("other names got the same set, or a wrong one")
		}
	}()
	for range 50 {
		runtime.GC()
		if c.size() == 0 {
			return
		}
		runtime.Gosched()
	}
	t.Errorf("%d sets are still cached after nothing holds them", c.size())
}
