package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

// testService echoes: UnaryCall returns the payload (or sleeps past the deadline when asked
// with response size -1), FullDuplexCall answers every message as it arrives.
type testService struct {
	testpb.UnimplementedTestServiceServer
}

func (testService) UnaryCall(ctx context.Context, in *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	peer := ""
	if v := md.Get("x-trellis-peer-identity"); len(v) == 1 {
		peer = v[0]
	}
	if in.GetResponseSize() < 0 {
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	grpc.SetTrailer(ctx, metadata.Pairs("x-trailer", "from-the-app"))
	return &testpb.SimpleResponse{Payload: in.GetPayload(), Username: peer}, nil
}

func (testService) FullDuplexCall(stream testpb.TestService_FullDuplexCallServer) error {
	for {
		in, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			stream.SetTrailer(metadata.Pairs("x-stream-trailer", "done"))
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: in.GetPayload()}); err != nil {
			return err
		}
	}
}

func grpcApp(t *testing.T) string {
	t.Helper()
	l := listen(t)
	srv := grpc.NewServer()
	testpb.RegisterTestServiceServer(srv, testService{})
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return l.Addr().String()
}

func TestGRPCThroughTheSidecars(t *testing.T) {
	p := newPair(t, grpcApp(t), pairOpts{outProto: config.ProtocolHTTP2, inProto: config.ProtocolHTTP2, httpCluster: true, strict: true, upstream: config.UpstreamHTTP2, clusterUp: config.UpstreamHTTP2})
	cc, err := grpc.NewClient("passthrough:///"+p.client, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := testpb.NewTestServiceClient(cc)

	t.Run("unary with trailers and the peer identity", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var trailer metadata.MD
		resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("ping")}}, grpc.Trailer(&trailer))
		if err != nil {
			t.Fatal(err)
		}
		if string(resp.GetPayload().GetBody()) != "ping" {
			t.Errorf("payload %q", resp.GetPayload().GetBody())
		}
		if resp.GetUsername() != p.a.id {
			t.Errorf("the app saw peer %q, want %q", resp.GetUsername(), p.a.id)
		}
		if got := trailer.Get("x-trailer"); len(got) != 1 || got[0] != "from-the-app" {
			t.Errorf("trailer %v", trailer)
		}
	})

	t.Run("bidirectional streaming answers each message as it arrives", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stream, err := client.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, msg := range []string{"one", "two", "three"} {
			if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte(msg)}}); err != nil {
				t.Fatal(err)
			}
			// The reply comes before the client sends more: both directions stream.
			resp, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if string(resp.GetPayload().GetBody()) != msg {
				t.Fatalf("got %q, want %q", resp.GetPayload().GetBody(), msg)
			}
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("end of stream: %v", err)
		}
		if got := stream.Trailer().Get("x-stream-trailer"); len(got) != 1 || got[0] != "done" {
			t.Errorf("stream trailer %v", stream.Trailer())
		}
	})

	t.Run("the client's deadline is honoured", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: -1})
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("got %v, want DeadlineExceeded", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("the call took %v", d)
		}
	})

	t.Run("a proxy error is a gRPC status", func(t *testing.T) {
		cfg := *p.aCfg
		cfg.Clusters = map[string]*config.Cluster{svcName: {Name: svcName}}
		p.a.cfg.Store(&cfg)
		defer p.a.cfg.Store(p.aCfg)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
		if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != "no healthy endpoint in "+svcName {
			t.Fatalf("got %v, want Unavailable: no healthy endpoint", err)
		}
	})
}

func TestGRPCTimeoutIsEnforcedByTheProxy(t *testing.T) {
	// An app that ignores grpc-timeout: only the proxy can end the call in time.
	appAddr := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	p := newPair(t, appAddr, pairOpts{outProto: config.ProtocolHTTP2, inProto: config.ProtocolHTTP2, httpCluster: true, strict: true, upstream: config.UpstreamHTTP2})
	req, _ := http.NewRequest(http.MethodPost, "http://web.default/grpc.testing.TestService/UnaryCall", strings.NewReader("\x00\x00\x00\x00\x00"))
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	req.Header.Set("Grpc-Timeout", "200m")
	start := time.Now()
	resp, err := h2cClientTo(p.client).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("the call took %v; the proxy should end it after 200ms", d)
	}
	code := resp.Header.Get("Grpc-Status")
	if code == "" {
		code = resp.Trailer.Get("Grpc-Status")
	}
	if resp.StatusCode != 200 || code != "4" {
		t.Errorf("got HTTP %d grpc-status %q, want 200 and 4 (DEADLINE_EXCEEDED)", resp.StatusCode, code)
	}
}
