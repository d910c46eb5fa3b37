package client_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/trellis-mesh/trellis/examples/apps/demo/client"
	"github.com/trellis-mesh/trellis/examples/apps/demo/server"
	"github.com/trellis-mesh/trellis/examples/apps/demo/wire"
)

func greeter(t *testing.T) string {
	t.Helper()
	s := &server.GRPC{Common: server.Common{
		Info:  server.Info{Service: "greeter", Version: "v1", Pod: "greeter-abc", Namespace: "shop"},
		Drain: 2 * time.Second,
	}}
	return serve(t, s.Serve)
}

func TestGRPCChat(t *testing.T) {
	o := client.DefaultGRPCOptions()
	o.Addr, o.Messages = greeter(t), 7
	o.Headers = []string{"x-trellis-peer-identity=spiffe://cluster.local/ns/shop/sa/frontend"}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	got := client.GRPCChat(context.Background(), o)
	want := client.GRPCResult{
		Addr: o.Addr, Sent: 7, Received: 7,
		Versions:           map[string]int{"v1": 7},
		Pods:               map[string]int{"greeter-abc": 7},
		PeerIdentities:     []string{"spiffe://cluster.local/ns/shop/sa/frontend"},
		UpstreamIdentities: []string{},
		Codes:              map[string]int{"OK": 1},
		Errors:             []string{},
	}
	got.LatencyMs, got.DurationMs = client.Latency{}, 0
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
}

func TestGRPCHello(t *testing.T) {
	o := client.DefaultGRPCOptions()
	o.Addr, o.Messages = greeter(t), 5
	got := client.GRPCHello(context.Background(), o)
	if got.Sent != 5 || got.Received != 5 || got.Error != "" {
		t.Errorf("sent/received/error = %d/%d/%q, want 5/5/none", got.Sent, got.Received, got.Error)
	}
	if diff := cmp.Diff(map[string]int{"OK": 5}, got.Codes); diff != "" {
		t.Errorf("codes (-want +got):\n%s", diff)
	}
	if got.LatencyMs.P50 <= 0 {
		t.Errorf("latency %+v, want a p50", got.LatencyMs)
	}
}

// sidecarEcho stands in for a greeter behind its client's sidecar: it answers like the
// demo and sets x-trellis-upstream-identity on its response headers.
type sidecarEcho struct{}

func (sidecarEcho) Hello(ctx context.Context, in *wrapperspb.StringValue) (*structpb.Struct, error) {
	grpc.SetHeader(ctx, metadata.Pairs(wire.UpstreamIdentityHeader, "spiffe://cluster.local/ns/shop/sa/greeter"))
	return structpb.NewStruct(map[string]any{"version": "v9", "pod": "p"})
}

func (sidecarEcho) Chat(stream grpc.BidiStreamingServer[wrapperspb.StringValue, structpb.Struct]) error {
	stream.SetHeader(metadata.Pairs(wire.UpstreamIdentityHeader, "spiffe://cluster.local/ns/shop/sa/greeter"))
	for {
		if _, err := stream.Recv(); err != nil {
			return nil
		}
		out, _ := structpb.NewStruct(map[string]any{"version": "v9", "pod": "p"})
		if err := stream.Send(out); err != nil {
			return err
		}
	}
}

func TestGRPCToolsReportTheUpstreamIdentity(t *testing.T) {
	ln := listen(t)
	srv := grpc.NewServer()
	srv.RegisterService(&wire.EchoServiceDesc, sidecarEcho{})
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	o := client.DefaultGRPCOptions()
	o.Addr, o.Messages = ln.Addr().String(), 2
	for name, run := range map[string]func(context.Context, client.GRPCOptions) client.GRPCResult{"grpc-chat": client.GRPCChat, "grpc-hello": client.GRPCHello} {
		got := run(context.Background(), o)
		if diff := cmp.Diff([]string{"spiffe://cluster.local/ns/shop/sa/greeter"}, got.UpstreamIdentities); diff != "" || got.Received != 2 {
			t.Errorf("%s: received %d, upstream identities (-want +got):\n%s", name, got.Received, diff)
		}
	}
}

func TestGRPCChatReportsFailures(t *testing.T) {
	t.Run("a closed port is Unavailable", func(t *testing.T) {
		o := client.DefaultGRPCOptions()
		o.Addr, o.Timeout = closedAddr(t), 3*time.Second
		got := client.GRPCChat(context.Background(), o)
		if got.Received != 0 || got.Codes["Unavailable"] != 1 || got.Error == "" {
			t.Errorf("received %d, codes %v, error %q; want nothing received, Unavailable, an error", got.Received, got.Codes, got.Error)
		}
	})

	t.Run("a server that never answers fails at the timeout", func(t *testing.T) {
		ln := listen(t)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				t.Cleanup(func() { c.Close() })
			}
		}()
		t.Cleanup(func() { ln.Close() })
		o := client.DefaultGRPCOptions()
		o.Addr, o.Timeout = ln.Addr().String(), 300*time.Millisecond
		start := time.Now()
		got := client.GRPCChat(context.Background(), o)
		if got.Codes["DeadlineExceeded"] != 1 || time.Since(start) > 3*time.Second {
			t.Errorf("codes %v after %s, want DeadlineExceeded at about the 300ms timeout", got.Codes, time.Since(start))
		}
	})
}

func TestGRPCOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    client.GRPCOptions
		want string
	}{
		{"an address without a port is refused", client.GRPCOptions{Addr: "greeter", Messages: 1, Timeout: time.Second}, "--addr"},
		{"zero messages are refused", client.GRPCOptions{Addr: "greeter:9090", Messages: 0, Timeout: time.Second}, "--messages"},
		{"a header without a value separator is refused", client.GRPCOptions{Addr: "greeter:9090", Messages: 1, Timeout: time.Second, Headers: []string{"novalue"}}, "--header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.o.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate() = %v, want an error naming %s", err, tc.want)
			}
		})
	}
}
