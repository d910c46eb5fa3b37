// Package xdstest is a minimal state-of-the-world ADS client for tests and benchmarks: it
// subscribes to listeners and clusters, then, as Envoy does, to every route configuration
// the listeners name and every endpoint assignment the clusters need; it ACKs every
// response and hands the client's view to the caller. Route and endpoint responses list
// only what changed (the protocol allows it for those types), so the view of those types
// is every response so far merged, limited to the names asked for.
package xdstest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Client is one ADS stream.
type Client struct {
	stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node   *core.Node
	cancel context.CancelFunc

	sendMu sync.Mutex
	mu     sync.Mutex
	latest map[string]*discovery.DiscoveryResponse
	names  map[string][]string
	wake   chan struct{}
	err    error
}

// Dial opens an ADS stream on conn for node.
func Dial(ctx context.Context, conn grpc.ClientConnInterface, node string) (*Client, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("open ADS stream: %w", err)
	}
	c := &Client{
		stream: stream, node: &core.Node{Id: node}, cancel: cancel,
		latest: map[string]*discovery.DiscoveryResponse{}, names: map[string][]string{},
		wake: make(chan struct{}),
	}
	go c.recv()
	return c, nil
}

// Close ends the stream.
func (c *Client) Close() { c.cancel() }

// Subscribe asks for typeURL (names empty: all of them).
func (c *Client) Subscribe(typeURL string, names ...string) error {
	c.mu.Lock()
	c.names[typeURL] = names
	version, nonce := "", ""
	if r := c.latest[typeURL]; r != nil {
		version, nonce = r.VersionInfo, r.Nonce
	}
	c.mu.Unlock()
	return c.send(&discovery.DiscoveryRequest{TypeUrl: typeURL, ResourceNames: names, VersionInfo: version, ResponseNonce: nonce})
}

func (c *Client) send(req *discovery.DiscoveryRequest) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	req.Node = c.node // every request carries the node; the server pins the first
	return c.stream.Send(req)
}

func (c *Client) recv() {
	for {
		resp, err := c.stream.Recv()
		c.mu.Lock()
		if err != nil {
			c.err = err
			close(c.wake)
			c.mu.Unlock()
			return
		}
		names := c.names[resp.TypeUrl]
		c.latest[resp.TypeUrl] = merged(c.latest[resp.TypeUrl], resp, names)
		close(c.wake)
		c.wake = make(chan struct{})
		c.mu.Unlock()
		// ACK, then follow the references the response makes.
		_ = c.send(&discovery.DiscoveryRequest{TypeUrl: resp.TypeUrl, ResourceNames: names, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce})
		switch resp.TypeUrl {
		case resourcev3.ListenerType:
			c.follow(resourcev3.RouteType, RouteNames(resp))
		case resourcev3.ClusterType:
			c.follow(resourcev3.EndpointType, EndpointNames(resp))
		}
	}
}

// merged is resp with, for route and endpoint responses, the resources of prev it does not
// list and that are still asked for.
func merged(prev, resp *discovery.DiscoveryResponse, names []string) *discovery.DiscoveryResponse {
	if prev == nil || (resp.TypeUrl != resourcev3.RouteType && resp.TypeUrl != resourcev3.EndpointType) {
		return resp
	}
	out := proto.Clone(resp).(*discovery.DiscoveryResponse)
	listed := map[string]bool{}
	for _, a := range resp.Resources {
		listed[resourceName(a)] = true
	}
	for _, a := range prev.Resources {
		n := resourceName(a)
		if !listed[n] && (len(names) == 0 || slices.Contains(names, n)) {
			out.Resources = append(out.Resources, a)
		}
	}
	return out
}

// resourceName is the name of a route configuration or endpoint assignment.
func resourceName(a *anypb.Any) string {
	rc := &routev3.RouteConfiguration{}
	if a.UnmarshalTo(rc) == nil {
		return rc.GetName()
	}
	cla := &endpointv3.ClusterLoadAssignment{}
	if a.UnmarshalTo(cla) == nil {
		return cla.GetClusterName()
	}
	return ""
}

// follow subscribes to names of typeURL when they differ from the current subscription.
func (c *Client) follow(typeURL string, names []string) {
	c.mu.Lock()
	old, subscribed := c.names[typeURL]
	c.mu.Unlock()
	if subscribed && slices.Equal(old, names) {
		return
	}
	_ = c.Subscribe(typeURL, names...)
}

// RouteNames lists, sorted and once each, the route configurations the listeners of a
// listener response name (the RDS names an ADS client subscribes to next).
func RouteNames(resp *discovery.DiscoveryResponse) []string {
	var out []string
	for _, a := range resp.Resources {
		l := &listenerv3.Listener{}
		if a.UnmarshalTo(l) != nil {
			continue
		}
		chains := append([]*listenerv3.FilterChain{l.DefaultFilterChain}, l.FilterChains...)
		for _, fc := range chains {
			for _, f := range fc.GetFilters() {
				hcm := &hcmv3.HttpConnectionManager{}
				if f.GetTypedConfig().UnmarshalTo(hcm) == nil && hcm.GetRds() != nil {
					out = append(out, hcm.GetRds().RouteConfigName)
				}
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// EndpointNames lists, sorted and once each, the endpoint assignments the EDS clusters of a
// cluster response need (the EDS names an ADS client subscribes to next).
func EndpointNames(resp *discovery.DiscoveryResponse) []string {
	var out []string
	for _, a := range resp.Resources {
		cl := &clusterv3.Cluster{}
		if a.UnmarshalTo(cl) != nil || cl.GetType() != clusterv3.Cluster_EDS {
			continue
		}
		name := cl.GetEdsClusterConfig().GetServiceName()
		if name == "" {
			name = cl.Name
		}
		out = append(out, name)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// SendRaw sends a request as is, node included (to test what the server refuses).
func (c *Client) SendRaw(req *discovery.DiscoveryRequest) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	return c.stream.Send(req)
}

// Wait returns the latest response of typeURL once ok accepts it, or the stream's error, or
// an error after timeout.
func (c *Client) Wait(typeURL string, timeout time.Duration, ok func(*discovery.DiscoveryResponse) bool) (*discovery.DiscoveryResponse, error) {
	deadline := time.After(timeout)
	for {
		c.mu.Lock()
		resp, err, wake := c.latest[typeURL], c.err, c.wake
		c.mu.Unlock()
		if resp != nil && ok(resp) {
			return resp, nil
		}
		if err != nil {
			return nil, err
		}
		select {
		case <-wake:
		case <-deadline:
			version := "none"
			if resp != nil {
				version = resp.VersionInfo
			}
			return nil, fmt.Errorf("no acceptable %s response within %s (latest version %s)", typeURL, timeout, version)
		}
	}
}

// Err is the stream's error, once it has ended.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
