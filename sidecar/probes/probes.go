// Package probes is the proxy's side of probe rewriting (docs/injection.md, "Probe
// rewriting: the contract with the proxy").
//
// The injector points every HTTP, TCP and gRPC liveness, readiness and startup probe of
// the application at GET :15020/app-health/<container>/<livez|readyz|startupz>, and hands
// the original probes to the proxy in the environment variable TRELLIS_APP_PROBES (JSON).
// Parse reads that variable; Handler serves the rewritten paths by running the original
// probe against the application on loopback (or the probe's host when it has one) and
// answering as the kubelet would have judged the result.
//
// The JSON types are the contract's, in api/appprobes, which the injector writes with.
//
// Where this differs from the kubelet, on purpose:
//
//   - Redirects are never followed. The kubelet follows redirects to the same host (up to
//     10) and stops at the first redirect to another host, which then counts as a success
//     (with a "Probe terminated redirects" warning event). Here every 3xx is such a success:
//     the application's 3xx status is answered, without its Location header (the kubelet
//     would otherwise follow it to the proxy's status port). So a same-host redirect to a
//     failing page passes here where the kubelet would have failed it.
//   - The request's User-Agent is "kube-probe/trellis" (the kubelet sends
//     "kube-probe/<major>.<minor>") unless the probe sets its own.
//   - Each probe is bounded a little under its timeoutSeconds, so that the proxy answers
//     (with the reason) before the kubelet gives up on the proxy.
//   - Concurrent requests for the same path share one run of the probe, so that clients
//     of the status port (which is reachable without mTLS) cannot multiply the connections
//     the proxy opens to the application.
package probes

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/api/appprobes"
)

// The contract's names and types (api/appprobes), re-exported for the proxy's code.
const (
	EnvVar                = appprobes.EnvVar
	PathPrefix            = appprobes.PathPrefix
	Liveness              = appprobes.Liveness
	Readiness             = appprobes.Readiness
	Startup               = appprobes.Startup
	SchemeHTTP            = appprobes.SchemeHTTP
	SchemeHTTPS           = appprobes.SchemeHTTPS
	DefaultTimeoutSeconds = appprobes.DefaultTimeoutSeconds
)

// The probe types.
type (
	Probe           = appprobes.Probe
	HTTPGetAction   = appprobes.HTTPGetAction
	HTTPHeader      = appprobes.HTTPHeader
	TCPSocketAction = appprobes.TCPSocketAction
	GRPCAction      = appprobes.GRPCAction
)

// Path is the status-port path of a container's rewritten probe of one kind.
func Path(container, kind string) string { return appprobes.Path(container, kind) }

// maxInput bounds TRELLIS_APP_PROBES. The annotation it comes from is at most 256 KiB (all
// of a pod's annotations together); anything much larger was not written by the injector.
const maxInput = 1 << 20

// Probes is the parsed TRELLIS_APP_PROBES: the probe to run for each rewritten path.
// It is immutable; the zero value and nil hold no probes.
type Probes struct {
	byPath map[string]*entry
}

// entry is a checked probe, with what running it needs worked out once.
type entry struct {
	probe   Probe         // as given, with the defaults filled in
	timeout time.Duration // the probe's budget: a little under TimeoutSeconds
	addr    string        // host:port to dial
	url     string        // HTTP only
	header  http.Header   // HTTP only
}

// Parse reads the value of TRELLIS_APP_PROBES. An empty value (the variable is absent
// when the injector rewrote nothing) is no probes. Every problem is reported, each with
// the path of the probe it is about. Unknown JSON fields are ignored, so that a newer
// injector's additions do not break an older proxy; a probe with none of the handlers
// this proxy knows is an error.
func Parse(s string) (*Probes, error) {
	if strings.TrimSpace(s) == "" {
		return &Probes{byPath: map[string]*entry{}}, nil
	}
	if len(s) > maxInput {
		return nil, fmt.Errorf("%s is %d bytes, more than the %d the injector can write", EnvVar, len(s), maxInput)
	}
	var raw map[string]*Probe
	if err := json.Unmarshal([]byte(s), &raw); err != nil {
		return nil, fmt.Errorf("%s is not the JSON the injector writes (an object of probes by path): %w", EnvVar, err)
	}
	if raw == nil {
		return nil, fmt.Errorf("%s is null, not an object of probes by path", EnvVar)
	}
	paths := make([]string, 0, len(raw))
	for path := range raw {
		paths = append(paths, path)
	}
	sort.Strings(paths)
	out := &Probes{byPath: make(map[string]*entry, len(raw))}
	var errs []error
	for _, path := range paths {
		e, err := check(path, raw[path])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: probe %q: %w", EnvVar, path, err))
			continue
		}
		out.byPath[path] = e
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// Len is the number of probes.
func (p *Probes) Len() int {
	if p == nil {
		return 0
	}
	return len(p.byPath)
}

// Paths are the rewritten paths, sorted.
func (p *Probes) Paths() []string {
	if p == nil {
		return nil
	}
	out := make([]string, 0, len(p.byPath))
	for path := range p.byPath {
		out = append(out, path)
	}
	sort.Strings(out)
	return out
}

// Get is the probe of a container's kind (Liveness, Readiness, Startup), with the
// defaults filled in.
func (p *Probes) Get(container, kind string) (Probe, bool) {
	e := p.lookup(Path(container, kind))
	if e == nil {
		return Probe{}, false
	}
	return cloneProbe(e.probe), true
}

func (p *Probes) lookup(path string) *entry {
	if p == nil {
		return nil
	}
	return p.byPath[path]
}

// cloneProbe deep-copies a probe, so that callers never share its slices and pointers.
func cloneProbe(p Probe) Probe {
	if p.HTTPGet != nil {
		h := *p.HTTPGet
		h.Headers = append([]HTTPHeader(nil), h.Headers...)
		p.HTTPGet = &h
	}
	if p.TCPSocket != nil {
		t := *p.TCPSocket
		p.TCPSocket = &t
	}
	if p.GRPC != nil {
		g := *p.GRPC
		p.GRPC = &g
	}
	return p
}

// check validates one probe and works out how to run it.
func check(path string, p *Probe) (*entry, error) {
	if err := checkPath(path); err != nil {
		return nil, err
	}
	if p == nil {
		return nil, errors.New("is null; want one of httpGet, tcpSocket and grpc")
	}
	var set []string
	if p.HTTPGet != nil {
		set = append(set, "httpGet")
	}
	if p.TCPSocket != nil {
		set = append(set, "tcpSocket")
	}
	if p.GRPC != nil {
		set = append(set, "grpc")
	}
	if len(set) != 1 {
		return nil, fmt.Errorf("has %s; want exactly one of httpGet, tcpSocket and grpc", describeSet(set))
	}
	if p.TimeoutSeconds < 0 {
		return nil, fmt.Errorf("timeoutSeconds %d is negative", p.TimeoutSeconds)
	}
	e := &entry{probe: cloneProbe(*p)}
	if e.probe.TimeoutSeconds == 0 {
		e.probe.TimeoutSeconds = DefaultTimeoutSeconds
	}
	e.timeout = budget(e.probe.TimeoutSeconds)

	switch {
	case e.probe.HTTPGet != nil:
		return e, checkHTTP(e)
	case e.probe.TCPSocket != nil:
		t := e.probe.TCPSocket
		if err := checkPort("tcpSocket.port", t.Port); err != nil {
			return nil, err
		}
		if err := checkHost("tcpSocket.host", t.Host); err != nil {
			return nil, err
		}
		e.addr = hostPort(t.Host, t.Port)
	default:
		if err := checkPort("grpc.port", e.probe.GRPC.Port); err != nil {
			return nil, err
		}
		e.addr = hostPort("", e.probe.GRPC.Port)
	}
	return e, nil
}

func checkHTTP(e *entry) error {
	h := e.probe.HTTPGet
	if err := checkPort("httpGet.port", h.Port); err != nil {
		return err
	}
	if err := checkHost("httpGet.host", h.Host); err != nil {
		return err
	}
	switch strings.ToUpper(h.Scheme) {
	case "", SchemeHTTP:
		h.Scheme = SchemeHTTP
	case SchemeHTTPS:
		h.Scheme = SchemeHTTPS
	default:
		return fmt.Errorf("httpGet.scheme %q is neither %s nor %s", h.Scheme, SchemeHTTP, SchemeHTTPS)
	}
	if h.Path == "" {
		h.Path = "/"
	}
	e.header = http.Header{}
	for i, hd := range h.Headers {
		if !validHeaderName(hd.Name) {
			return fmt.Errorf("httpGet.httpHeaders[%d].name %q is not an HTTP header name", i, hd.Name)
		}
		if !validHeaderValue(hd.Value) {
			return fmt.Errorf("httpGet.httpHeaders[%d] (%s): the value has a control character", i, hd.Name)
		}
		e.header.Add(hd.Name, hd.Value)
	}
	// As the kubelet: a User-Agent unless the probe sets one, Accept */* unless the probe
	// sets one (an empty Accept removes it).
	if _, ok := e.header["User-Agent"]; !ok {
		e.header.Set("User-Agent", userAgent)
	}
	if _, ok := e.header["Accept"]; !ok {
		e.header.Set("Accept", "*/*")
	} else if e.header.Get("Accept") == "" {
		e.header.Del("Accept")
	}

	e.addr = hostPort(h.Host, h.Port)
	// As the kubelet: the path may carry a query; whatever scheme or host it names is
	// replaced, so the request goes nowhere but addr.
	u, err := url.Parse(h.Path)
	if err != nil {
		u = &url.URL{Path: h.Path}
	}
	u.Scheme = strings.ToLower(h.Scheme)
	u.Host = e.addr
	u.User = nil
	u.Opaque = ""
	u.Fragment, u.RawFragment = "", ""
	e.url = u.String()
	if _, err := http.NewRequest(http.MethodGet, e.url, nil); err != nil {
		return fmt.Errorf("httpGet.path %q does not make a request: %w", h.Path, err)
	}
	return nil
}

// checkPath accepts /app-health/<container>/<kind>, the container a DNS label as every
// container name is.
func checkPath(path string) error {
	rest, ok := strings.CutPrefix(path, PathPrefix)
	if !ok {
		return fmt.Errorf("the path does not start with %s", PathPrefix)
	}
	container, kind, ok := strings.Cut(rest, "/")
	if !ok {
		return fmt.Errorf("the path is not %s<container>/<kind>", PathPrefix)
	}
	if !dnsLabel(container) {
		return fmt.Errorf("container name %q is not a DNS label", container)
	}
	switch kind {
	case Liveness, Readiness, Startup:
		return nil
	}
	return fmt.Errorf("kind %q is none of %s, %s and %s", kind, Liveness, Readiness, Startup)
}

func checkPort(field string, port int32) error {
	if port < 1 || port > 65535 {
		return fmt.Errorf("%s %d is not a port (1-65535)", field, port)
	}
	return nil
}

// checkHost accepts an IP address or a host name; nothing that could change the meaning
// of host:port (a port, a path, user info, spaces).
func checkHost(field, host string) error {
	if host == "" {
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	ok := len(host) <= 253
	for i := 0; ok && i < len(host); i++ {
		c := host[i]
		ok = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_'
	}
	if !ok {
		return fmt.Errorf("%s %q is neither an IP address nor a host name", field, host)
	}
	return nil
}

func hostPort(host string, port int32) string {
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, strconv.Itoa(int(port)))
}

// budget is how long the proxy gives a probe of timeoutSeconds: a tenth less (at most
// 250ms less), so that the kubelet, whose own timeout is timeoutSeconds, gets the
// proxy's answer and its reason rather than a timeout of its own.
func budget(timeoutSeconds int32) time.Duration {
	d := time.Duration(timeoutSeconds) * time.Second
	return d - min(d/10, 250*time.Millisecond)
}

func dnsLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (c != '-' || i == 0 || i == len(s)-1) {
			return false
		}
	}
	return true
}

// validHeaderName is RFC 9110's token.
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		if !strings.ContainsRune("!#$%&'*+-.^_`|~", rune(c)) {
			return false
		}
	}
	return true
}

// validHeaderValue refuses what net/http would refuse to send: control characters other
// than a tab.
func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

func describeSet(set []string) string {
	if len(set) == 0 {
		return "no handler"
	}
	return strings.Join(set, " and ")
}
