package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/trellis-mesh/trellis/examples/apps/demo/wire"
)

// GRPC serves demo.Echo and grpc.health.v1.Health (SERVING for "" and "demo.Echo" until
// shutdown begins, then NOT_SERVING).
type GRPC struct {
	Common
}

// Serve serves gRPC on ln until ctx ends, then stops gracefully within Drain.
func (s *GRPC) Serve(ctx context.Context, ln net.Listener) error {
	log := s.logger()
	var opts []grpc.ServerOption
	if s.Verbose {
		opts = append(opts, grpc.ChainUnaryInterceptor(s.logUnary), grpc.ChainStreamInterceptor(s.logStream))
	}
	srv := grpc.NewServer(opts...)
	srv.RegisterService(&wire.EchoServiceDesc, &echoServer{info: s.Info})
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(wire.EchoService, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)

	log.Info("serving gRPC demo.Echo", "addr", ln.Addr().String(), "service", s.Info.Service, "version", s.Info.Version)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve gRPC on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	hs.Shutdown()
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	t := time.NewTimer(s.drain())
	defer t.Stop()
	select {
	case <-stopped:
		log.Info("stopped", "addr", ln.Addr().String())
		return nil
	case <-t.C:
		srv.Stop()
		return fmt.Errorf("drain gRPC on %s: streams still open after %s", ln.Addr(), s.drain())
	}
}

func (s *GRPC) logUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	s.logger().Info("rpc", "method", info.FullMethod, "peer", peerIdentity(ctx), "remote", remoteAddr(ctx),
		"error", errString(err), "duration", time.Since(start).String())
	return resp, err
}

func (s *GRPC) logStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	err := handler(srv, ss)
	s.logger().Info("stream", "method", info.FullMethod, "peer", peerIdentity(ss.Context()), "remote", remoteAddr(ss.Context()),
		"error", errString(err), "duration", time.Since(start).String())
	return err
}

type echoServer struct {
	info Info
}

func (e *echoServer) reply(ctx context.Context, text string, seq int) (*structpb.Struct, error) {
	return structpb.NewStruct(map[string]any{
		wire.FieldMessage:      text,
		wire.FieldSeq:          float64(seq),
		wire.FieldService:      e.info.Service,
		wire.FieldVersion:      e.info.Version,
		wire.FieldPod:          e.info.Pod,
		wire.FieldNamespace:    e.info.Namespace,
		wire.FieldPeerIdentity: peerIdentity(ctx),
	})
}

func (e *echoServer) Hello(ctx context.Context, in *wrapperspb.StringValue) (*structpb.Struct, error) {
	return e.reply(ctx, in.GetValue(), 1)
}

func (e *echoServer) Chat(stream grpc.BidiStreamingServer[wrapperspb.StringValue, structpb.Struct]) error {
	ctx := stream.Context()
	for seq := 1; ; seq++ {
		in, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		out, err := e.reply(ctx, in.GetValue(), seq)
		if err != nil {
			return err
		}
		if err := stream.Send(out); err != nil {
			return err
		}
	}
}

func peerIdentity(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(wire.PeerIdentityHeader); len(v) > 0 {
		return v[0]
	}
	return ""
}

func remoteAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
