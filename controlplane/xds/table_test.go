package xds

import (
	"slices"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

func routes(names ...string) []*routev3.RouteConfiguration {
	var out []*routev3.RouteConfiguration
	for _, n := range names {
		out = append(out, &routev3.RouteConfiguration{Name: n})
	}
	return out
}

func build(t *testing.T, seq uint64, prev *table, list []*routev3.RouteConfiguration) *table {
	t.Helper()
	tb, err := buildTable(resourcev3.RouteType, seq, prev, list, (*routev3.RouteConfiguration).GetName)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// TestTableReusesWhatDidNotChange: unchanged resources keep their entries, an unchanged
// table is the table before, and the history says which names changed since a version.
func TestTableReusesWhatDidNotChange(t *testing.T) {
	t1 := build(t, 1, nil, routes("a", "b", "c"))
	if t2 := build(t, 2, t1, routes("a", "b", "c")); t2 != t1 {
		t.Fatal("the same content gave a new table")
	}
	changed := routes("a", "b", "c")
	changed[1].VirtualHosts = []*routev3.VirtualHost{{Name: "x"}}
	t3 := build(t, 3, t1, changed)
	if t3.entries["a"] != t1.entries["a"] || t3.entries["b"] == t1.entries["b"] {
		t.Error("entries: want a reused and b new")
	}
	if t3.version == t1.version {
		t.Error("the version did not change with the content")
	}
	t4 := build(t, 4, t3, changed[:2]) // c removed
	got, ok := t4.changedSince(t1)
	if !ok || !slices.Equal(got, []string{"b", "c"}) {
		t.Errorf("changedSince(t1) = %v, %v; want [b c], true", got, ok)
	}
	if got, ok := t4.changedSince(t3); !ok || !slices.Equal(got, []string{"c"}) {
		t.Errorf("changedSince(t3) = %v, %v; want [c], true", got, ok)
	}
	// Far behind: the history no longer reaches t1.
	tb := t4
	for i := range historyDepth {
		list := routes("a")
		list[0].VirtualHosts = []*routev3.VirtualHost{{Name: string(rune('k' + i))}}
		tb = build(t, uint64(10+i), tb, list)
	}
	if _, ok := tb.changedSince(t1); ok {
		t.Error("a table older than the history was found in it")
	}
	if _, err := buildTable(resourcev3.RouteType, 99, nil, routes("a", "a"), (*routev3.RouteConfiguration).GetName); err == nil {
		t.Error("a duplicate name was accepted")
	}
}
