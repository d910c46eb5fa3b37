package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/trellis-mesh/trellis/examples/apps/demo/server"
	"github.com/trellis-mesh/trellis/examples/apps/demo/wire"
)

// GetOptions are the flags of `trellis-demo get`.
type GetOptions struct {
	URL         string
	N           int           // requests in all
	Concurrency int           // requests in flight at once
	H2C         bool          // HTTP/2 without TLS (prior knowledge) instead of HTTP/1.1
	Headers     []string      // name=value, repeatable; "host=..." sets the Host
	Timeout     time.Duration // per request
}

// DefaultGetOptions are the flag defaults.
func DefaultGetOptions() GetOptions {
	return GetOptions{N: 2000, Concurrency: 8, Timeout: 5 * time.Second}
}

// Validate says what is wrong with the options, for a usage error.
func (o GetOptions) Validate() error {
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("--url %q: want an absolute http:// URL, e.g. http://backend:8080/", o.URL)
	}
	if o.N < 1 {
		return fmt.Errorf("--n %d: want at least 1 request", o.N)
	}
	if o.Concurrency < 1 {
		return fmt.Errorf("--concurrency %d: want at least 1", o.Concurrency)
	}
	if o.Timeout <= 0 {
		return fmt.Errorf("--timeout %s: want a positive duration", o.Timeout)
	}
	_, err = ParseHeaders(o.Headers)
	return err
}

// GetResult is what `trellis-demo get` prints.
type GetResult struct {
	URL       string `json:"url"`
	Requests  int    `json:"requests"`  // attempted
	Succeeded int    `json:"succeeded"` // answered 2xx
	Failed    int    `json:"failed"`    // answered otherwise, or no answer at all
	// Statuses counts answers by status code ("200": 1800). Requests with no answer are
	// in ErrorCount instead.
	Statuses map[string]int `json:"statuses"`
	// Versions counts answers by x-demo-version (or, without it, the JSON body's version).
	Versions map[string]int `json:"versions"`
	// BackendVersions counts the frontend's backend.version, when the body has one.
	BackendVersions map[string]int `json:"backendVersions"`
	// Protocols counts the protocol of the answers as this client spoke it (HTTP/1.1,
	// HTTP/2.0). ServerProtocols counts what the server says it received (the JSON body's
	// protocol): behind sidecars, that is what the server's sidecar spoke to it.
	Protocols       map[string]int `json:"protocols"`
	ServerProtocols map[string]int `json:"serverProtocols"`
	// PeerIdentities are the distinct non-empty peerIdentity values in the JSON bodies: the
	// caller's SPIFFE ID as the server's sidecar verified it.
	PeerIdentities []string `json:"peerIdentities"`
	// UpstreamIdentities are the distinct x-trellis-upstream-identity response headers: the
	// server's SPIFFE ID as this pod's sidecar verified it.
	UpstreamIdentities []string `json:"upstreamIdentities"`
	// The same two seen one hop further, in a frontend's body: backend.peerIdentity and
	// backendUpstreamIdentity.
	BackendPeerIdentities     []string `json:"backendPeerIdentities"`
	BackendUpstreamIdentities []string `json:"backendUpstreamIdentities"`
	// TrellisErrors counts the x-trellis-error response headers (answers the proxy made).
	TrellisErrors map[string]int `json:"trellisErrors"`
	// ErrorCount counts requests that got no answer; Errors holds the first few distinct.
	ErrorCount int      `json:"errorCount"`
	Errors     []string `json:"errors"`
	Bytes      int64    `json:"bytes"` // response body bytes read, in all
	LatencyMs  Latency  `json:"latencyMs"`
	DurationMs float64  `json:"durationMs"`
}

type getTally struct {
	mu                                sync.Mutex
	res                               GetResult
	peers, ups, backendPeers, backUps set
	errs                              errorList
	lat                               []time.Duration
}

// Get makes o.N requests to o.URL, o.Concurrency at a time, and counts the answers. It
// stops early, with what it has, when ctx ends. Options must be valid (Validate).
func Get(ctx context.Context, o GetOptions) GetResult {
	headers, _ := ParseHeaders(o.Headers)
	tr := server.NewTransport(o.H2C, o.Concurrency)
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: o.Timeout}
	t := &getTally{
		res: GetResult{URL: o.URL, Statuses: map[string]int{}, Versions: map[string]int{}, BackendVersions: map[string]int{},
			Protocols: map[string]int{}, ServerProtocols: map[string]int{}, TrellisErrors: map[string]int{}},
		peers: set{}, ups: set{}, backendPeers: set{}, backUps: set{},
	}
	start := time.Now()
	work := make(chan struct{})
	var wg sync.WaitGroup
	for range min(o.Concurrency, o.N) {
		wg.Go(func() {
			for range work {
				t.one(ctx, hc, o.URL, headers)
			}
		})
	}
feed:
	for range o.N {
		select {
		case work <- struct{}{}:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()

	r := t.res
	r.DurationMs = ms(time.Since(start))
	r.PeerIdentities, r.UpstreamIdentities = t.peers.list(), t.ups.list()
	r.BackendPeerIdentities, r.BackendUpstreamIdentities = t.backendPeers.list(), t.backUps.list()
	r.Errors = append([]string{}, t.errs...)
	r.LatencyMs = latencyOf(t.lat)
	return r
}

// maxJSON is the largest body Get reads as JSON; bigger bodies are only counted.
const maxJSON = 1 << 20

func (t *getTally) one(ctx context.Context, hc *http.Client, u string, headers [][2]string) {
	start := time.Now()
	resp, body, n, err := fetch(ctx, hc, u, headers)
	elapsed := time.Since(start)

	t.mu.Lock()
	defer t.mu.Unlock()
	t.res.Requests++
	t.res.Bytes += n
	if err != nil {
		t.res.Failed++
		t.res.ErrorCount++
		t.errs.add(err.Error())
		return
	}
	t.lat = append(t.lat, elapsed)
	status, hdr := resp.StatusCode, resp.Header
	t.res.Statuses[strconv.Itoa(status)]++
	t.res.Protocols[resp.Proto]++
	if status >= 200 && status <= 299 {
		t.res.Succeeded++
	} else {
		t.res.Failed++
	}
	if e := hdr.Get(wire.TrellisErrorHeader); e != "" {
		t.res.TrellisErrors[e]++
	}
	t.ups.add(hdr.Get(wire.UpstreamIdentityHeader))
	var rep wire.Reply
	isReply := body != nil && json.Unmarshal(body, &rep) == nil && rep.Service != ""
	version := hdr.Get(wire.VersionHeader)
	if version == "" && isReply {
		version = rep.Version
	}
	if version != "" {
		t.res.Versions[version]++
	}
	if !isReply {
		return
	}
	if rep.Protocol != "" {
		t.res.ServerProtocols[rep.Protocol]++
	}
	t.peers.add(rep.PeerIdentity)
	t.backUps.add(rep.BackendUpstreamIdentity)
	if rep.Backend != nil {
		if rep.Backend.Version != "" {
			t.res.BackendVersions[rep.Backend.Version]++
		}
		t.backendPeers.add(rep.Backend.PeerIdentity)
	}
}

// fetch makes one GET and reads the whole answer. resp's body is closed; body is the body
// when it looks like JSON and is small enough, else nil; n is the number of body bytes read.
func fetch(ctx context.Context, hc *http.Client, u string, headers [][2]string) (resp *http.Response, body []byte, n int64, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, nil, 0, err
	}
	for _, h := range headers {
		if strings.EqualFold(h[0], "host") {
			req.Host = h[1]
			continue
		}
		req.Header.Add(h[0], h[1])
	}
	resp, err = hc.Do(req)
	if err != nil {
		return nil, nil, 0, err
	}
	defer resp.Body.Close()
	if strings.Contains(resp.Header.Get("Content-Type"), "json") {
		var buf bytes.Buffer
		n, err = io.Copy(&buf, io.LimitReader(resp.Body, maxJSON+1))
		if err == nil && n <= maxJSON {
			body = buf.Bytes()
		}
	}
	if err == nil {
		var rest int64
		rest, err = io.Copy(io.Discard, resp.Body)
		n += rest
	}
	if err != nil {
		return nil, nil, n, fmt.Errorf("read the body of a %d answer: %w", resp.StatusCode, err)
	}
	return resp, body, n, nil
}
