package server_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/trellis-mesh/trellis/examples/apps/demo/server"
	"github.com/trellis-mesh/trellis/examples/apps/demo/wire"
)

func dialGRPC(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func TestGRPCServer(t *testing.T) {
	s := &server.GRPC{Common: common()}
	addr, _ := serve(t, s.Serve)
	cc := dialGRPC(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const caller = "spiffe://cluster.local/ns/shop/sa/frontend"
	ctx = metadata.AppendToOutgoingContext(ctx, wire.PeerIdentityHeader, caller)

	t.Run("Hello echoes the text with who served and who called", func(t *testing.T) {
		out, err := wire.Hello(ctx, cc, "hi")
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]any{"message": "hi", "seq": 1.0, "service": "backend", "version": "v2", "pod": "backend-v2-abc",
			"namespace": "shop", "peerIdentity": caller}
		if diff := cmp.Diff(want, out.AsMap()); diff != "" {
			t.Errorf("reply (-want +got):\n%s", diff)
		}
	})

	t.Run("Chat answers every message in order on one stream and ends when the client does", func(t *testing.T) {
		stream, err := wire.Chat(ctx, cc)
		if err != nil {
			t.Fatal(err)
		}
		for i, text := range []string{"one", "two", "three"} {
			if err := stream.Send(wrapperspb.String(text)); err != nil {
				t.Fatal(err)
			}
			out, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			m := out.AsMap()
			if m["message"] != text || m["seq"] != float64(i+1) || m["peerIdentity"] != caller || m["version"] != "v2" {
				t.Errorf("reply %d = %v", i+1, m)
			}
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			t.Errorf("after CloseSend Recv = %v, want EOF", err)
		}
	})

	t.Run("health says SERVING for the server and for demo.Echo", func(t *testing.T) {
		hc := healthpb.NewHealthClient(cc)
		for _, svc := range []string{"", wire.EchoService} {
			resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
			if err != nil {
				t.Fatalf("Check(%q): %v", svc, err)
			}
			if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Errorf("Check(%q) = %s", svc, resp.GetStatus())
			}
		}
	})
}

func TestGRPCServerStopsGracefully(t *testing.T) {
	s := &server.GRPC{Common: common()}
	addr, stop := serve(t, s.Serve)
	cc := dialGRPC(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := wire.Chat(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(wrapperspb.String("before")); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	// The open stream keeps working while the server drains...
	time.Sleep(100 * time.Millisecond)
	if err := stream.Send(wrapperspb.String("during")); err != nil {
		t.Fatalf("send during the drain: %v", err)
	}
	if out, err := stream.Recv(); err != nil || out.AsMap()["message"] != "during" {
		t.Fatalf("recv during the drain: %v, %v", out, err)
	}
	// ...and the server stops once it ends.
	stream.CloseSend()
	stream.Recv()
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("Serve returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the server did not stop after the last stream ended")
	}
}
