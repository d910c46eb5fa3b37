package xds

import (
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// A new generation goes out before requests are read. Each ACK of a state-of-the-world
// client repeats every name it asks for (1000 route names, say), and decoding 2000 of them
// took more CPU than sending the 2000 responses they answer; decoded first, they delay
// the responses of the proxies served last. So while a generation is being sent, decoding
// DiscoveryRequests waits, at most fanoutHold after the generation was published (a
// stream that cannot send, its client stalled, holds no one up for longer).
const fanoutHold = 200 * time.Millisecond

// ServerOptions are the gRPC server options the xDS server needs: a codec that holds
// DiscoveryRequest decoding during a fan-out, delegating everything to gRPC's proto codec.
func (s *Server) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ForceServerCodecV2(holdCodec{s: s, base: encoding.GetCodecV2(protocodec.Name)})}
}

type holdCodec struct {
	s    *Server
	base encoding.CodecV2
}

func (c holdCodec) Marshal(v any) (mem.BufferSlice, error) { return c.base.Marshal(v) }
func (c holdCodec) Name() string                           { return c.base.Name() }

func (c holdCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if _, ok := v.(*discovery.DiscoveryRequest); ok {
		c.s.awaitFanout()
	}
	return c.base.Unmarshal(data, v)
}

// awaitFanout waits until every stream bound when the latest generation was published has
// sent it, or fanoutHold after its publication.
func (s *Server) awaitFanout() {
	gen := s.built.Load()
	if gen == nil || gen.fanout.Load() <= 0 {
		return
	}
	wait := time.Until(gen.published.Add(fanoutHold))
	if wait <= 0 {
		return
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-gen.fannedOut:
	case <-t.C:
	}
}

// sent counts one stream that was bound before gen was published as done with it.
func (gen *generation) sent() {
	if gen.fanout.Add(-1) == 0 {
		close(gen.fannedOut)
	}
}
