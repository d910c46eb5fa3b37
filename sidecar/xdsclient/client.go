package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

// defaultReferenceGrace is how long an update may wait for the resources it names.
const defaultReferenceGrace = 5 * time.Second

// Options configure a Client.
type Options struct {
	// Node is the proxy's node ID, "<namespace>/<pod>": the control plane serves each node
	// its own configuration (and checks that the stream's certificate may have it).
	Node string
	// Dial connects to the control plane. It is called for every stream attempt, and the
	// connection is closed when the stream ends, so that reconnection follows Backoff.
	Dial func(ctx context.Context) (*grpc.ClientConn, error)
	// OnConfig receives each new configuration, never nil, on Run's goroutine: it must not
	// block for long. A configuration is delivered once it is complete (every route and
	// endpoint assignment it names has arrived) and valid.
	OnConfig func(*config.Config)
	// Backoff spaces reconnections (250ms doubling to 15s, with jitter, by default). It also
	// spaces the NACKs of an update the control plane keeps sending unchanged.
	Backoff Backoff
	// ReferenceGrace bounds how long an update waits for the resources it names (a route
	// configuration, endpoints, a cluster) before it is NACKed; 5s by default. Within one
	// control-plane update they arrive in milliseconds.
	ReferenceGrace time.Duration
	Logger         *slog.Logger
}

// Client keeps the sidecar's configuration in step with the control plane over one ADS
// stream, reconnecting as needed. The last good configuration stays in effect while the
// control plane is unreachable or sends something invalid.
type Client struct {
	opts    Options
	log     *slog.Logger
	ready   atomic.Bool
	running atomic.Bool
	status  *statusBox

	// Owned by Run's goroutine. acc is the last accepted (ACKed) resources of each type,
	// always complete and valid together; published identifies the delivered Config.
	acc       resourceSet
	accVer    map[string]string
	have      map[string]bool              // a response of the type was accepted
	hashes    map[string]map[string]uint64 // of each accepted resource's bytes, by type and name
	published map[string]uint64
}

// New returns a client; Run starts it.
func New(opts Options) *Client {
	opts.Backoff = opts.Backoff.withDefaults()
	if opts.ReferenceGrace <= 0 {
		opts.ReferenceGrace = defaultReferenceGrace
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Client{
		opts:   opts,
		log:    opts.Logger,
		status: newStatusBox(opts.Node),
		acc:    resourceSet{listeners: map[string]*listenerInfo{}, routes: map[string]*config.Route{}, clusters: map[string]*clusterInfo{}, endpoints: map[string][]endpointInfo{}},
		accVer: map[string]string{},
		have:   map[string]bool{},
		hashes: map[string]map[string]uint64{},
	}
}

// Ready reports whether a first configuration was delivered. It stays true afterwards.
func (c *Client) Ready() bool { return c.ready.Load() }

// Status is the client's state for the admin page.
func (c *Client) Status() Status {
	s := c.status.get()
	s.Ready = c.Ready()
	return s
}

// Run holds the ADS stream until ctx ends, reconnecting after errors with backoff. It
// returns nil when ctx ends, and an error only for unusable Options.
func (c *Client) Run(ctx context.Context) error {
	if c.opts.Node == "" || !strings.Contains(c.opts.Node, "/") {
		return fmt.Errorf("xDS node %q must be <namespace>/<pod>", c.opts.Node)
	}
	if c.opts.Dial == nil {
		return errors.New("xDS client needs a Dial function")
	}
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("xDS client is already running")
	}
	defer c.running.Store(false)
	attempt := 0
	for {
		progressed, err := c.runStream(ctx)
		c.status.update(func(s *Status) {
			s.Connected, s.Waiting = false, nil
			if err != nil {
				s.StreamError = err.Error()
			}
			for i := range s.Types {
				s.Types[i].Pending, s.Types[i].Nonce = "", "" // they belonged to the stream
			}
		})
		if ctx.Err() != nil {
			return nil
		}
		if progressed {
			attempt = 0
		}
		wait := c.opts.Backoff.delay(attempt)
		attempt++
		c.log.Warn("xDS stream to the control plane ended; the last good configuration stays in effect", "error", err, "retryIn", wait.Round(time.Millisecond))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

type recvResult struct {
	resp *discovery.DiscoveryResponse
	err  error
}

// runStream opens one stream and serves it until it fails or ctx ends. progressed reports
// whether the control plane answered at all (which resets the backoff).
func (c *Client) runStream(ctx context.Context) (progressed bool, err error) {
	conn, err := c.opts.Dial(ctx)
	if err != nil {
		return false, fmt.Errorf("dial the control plane: %w", err)
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ads, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
	if err != nil {
		return false, fmt.Errorf("open the ADS stream: %w", err)
	}
	c.status.update(func(s *Status) { s.Streams++ })

	recv := make(chan recvResult)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			resp, err := ads.Recv()
			select {
			case recv <- recvResult{resp, err}:
			case <-sctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	defer wg.Wait()
	defer cancel()

	st := newStream(c, ads)
	// Clusters, then listeners, both wildcard; routes and endpoints follow what they name.
	for _, t := range []string{resourcev3.ClusterType, resourcev3.ListenerType} {
		if err := st.request(t, "", "", nil); err != nil {
			return false, fmt.Errorf("send the first %s request: %w", kindOf(t), err)
		}
	}
	c.status.update(func(s *Status) { s.Connected = true })

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if next, ok := st.nextDeadline(); ok {
			timer.Reset(max(time.Until(next), 0))
		} else {
			timer.Reset(time.Hour)
		}
		var r recvResult
		got := false
		select {
		case <-ctx.Done():
			return progressed, ctx.Err()
		case r = <-recv:
			got = true
		case <-timer.C:
			// A response already waiting may be what a held one waits for: take it before
			// deciding that something never came.
			select {
			case r = <-recv:
				got = true
			default:
			}
		}
		switch {
		case got && errors.Is(r.err, io.EOF):
			return progressed, errors.New("the control plane closed the stream")
		case got && r.err != nil:
			return progressed, r.err
		case got:
			progressed = true
			err = st.onResponse(r.resp, time.Now())
		default:
			err = st.onTimer(time.Now())
		}
		if err != nil {
			return progressed, fmt.Errorf("send to the control plane: %w", err)
		}
	}
}

// publish delivers a Config built from the accepted resources, unless they are those of
// the Config in effect (a new version with the same content, as after a reconnection, or
// when a control-plane update NACKed for one type resends the others unchanged).
func (c *Client) publish(cfg *config.Config) {
	if !c.have[resourcev3.ListenerType] || !c.have[resourcev3.ClusterType] {
		// Routes or endpoints alone are no configuration: the first one delivered has
		// the control plane's listeners and clusters.
		return
	}
	sig := map[string]uint64{}
	for t, hs := range c.hashes {
		for _, h := range hs {
			sig[t] += h // a sum: the server may list resources in any order
		}
	}
	if maps.Equal(sig, c.published) {
		return
	}
	c.published = sig
	var v []string
	for _, t := range typeOrder {
		v = append(v, shortType(t)+"="+c.accVer[t])
	}
	cfg.Version = strings.Join(v, " ")
	c.ready.Store(true)
	c.status.update(func(s *Status) { s.ConfigVersion, s.ConfigTime = cfg.Version, time.Now() })
	c.log.Debug("new configuration from the control plane", "version", cfg.Version,
		"listeners", len(cfg.Outbound), "clusters", len(cfg.Clusters), "inbound", cfg.Inbound != nil)
	if c.opts.OnConfig != nil {
		c.opts.OnConfig(cfg)
	}
}

func shortType(typeURL string) string {
	switch typeURL {
	case resourcev3.ListenerType:
		return "lds"
	case resourcev3.RouteType:
		return "rds"
	case resourcev3.ClusterType:
		return "cds"
	case resourcev3.EndpointType:
		return "eds"
	}
	return typeURL
}

// names lists the resources of one type, sorted.
func (s *resourceSet) names(typeURL string) []string {
	switch typeURL {
	case resourcev3.ListenerType:
		return slices.Sorted(maps.Keys(s.listeners))
	case resourcev3.RouteType:
		return slices.Sorted(maps.Keys(s.routes))
	case resourcev3.ClusterType:
		return slices.Sorted(maps.Keys(s.clusters))
	case resourcev3.EndpointType:
		return slices.Sorted(maps.Keys(s.endpoints))
	}
	return nil
}

// node is sent on every request: the server pins a stream to the node of its first
// request and refuses another.
func (c *Client) node() *corev3.Node {
	return &corev3.Node{Id: c.opts.Node, UserAgentName: "trellis-proxy"}
}
