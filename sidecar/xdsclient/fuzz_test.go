package xdsclient

import (
	"slices"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	"github.com/trellis-mesh/trellis/controlplane/translate"
)

// FuzzConvert merges fuzzed bytes into one resource of a real translation (proto merge
// keeps the rest of the resource, so the fuzzer explores variations of what the control
// plane emits, typed configs included) and converts the result. Convert must not panic,
// and must give the same answer twice.
func FuzzConvert(f *testing.F) {
	var bases []*translate.Resources
	for _, name := range goldenNames(f) {
		if res, err := build(f, readGolden(f, name)); err == nil {
			bases = append(bases, res)
		}
	}
	for i, res := range bases {
		for j, m := range messagesOf(res) {
			if j%3 != 0 {
				continue
			}
			b, err := proto.Marshal(m)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(uint8(i), uint16(j), b)
			f.Add(uint8(i), uint16(j), b[:len(b)/2])
		}
	}
	f.Add(uint8(0), uint16(0), []byte{0x0a, 0x00})
	f.Fuzz(func(t *testing.T, base uint8, which uint16, data []byte) {
		// Convert never writes its inputs: only the fuzzed resource needs a copy.
		res, target := withCopy(bases[int(base)%len(bases)], int(which))
		if err := (proto.UnmarshalOptions{Merge: true}).Unmarshal(data, target); err != nil {
			return
		}
		cfg1, err1 := convertResources(res)
		cfg2, err2 := convertResources(res)
		if (err1 == nil) != (err2 == nil) || (err1 != nil && err1.Error() != err2.Error()) {
			t.Fatalf("two conversions disagree: %v / %v", err1, err2)
		}
		if err1 == nil {
			if cfg1.Outbound == nil || cfg1.Clusters == nil {
				t.Fatal("a Config without its maps")
			}
			if diff := cmp.Diff(cfg1, cfg2, cmpAddrs); diff != "" {
				t.Fatalf("two conversions differ:\n%s", diff)
			}
		}
	})
}

// messagesOf lists every resource, in a fixed order.
func messagesOf(r *translate.Resources) []proto.Message {
	var out []proto.Message
	for _, m := range r.Listeners {
		out = append(out, m)
	}
	for _, m := range r.Routes {
		out = append(out, m)
	}
	for _, m := range r.Clusters {
		out = append(out, m)
	}
	for _, m := range r.Endpoints {
		out = append(out, m)
	}
	return out
}

// withCopy is r with resource i (in messagesOf order) replaced by a copy, returned for
// editing.
func withCopy(r *translate.Resources, i int) (*translate.Resources, proto.Message) {
	out := &translate.Resources{
		Listeners: slices.Clone(r.Listeners), Routes: slices.Clone(r.Routes),
		Clusters: slices.Clone(r.Clusters), Endpoints: slices.Clone(r.Endpoints),
	}
	n := len(messagesOf(r))
	i %= n
	switch {
	case i < len(out.Listeners):
		out.Listeners[i] = proto.Clone(out.Listeners[i]).(*listenerv3.Listener)
		return out, out.Listeners[i]
	case i < len(out.Listeners)+len(out.Routes):
		i -= len(out.Listeners)
		out.Routes[i] = proto.Clone(out.Routes[i]).(*routev3.RouteConfiguration)
		return out, out.Routes[i]
	case i < len(out.Listeners)+len(out.Routes)+len(out.Clusters):
		i -= len(out.Listeners) + len(out.Routes)
		out.Clusters[i] = proto.Clone(out.Clusters[i]).(*clusterv3.Cluster)
		return out, out.Clusters[i]
	default:
		i -= len(out.Listeners) + len(out.Routes) + len(out.Clusters)
		out.Endpoints[i] = proto.Clone(out.Endpoints[i]).(*endpointv3.ClusterLoadAssignment)
		return out, out.Endpoints[i]
	}
}
