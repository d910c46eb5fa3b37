package xds

import (
	"context"
	"net"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

// identityOf is the SPIFFE ID of a pod's proxy in st.
func identityOf(t testing.TB, st *meshstate.State, pod meshstate.Key) spiffeid.ID {
	t.Helper()
	p := st.Pods[pod]
	if p == nil {
		t.Fatalf("no pod %s", pod)
	}
	id, err := spiffeid.FromSegments(spiffeid.RequireTrustDomainFromString(st.Mesh.TrustDomain), "ns", pod.Namespace, "sa", p.ServiceAccount)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// serve runs s on a loopback gRPC server whose every peer is id, and returns a connection.
func serve(t *testing.T, s *Server, id spiffeid.ID) *grpc.ClientConn {
	t.Helper()
	s.opts.PeerIdentity = func(context.Context) (spiffeid.ID, error) { return id, nil }
	g := grpc.NewServer(s.ServerOptions()...)
	s.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// rawStream is an ADS stream driven by hand: the test sends each request and reads each
// response, so that it sees exactly what the server sends.
type rawStream struct {
	t     *testing.T
	node  *core.Node
	ads   discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	resps chan *discovery.DiscoveryResponse
}

func openStream(t *testing.T, conn *grpc.ClientConn, node string) *rawStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ads, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := &rawStream{t: t, node: &core.Node{Id: node}, ads: ads, resps: make(chan *discovery.DiscoveryResponse, 64)}
	go func() {
		defer close(r.resps)
		for {
			resp, err := ads.Recv()
			if err != nil {
				return
			}
			r.resps <- resp
		}
	}()
	return r
}

func (r *rawStream) send(typeURL string, names []string, version, nonce string) {
	r.t.Helper()
	if err := r.ads.Send(&discovery.DiscoveryRequest{Node: r.node, TypeUrl: typeURL, ResourceNames: names, VersionInfo: version, ResponseNonce: nonce}); err != nil {
		r.t.Fatalf("send %s request: %v", typeURL, err)
	}
}

// ack acknowledges resp, keeping names as the subscription.
func (r *rawStream) ack(resp *discovery.DiscoveryResponse, names []string) {
	r.t.Helper()
	r.send(resp.GetTypeUrl(), names, resp.GetVersionInfo(), resp.GetNonce())
}

// next is the next response; the test fails if none comes within 10s.
func (r *rawStream) next() *discovery.DiscoveryResponse {
	r.t.Helper()
	select {
	case resp, ok := <-r.resps:
		if !ok {
			r.t.Fatal("the stream ended")
		}
		return resp
	case <-time.After(10 * time.Second):
		r.t.Fatal("no response within 10s")
	}
	return nil
}

// expect is the next response, which must be of typeURL.
func (r *rawStream) expect(typeURL string) *discovery.DiscoveryResponse {
	r.t.Helper()
	resp := r.next()
	if resp.GetTypeUrl() != typeURL {
		r.t.Fatalf("got a %s response (%d resources), want %s", shortType(resp.GetTypeUrl()), len(resp.GetResources()), shortType(typeURL))
	}
	return resp
}
