package xds

import (
	"errors"
	"unicode/utf8"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// A state-of-the-world ACK repeats every name the proxy asks for: at 2000 proxies that ask
// for 1000 route names each, one weight change brings 2 million names, and decoding them
// (an allocation and a UTF-8 check each, then garbage) was the largest item in the CPU
// profile of a push. The server knows almost every name already: it is one of the
// resources it serves. So DiscoveryRequests are decoded with resource_names taken from
// the latest generation's names when they match, and only the other fields go through
// the protobuf library.

// ServerOptions are the gRPC server options the xDS server wants: a codec that decodes
// DiscoveryRequests as above and leaves every other message to gRPC's proto codec.
func (s *Server) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ForceServerCodecV2(requestCodec{s: s, base: encoding.GetCodecV2(protocodec.Name)})}
}

type requestCodec struct {
	s    *Server
	base encoding.CodecV2
}

func (c requestCodec) Marshal(v any) (mem.BufferSlice, error) { return c.base.Marshal(v) }
func (c requestCodec) Name() string                           { return c.base.Name() }

func (c requestCodec) Unmarshal(data mem.BufferSlice, v any) error {
	req, ok := v.(*discovery.DiscoveryRequest)
	if !ok {
		return c.base.Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	var known map[string]*entry
	if gen := c.s.built.Load(); gen != nil {
		known = gen.names
	}
	return decodeRequest(buf.ReadOnlyData(), req, known)
}

// resourceNamesField is DiscoveryRequest.resource_names.
const resourceNamesField protowire.Number = 3

var errInvalidUTF8 = errors.New("resource_names: a name is not valid UTF-8")

// decodeRequest is proto.Unmarshal for a DiscoveryRequest, with the resource names that are
// keys of known taken from there (their entries' names) instead of allocated.
func decodeRequest(b []byte, req *discovery.DiscoveryRequest, known map[string]*entry) error {
	var rest []byte
	var names []string
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return protowire.ParseError(m)
		}
		if num == resourceNamesField && typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(b[n:])
			if e := known[string(v)]; e != nil {
				names = append(names, e.name)
			} else if utf8.Valid(v) {
				names = append(names, string(v))
			} else {
				return errInvalidUTF8
			}
		} else {
			rest = append(rest, b[:n+m]...)
		}
		b = b[n+m:]
	}
	if err := proto.Unmarshal(rest, req); err != nil {
		return err
	}
	req.ResourceNames = names
	return nil
}
