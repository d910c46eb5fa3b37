package translate

import (
	"fmt"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// deterministic marshals typed configs with sorted map keys (RBAC policies are a map), so
// that the same State always gives byte-identical resources and the xDS server never pushes
// a change that is not one.
var deterministic = proto.MarshalOptions{Deterministic: true}

// collector wraps typed configs into Any and keeps the first marshalling error. Marshalling
// only fails on strings that are not valid UTF-8, which the Kubernetes API never lets
// through; collecting the error keeps the many small builders free of error plumbing for a
// case valid input never reaches, while still never emitting a half-built resource.
type collector struct{ err error }

func (c *collector) any(m proto.Message) *anypb.Any {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, deterministic); err != nil && c.err == nil {
		c.err = fmt.Errorf("marshal %s: %w (is every name valid UTF-8?)", m.ProtoReflect().Descriptor().FullName(), err)
	}
	return a
}

// ads is the config source for every dynamic resource: the one ADS stream.
func ads() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

// socketAddress is an IP (either family) and port.
func socketAddress(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       ip,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func u32(v uint32) *wrapperspb.UInt32Value { return wrapperspb.UInt32(v) }

func dur(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

// durationText writes a duration the way proto3 JSON does ("10s", "0.250s"), which every
// xDS client already parses; Go's "1m0s" form is not portable.
func durationText(d time.Duration) string {
	sign := ""
	if d < 0 {
		sign, d = "-", -d
	}
	secs, nanos := int64(d/time.Second), int64(d%time.Second)
	switch {
	case nanos == 0:
		return fmt.Sprintf("%s%ds", sign, secs)
	case nanos%1e6 == 0:
		return fmt.Sprintf("%s%d.%03ds", sign, secs, nanos/1e6)
	case nanos%1e3 == 0:
		return fmt.Sprintf("%s%d.%06ds", sign, secs, nanos/1e3)
	default:
		return fmt.Sprintf("%s%d.%09ds", sign, secs, nanos)
	}
}

// metadata builds filter_metadata from plain Go values. Only the types structpb knows are
// used by callers (string, bool, number, map), so NewStruct cannot fail on them.
func metadata(byNamespace map[string]map[string]any) *corev3.Metadata {
	md := &corev3.Metadata{FilterMetadata: make(map[string]*structpb.Struct, len(byNamespace))}
	for ns, fields := range byNamespace {
		s, err := structpb.NewStruct(fields)
		if err != nil { // unreachable with the callers' value types; drop rather than guess
			continue
		}
		md.FilterMetadata[ns] = s
	}
	return md
}

// validPort reports whether a port number can appear in a socket address. Kubernetes never
// stores others, but a bad port must not turn into an invalid resource.
func validPort(p uint32) bool { return p >= 1 && p <= 65535 }

// nonNegative reads an optional duration of the model; a negative one (which the API
// refuses) counts as unset rather than becoming an invalid resource.
func nonNegative(d *time.Duration) *time.Duration {
	if d == nil || *d < 0 {
		return nil
	}
	return d
}
