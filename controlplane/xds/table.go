package xds

import (
	"fmt"
	"slices"

	"github.com/cespare/xxhash/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// entry is one resource, marshalled once: every proxy that is sent it is sent these bytes.
type entry struct {
	name string
	any  *anypb.Any
	hash uint64 // of the marshalled bytes; equal hashes mean equal content
}

// table is the resources of one type that every proxy shares, in one generation. It is
// never written once built. An unchanged resource keeps its entry from the table before
// (so that it is marshalled, hashed and held once), and an unchanged table is the very
// table before: a stream compares pointers to know a type did not change.
type table struct {
	typeURL string
	seq     uint64 // the model version this content first appeared at
	entries map[string]*entry
	sorted  []*entry // by name: full responses list them in this order
	version string
	// history lists the changes of the last few generations that changed this table,
	// oldest first, the last one this table's own. A stream whose client holds an older
	// table in the history sends only the resources those changes name.
	history []change
}

// change is the resources added, changed or removed at one model version.
type change struct {
	seq   uint64
	names []string
}

// historyDepth bounds how many changes a table remembers. A client further behind (it was
// slow to ACK through several changes) is compared name by name instead.
const historyDepth = 8

var marshal = proto.MarshalOptions{Deterministic: true}

// newEntry marshals a resource. Resources are well-formed messages built by translate,
// so marshalling cannot fail in practice; if it does, the error names the resource.
func newEntry(typeURL, name string, m proto.Message) (*entry, error) {
	b, err := marshal.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("marshal %s %q: %w", typeURL, name, err)
	}
	return &entry{name: name, any: &anypb.Any{TypeUrl: typeURL, Value: b}, hash: xxhash.Sum64(b)}, nil
}

// buildTable makes the table of the named messages at model version seq, reusing what did
// not change since prev (nil for the first).
func buildTable[M proto.Message](typeURL string, seq uint64, prev *table, list []M, name func(M) string) (*table, error) {
	entries := make(map[string]*entry, len(list))
	var changed []string
	for _, m := range list {
		n := name(m)
		if _, dup := entries[n]; dup {
			return nil, fmt.Errorf("%s %q is listed twice", typeURL, n)
		}
		e, err := newEntry(typeURL, n, m)
		if err != nil {
			return nil, err
		}
		if prev != nil {
			if old := prev.entries[n]; old != nil && old.hash == e.hash {
				e = old
			}
		}
		if prev == nil || prev.entries[n] != e {
			changed = append(changed, n)
		}
		entries[n] = e
	}
	if prev != nil {
		for n := range prev.entries {
			if entries[n] == nil {
				changed = append(changed, n)
			}
		}
		if len(changed) == 0 {
			return prev, nil
		}
	}
	t := &table{typeURL: typeURL, seq: seq, entries: entries}
	t.sorted = sortedEntries(entries)
	t.version = versionOf(t.sorted)
	if prev != nil {
		t.history = append(t.history, prev.history[max(0, len(prev.history)-historyDepth+1):]...)
	}
	slices.Sort(changed)
	t.history = append(t.history, change{seq: seq, names: changed})
	return t, nil
}

// changedSince lists the names that changed between old and t, and false when old is not
// in t's recent history (the caller then compares name by name).
func (t *table) changedSince(old *table) ([]string, bool) {
	if old == t {
		return nil, true
	}
	if old == nil {
		return nil, false
	}
	for i, c := range t.history {
		if c.seq == old.seq {
			var out []string
			for _, later := range t.history[i+1:] {
				out = append(out, later.names...)
			}
			return out, true
		}
	}
	return nil, false
}

func sortedEntries(m map[string]*entry) []*entry {
	out := make([]*entry, 0, len(m))
	for _, e := range m {
		out = append(out, e)
	}
	sortByName(out)
	return out
}

// versionOf is the content version of entries listed in name order: the hash of their
// names and hashes, so that two control-plane replicas agree on it.
func versionOf(sorted []*entry) string {
	d := xxhash.New()
	var buf [8]byte
	for _, e := range sorted {
		_, _ = d.WriteString(e.name)
		_, _ = d.Write([]byte{0})
		for i := range buf {
			buf[i] = byte(e.hash >> (8 * i))
		}
		_, _ = d.Write(buf[:])
	}
	return formatHash(d.Sum64())
}

func formatHash(v uint64) string {
	const digits = "0123456789abcdef"
	var b [16]byte
	for i := 15; i >= 0; i-- {
		b[i] = digits[v&0xf]
		v >>= 4
	}
	return string(b[:])
}
