package xds

import (
	"testing"
	"unsafe"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

var knownNames = map[string]*entry{"outbound|backend.shop|80": {name: "outbound|backend.shop|80"}}

func requestSeeds() [][]byte {
	var out [][]byte
	for _, r := range []*discovery.DiscoveryRequest{
		{},
		{Node: &core.Node{Id: "shop/a"}, TypeUrl: resourcev3.RouteType, ResourceNames: []string{"outbound|backend.shop|80", "unknown", ""}, VersionInfo: "v1", ResponseNonce: "7"},
		{TypeUrl: resourcev3.EndpointType, ErrorDetail: &status.Status{Code: 3, Message: "bad"}, ResourceLocators: []*discovery.ResourceLocator{{Name: "x"}}},
	} {
		b, err := proto.Marshal(r)
		if err != nil {
			panic(err)
		}
		out = append(out, b)
	}
	// A name between other fields, an unknown field, a resource name with the wrong wire
	// type, invalid UTF-8, a truncated message.
	mixed := protowire.AppendTag(nil, 4, protowire.BytesType)
	mixed = protowire.AppendString(mixed, resourcev3.RouteType)
	mixed = protowire.AppendTag(mixed, 3, protowire.BytesType)
	mixed = protowire.AppendString(mixed, "outbound|backend.shop|80")
	mixed = protowire.AppendTag(mixed, 99, protowire.VarintType)
	mixed = protowire.AppendVarint(mixed, 5)
	mixed = protowire.AppendTag(mixed, 3, protowire.VarintType)
	mixed = protowire.AppendVarint(mixed, 1)
	mixed = protowire.AppendTag(mixed, 3, protowire.BytesType)
	mixed = protowire.AppendString(mixed, "second")
	bad := protowire.AppendTag(nil, 3, protowire.BytesType)
	bad = protowire.AppendBytes(bad, []byte{0xff, 0xfe})
	return append(out, mixed, bad, mixed[:len(mixed)-3])
}

// FuzzDecodeRequest: decodeRequest accepts exactly what proto.Unmarshal accepts, and
// gives the same message.
func FuzzDecodeRequest(f *testing.F) {
	for _, b := range requestSeeds() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		want := &discovery.DiscoveryRequest{}
		wantErr := proto.Unmarshal(b, want)
		got := &discovery.DiscoveryRequest{ResourceNames: []string{"stale"}, VersionInfo: "stale"}
		gotErr := decodeRequest(b, got, knownNames)
		if (wantErr == nil) != (gotErr == nil) {
			t.Fatalf("proto.Unmarshal error %v, decodeRequest error %v", wantErr, gotErr)
		}
		if wantErr == nil && !proto.Equal(want, got) {
			t.Fatalf("decoded differently:\nproto:         %v\ndecodeRequest: %v", want, got)
		}
	})
}

// TestDecodeRequestInternsKnownNames: a name the server serves is its entry's string, not a
// new one.
func TestDecodeRequestInternsKnownNames(t *testing.T) {
	b, err := proto.Marshal(&discovery.DiscoveryRequest{ResourceNames: []string{"outbound|backend.shop|80"}})
	if err != nil {
		t.Fatal(err)
	}
	req := &discovery.DiscoveryRequest{}
	if err := decodeRequest(b, req, knownNames); err != nil {
		t.Fatal(err)
	}
	if got, want := req.ResourceNames[0], knownNames["outbound|backend.shop|80"].name; unsafeData(got) != unsafeData(want) {
		t.Error("the known name was allocated again")
	}
}

func unsafeData(s string) *byte { return unsafe.StringData(s) }
