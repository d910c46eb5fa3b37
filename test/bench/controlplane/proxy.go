package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	"github.com/trellis-mesh/trellis/controlplane/xds/xdstest"
)

// The four types a sidecar subscribes to, in the order Envoy asks for them over ADS.
var adsTypes = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}

// proxy is one simulated sidecar: its own TLS connection with its own certificate and one
// state-of-the-world ADS stream. It subscribes as Envoy and the Trellis sidecar do (CDS
// and LDS wildcard, then EDS and RDS for the names those name), ACKs every response at
// once, and keeps only versions and names, not the resources (so that 2000 of them fit in
// one process). It does not decode routes or endpoints: the time it reports is the control
// plane's, up to the ACK leaving the proxy.
type proxy struct {
	idx  int
	node *core.Node
	conn *grpc.ClientConn
	ads  discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient

	sendMu sync.Mutex
	mu     sync.Mutex
	names  map[string][]string
	acked  map[string]string // type URL → version last ACKed
	nonces map[string]string // type URL → nonce of the latest response
	sizes  map[string]int    // type URL → encoded size of the first response (proxy 0 only)
	last   map[string]int    // type URL → encoded size of the latest response (proxy 0 only)
	ready  chan struct{}     // closed once every type has been ACKed once
	isDone bool
	err    error
	ended  chan struct{}

	round atomic.Pointer[round]
}

// round is one measured update: each proxy reports when it ACKs an RDS version other than
// the one it had when the round began.
type round struct {
	baseline  []string    // per proxy
	ackedAt   []time.Time // per proxy; zero until it ACKed the new version
	reported  []atomic.Bool
	remaining atomic.Int64
	done      chan struct{}

	// Content check on a sample of proxies: the split's route carries the new weights.
	verifyEvery int
	routeName   string
	want        map[string]uint32
	verified    atomic.Int64
	mismatched  atomic.Int64
}

func newRound(n, verifyEvery int, routeName string, want map[string]uint32) *round {
	r := &round{
		baseline: make([]string, n), ackedAt: make([]time.Time, n), reported: make([]atomic.Bool, n),
		done: make(chan struct{}), verifyEvery: verifyEvery, routeName: routeName, want: want,
	}
	r.remaining.Store(int64(n))
	return r
}

type dialer struct {
	addr       string
	serverName string
	roots      *x509.CertPool
}

// connect opens the proxy's connection and stream and subscribes.
func (d dialer) connect(ctx context.Context, idx int, node string, cert tls.Certificate) (*proxy, error) {
	creds := credentials.NewTLS(&tls.Config{
		RootCAs: d.roots, ServerName: d.serverName, MinVersion: tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
	})
	// The sidecar's dial options (sidecar/agent), plus room for a mesh-sized response.
	conn, err := grpc.NewClient(d.addr, grpc.WithTransportCredentials(creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		return nil, err
	}
	ads, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("open ADS stream for %s: %w", node, err)
	}
	p := &proxy{
		idx: idx, node: &core.Node{Id: node}, conn: conn, ads: ads,
		names: map[string][]string{}, acked: map[string]string{}, nonces: map[string]string{}, sizes: map[string]int{}, last: map[string]int{},
		ready: make(chan struct{}), ended: make(chan struct{}),
	}
	go p.recv()
	for _, t := range []string{resourcev3.ClusterType, resourcev3.ListenerType} {
		if err := p.send(t, nil, "", ""); err != nil {
			p.close()
			return nil, fmt.Errorf("subscribe %s for %s: %w", t, node, err)
		}
	}
	return p, nil
}

func (p *proxy) send(typeURL string, names []string, version, nonce string) error {
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	return p.ads.Send(&discovery.DiscoveryRequest{
		Node: p.node, TypeUrl: typeURL, ResourceNames: names, VersionInfo: version, ResponseNonce: nonce,
	})
}

func (p *proxy) recv() {
	defer close(p.ended)
	for {
		resp, err := p.ads.Recv()
		if err != nil {
			p.mu.Lock()
			p.err = err
			p.mu.Unlock()
			return
		}
		t := resp.GetTypeUrl()
		p.mu.Lock()
		names := p.names[t]
		p.mu.Unlock()
		if err := p.send(t, names, resp.GetVersionInfo(), resp.GetNonce()); err != nil {
			continue // Recv reports the stream's end
		}
		at := time.Now()
		p.mu.Lock()
		p.acked[t] = resp.GetVersionInfo()
		p.nonces[t] = resp.GetNonce()
		if p.idx == 0 {
			if _, seen := p.sizes[t]; !seen {
				p.sizes[t] = proto.Size(resp)
			}
			p.last[t] = proto.Size(resp)
		}
		if !p.isDone && len(p.acked) == len(adsTypes) {
			p.isDone = true
			close(p.ready)
		}
		p.mu.Unlock()
		switch t {
		case resourcev3.ClusterType:
			p.follow(resourcev3.EndpointType, xdstest.EndpointNames(resp))
		case resourcev3.ListenerType:
			p.follow(resourcev3.RouteType, xdstest.RouteNames(resp))
		case resourcev3.RouteType:
			p.report(resp, at)
		}
	}
}

// follow subscribes to names when they differ from what the proxy asked for before.
func (p *proxy) follow(typeURL string, names []string) {
	p.mu.Lock()
	old, asked := p.names[typeURL]
	if asked && slices.Equal(old, names) {
		p.mu.Unlock()
		return
	}
	p.names[typeURL] = names
	version, nonce := p.acked[typeURL], p.nonces[typeURL]
	p.mu.Unlock()
	_ = p.send(typeURL, names, version, nonce)
}

func (p *proxy) report(resp *discovery.DiscoveryResponse, at time.Time) {
	r := p.round.Load()
	if r == nil || resp.GetVersionInfo() == r.baseline[p.idx] || !r.reported[p.idx].CompareAndSwap(false, true) {
		return
	}
	r.ackedAt[p.idx] = at
	if r.verifyEvery > 0 && p.idx%r.verifyEvery == 0 {
		if routeWeights(resp, r.routeName, r.want) {
			r.verified.Add(1)
		} else {
			r.mismatched.Add(1)
		}
	}
	if r.remaining.Add(-1) == 0 {
		close(r.done)
	}
}

// routeWeights says whether the route configuration name in resp splits with exactly want.
func routeWeights(resp *discovery.DiscoveryResponse, name string, want map[string]uint32) bool {
	for _, a := range resp.GetResources() {
		if !bytes.Contains(a.GetValue(), []byte(name)) {
			continue
		}
		rc := &routev3.RouteConfiguration{}
		if a.UnmarshalTo(rc) != nil || rc.GetName() != name {
			continue
		}
		for _, vh := range rc.GetVirtualHosts() {
			for _, rt := range vh.GetRoutes() {
				wcs := rt.GetRoute().GetWeightedClusters().GetClusters()
				if len(wcs) == 0 {
					continue
				}
				got := map[string]uint32{}
				for _, wc := range wcs {
					got[wc.GetName()] = wc.GetWeight().GetValue()
				}
				if len(got) != len(want) {
					return false
				}
				for k, v := range want {
					if got[k] != v {
						return false
					}
				}
				return true
			}
		}
		return false
	}
	return false
}

// responseSizes are the encoded sizes of the first and of the latest response of each type
// (proxy 0 only).
func (p *proxy) responseSizes() (first, last map[string]int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.sizes), maps.Clone(p.last)
}

// rdsVersion is the route version the proxy last ACKed.
func (p *proxy) rdsVersion() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.acked[resourcev3.RouteType]
}

// waitReady waits until the proxy has ACKed all four types, or its stream ended.
func (p *proxy) waitReady(ctx context.Context) error {
	select {
	case <-p.ready:
		return nil
	case <-p.ended:
		p.mu.Lock()
		defer p.mu.Unlock()
		return fmt.Errorf("node %s: stream ended before the initial configuration: %w", p.node.Id, p.err)
	case <-ctx.Done():
		p.mu.Lock()
		defer p.mu.Unlock()
		return fmt.Errorf("node %s: no initial configuration (ACKed %v): %w", p.node.Id, p.acked, ctx.Err())
	}
}

// streamErr is the error the stream ended with, nil while it is open.
func (p *proxy) streamErr() error {
	select {
	case <-p.ended:
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.err == nil {
			return errors.New("stream ended")
		}
		return p.err
	default:
		return nil
	}
}

func (p *proxy) close() {
	_ = p.conn.Close()
}
