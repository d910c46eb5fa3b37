package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/trellis-mesh/trellis/examples/apps/demo/wire"
)

// GRPCOptions are the flags of `trellis-demo grpc-chat` and `grpc-hello`.
type GRPCOptions struct {
	Addr     string        // host:port
	Messages int           // grpc-chat: messages on the one stream; grpc-hello: unary calls
	Headers  []string      // name=value request metadata, repeatable
	Timeout  time.Duration // for the whole stream (grpc-chat) or per call (grpc-hello)
}

// DefaultGRPCOptions are the flag defaults.
func DefaultGRPCOptions() GRPCOptions { return GRPCOptions{Messages: 10, Timeout: 10 * time.Second} }

// Validate says what is wrong with the options, for a usage error.
func (o GRPCOptions) Validate() error {
	if _, _, err := net.SplitHostPort(o.Addr); err != nil || o.Addr == "" {
		return fmt.Errorf("--addr %q: want host:port, e.g. greeter:9090", o.Addr)
	}
	if o.Messages < 1 {
		return fmt.Errorf("--messages/--n %d: want at least 1", o.Messages)
	}
	if o.Timeout <= 0 {
		return fmt.Errorf("--timeout %s: want a positive duration", o.Timeout)
	}
	_, err := ParseHeaders(o.Headers)
	return err
}

func (o GRPCOptions) dial() (*grpc.ClientConn, error) {
	return grpc.NewClient("passthrough:///"+o.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

func (o GRPCOptions) outgoing(ctx context.Context) context.Context {
	headers, _ := ParseHeaders(o.Headers)
	for _, h := range headers {
		ctx = metadata.AppendToOutgoingContext(ctx, h[0], h[1])
	}
	return ctx
}

// GRPCResult is what `trellis-demo grpc-chat` and `grpc-hello` print.
type GRPCResult struct {
	Addr     string `json:"addr"`
	Sent     int    `json:"sent"`     // messages (chat) or calls (hello) sent
	Received int    `json:"received"` // replies received
	// Versions and Pods count the replies by the server's version and pod. A Chat stream
	// stays on one server; separate Hello calls may be spread by the mesh.
	Versions map[string]int `json:"versions"`
	Pods     map[string]int `json:"pods"`
	// PeerIdentities: the caller's SPIFFE ID as the server's sidecar verified it (from the
	// replies). UpstreamIdentities: the x-trellis-upstream-identity response metadata.
	PeerIdentities     []string `json:"peerIdentities"`
	UpstreamIdentities []string `json:"upstreamIdentities"`
	// Codes counts the final gRPC status of each stream or call ("OK": 1).
	Codes map[string]int `json:"codes"`
	// Error is the first failure ("" if none); Errors the first few distinct ones.
	Error      string   `json:"error"`
	Errors     []string `json:"errors"`
	LatencyMs  Latency  `json:"latencyMs"` // per message round trip (chat) or call (hello)
	DurationMs float64  `json:"durationMs"`
}

type grpcTally struct {
	res        GRPCResult
	peers, ups set
	errs       errorList
	lat        []time.Duration
}

func newGRPCTally(addr string) *grpcTally {
	return &grpcTally{
		res:   GRPCResult{Addr: addr, Versions: map[string]int{}, Pods: map[string]int{}, Codes: map[string]int{}},
		peers: set{}, ups: set{},
	}
}

func (t *grpcTally) reply(s *structpb.Struct) {
	t.res.Received++
	f := s.GetFields()
	if v := f[wire.FieldVersion].GetStringValue(); v != "" {
		t.res.Versions[v]++
	}
	if p := f[wire.FieldPod].GetStringValue(); p != "" {
		t.res.Pods[p]++
	}
	t.peers.add(f[wire.FieldPeerIdentity].GetStringValue())
}

func (t *grpcTally) header(md metadata.MD) {
	for _, v := range md.Get(wire.UpstreamIdentityHeader) {
		t.ups.add(v)
	}
}

func (t *grpcTally) end(err error) {
	t.res.Codes[status.Code(err).String()]++
	if err != nil {
		if t.res.Error == "" {
			t.res.Error = err.Error()
		}
		t.errs.add(err.Error())
	}
}

func (t *grpcTally) result(start time.Time) GRPCResult {
	r := t.res
	r.PeerIdentities, r.UpstreamIdentities = t.peers.list(), t.ups.list()
	r.Errors = append([]string{}, t.errs...)
	r.LatencyMs = latencyOf(t.lat)
	r.DurationMs = ms(time.Since(start))
	return r
}

// GRPCChat opens one demo.Echo/Chat stream, sends o.Messages messages one at a time, waiting
// for each echo, then closes its side and waits for the server's end of stream.
func GRPCChat(ctx context.Context, o GRPCOptions) GRPCResult {
	start := time.Now()
	t := newGRPCTally(o.Addr)
	t.end(chat(ctx, o, t))
	return t.result(start)
}

func chat(ctx context.Context, o GRPCOptions, t *grpcTally) error {
	cc, err := o.dial()
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(o.outgoing(ctx), o.Timeout)
	defer cancel()
	stream, err := wire.Chat(ctx, cc)
	if err != nil {
		return err
	}
	gotHeader := false
	for i := 1; i <= o.Messages; i++ {
		sent := time.Now()
		if err := stream.Send(wrapperspb.String("message " + strconv.Itoa(i))); err != nil {
			if errors.Is(err, io.EOF) {
				// The stream failed; its status comes from Recv.
				_, err = stream.Recv()
			}
			return err
		}
		t.res.Sent++
		out, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("the server ended the stream after %d of %d replies", t.res.Received, o.Messages)
			}
			return err
		}
		t.lat = append(t.lat, time.Since(sent))
		if !gotHeader {
			if md, err := stream.Header(); err == nil {
				t.header(md)
			}
			gotHeader = true
		}
		t.reply(out)
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		if err == nil {
			return errors.New("the server sent a reply nobody asked for")
		}
		return err
	}
	return nil
}

// GRPCHello makes o.Messages unary demo.Echo/Hello calls, one after another, on one
// connection.
func GRPCHello(ctx context.Context, o GRPCOptions) GRPCResult {
	start := time.Now()
	t := newGRPCTally(o.Addr)
	cc, err := o.dial()
	if err != nil {
		t.end(err)
		return t.result(start)
	}
	defer cc.Close()
	octx := o.outgoing(ctx)
	for i := 1; i <= o.Messages && ctx.Err() == nil; i++ {
		cctx, cancel := context.WithTimeout(octx, o.Timeout)
		var md metadata.MD
		sent := time.Now()
		t.res.Sent++
		out, err := wire.Hello(cctx, cc, "hello "+strconv.Itoa(i), grpc.Header(&md))
		cancel()
		if err == nil {
			t.lat = append(t.lat, time.Since(sent))
			t.header(md)
			t.reply(out)
		}
		t.end(err)
	}
	return t.result(start)
}
