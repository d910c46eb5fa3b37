package probes

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// app is an HTTP application on 127.0.0.1 that records the requests it gets.
type app struct {
	mu   sync.Mutex
	last map[string]*http.Request
}

func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.last[r.URL.Path] = r.Clone(context.Background())
	a.mu.Unlock()
	switch r.URL.Path {
	case "/ok":
		fmt.Fprint(w, "fine")
	case "/fail":
		http.Error(w, "broken", http.StatusInternalServerError)
	case "/redirect":
		http.Redirect(w, r, "/redirected", http.StatusFound)
	case "/redirected":
		http.Error(w, "the redirect's target fails", http.StatusInternalServerError)
	case "/nocontent":
		w.WriteHeader(http.StatusNoContent)
	case "/query":
		if r.URL.Query().Get("full") != "1" {
			http.Error(w, "no query", http.StatusBadRequest)
		}
	case "/slow":
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	default:
		http.NotFound(w, r)
	}
}

func (a *app) request(path string) *http.Request {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last[path]
}

func startApp(t *testing.T, tls bool) (*app, int32) {
	t.Helper()
	a := &app{last: map[string]*http.Request{}}
	srv := httptest.NewUnstartedServer(a)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // quiet about plain HTTP to the TLS port
	if tls {
		srv.StartTLS() // a self-signed certificate
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return a, portOf(t, srv.Listener.Addr())
}

// rawServer answers every connection with respond (for responses net/http would not write).
func rawServer(t *testing.T, respond func(net.Conn)) int32 {
	t.Helper()
	ln := listen(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				// Read the request head before answering.
				buf := make([]byte, 4096)
				_, _ = c.Read(buf)
				respond(c)
			}()
		}
	}()
	return portOf(t, ln.Addr())
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// closedPort is a port on 127.0.0.1 that nothing listens on.
func closedPort(t *testing.T) int32 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := portOf(t, ln.Addr())
	ln.Close()
	return port
}

func portOf(t *testing.T, addr net.Addr) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr.String())
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return int32(n)
}

// statusPort serves Handler for probes, as the proxy's :15020 would.
func statusPort(t *testing.T, probes map[string]Probe, dial func(context.Context, string, string) (net.Conn, error)) string {
	t.Helper()
	p, err := Parse(jsonOf(t, probes))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(Handler(p, dial))
	t.Cleanup(srv.Close)
	return srv.URL
}

type answer struct {
	code   int
	body   string
	header http.Header
}

func get(t *testing.T, url string) answer {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{resp.StatusCode, string(b), resp.Header}
}

func TestHTTPProbes(t *testing.T) {
	t.Parallel()
	plain, port := startApp(t, false)
	_, tlsPort := startApp(t, true)
	malformed := rawServer(t, func(c net.Conn) { _, _ = io.WriteString(c, "HTTP/1.1 abc\r\n\r\n") })
	endless := rawServer(t, func(c net.Conn) {
		// No length: the body lasts until the connection closes, which it never does.
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
		chunk := make([]byte, 32<<10)
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	})
	stalled := rawServer(t, func(c net.Conn) {
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome")
		time.Sleep(5 * time.Second)
	})
	refused := closedPort(t)
	httpGet := func(path string, port int32) *HTTPGetAction { return &HTTPGetAction{Path: path, Port: port} }

	for _, tc := range []struct {
		name    string
		probe   Probe
		code    int
		body    string
		check   func(t *testing.T)
		maxTime time.Duration
	}{
		{name: "a 200 is a success", probe: Probe{HTTPGet: httpGet("/ok", port)}, code: 200, body: "HTTP probe succeeded with statuscode: 200"},
		{name: "a 204 is answered as 204", probe: Probe{HTTPGet: httpGet("/nocontent", port)}, code: 204},
		{name: "a 500 is a failure", probe: Probe{HTTPGet: httpGet("/fail", port)}, code: 503, body: "HTTP probe failed with statuscode: 500"},
		{name: "a 404 is a failure", probe: Probe{HTTPGet: httpGet("/missing", port)}, code: 503, body: "statuscode: 404"},
		{
			name: "a 302 is a success and is not followed", probe: Probe{HTTPGet: httpGet("/redirect", port)}, code: 302,
			body: "statuscode: 302",
			check: func(t *testing.T) {
				if plain.request("/redirected") != nil {
					t.Error("the redirect was followed")
				}
			},
		},
		{name: "the path's query is sent", probe: Probe{HTTPGet: httpGet("/query?full=1", port)}, code: 200},
		{
			name:  "a path naming another host still goes to the probe's port",
			probe: Probe{HTTPGet: httpGet("http://evil.example:1/ok", port)}, code: 200,
		},
		{
			name: "the probe's headers are sent, with the kubelet's defaults",
			probe: Probe{HTTPGet: &HTTPGetAction{Path: "/ok", Port: port, Headers: []HTTPHeader{
				{Name: "X-Probe", Value: "kubelet"}, {Name: "X-Probe", Value: "twice"}, {Name: "Host", Value: "health.example"},
			}}},
			code: 200,
			check: func(t *testing.T) {
				r := plain.request("/ok")
				if got := r.Header.Values("X-Probe"); strings.Join(got, ",") != "kubelet,twice" {
					t.Errorf("X-Probe = %q, want kubelet, twice", got)
				}
				if r.Host != "health.example" {
					t.Errorf("Host = %q, want health.example", r.Host)
				}
				if r.UserAgent() != "kube-probe/trellis" || r.Header.Get("Accept") != "*/*" {
					t.Errorf("User-Agent %q, Accept %q; want the kubelet's defaults", r.UserAgent(), r.Header.Get("Accept"))
				}
				if r.Header.Get("Accept-Encoding") != "" {
					t.Errorf("Accept-Encoding %q, want none (as the kubelet)", r.Header.Get("Accept-Encoding"))
				}
			},
		},
		{
			name: "the probe's User-Agent and an empty Accept replace the defaults",
			probe: Probe{HTTPGet: &HTTPGetAction{Path: "/query?full=1", Port: port, Headers: []HTTPHeader{
				{Name: "User-Agent", Value: "my-checker"}, {Name: "Accept", Value: ""},
			}}},
			code: 200,
			check: func(t *testing.T) {
				r := plain.request("/query")
				if _, ok := r.Header["Accept"]; ok || r.UserAgent() != "my-checker" {
					t.Errorf("User-Agent %q, Accept %q; want my-checker and no Accept", r.UserAgent(), r.Header.Values("Accept"))
				}
			},
		},
		{name: "HTTPS accepts a self-signed certificate", probe: Probe{HTTPGet: &HTTPGetAction{Path: "/ok", Port: tlsPort, Scheme: "HTTPS"}}, code: 200},
		{name: "HTTP to an HTTPS port is a failure", probe: Probe{HTTPGet: httpGet("/ok", tlsPort)}, code: 503, body: "statuscode: 400"},
		{name: "a host is dialled instead of 127.0.0.1", probe: Probe{HTTPGet: &HTTPGetAction{Path: "/ok", Port: port, Host: "localhost"}}, code: 200},
		{name: "a refused connection is a failure", probe: Probe{HTTPGet: httpGet("/ok", refused)}, code: 503, body: "connection refused"},
		{name: "a malformed response is a failure", probe: Probe{HTTPGet: httpGet("/", malformed)}, code: 503, body: "HTTP probe failed: "},
		{
			name: "a slow application times out before the kubelet does", probe: Probe{HTTPGet: httpGet("/slow", port), TimeoutSeconds: 1},
			code: 503, body: "HTTP probe timed out (timeoutSeconds: 1)", maxTime: time.Second,
		},
		{
			name: "a body that stalls times out", probe: Probe{HTTPGet: httpGet("/", stalled), TimeoutSeconds: 1},
			code: 503, body: "HTTP probe timed out", maxTime: time.Second,
		},
		{
			name: "an endless body is read no further than 10 KiB", probe: Probe{HTTPGet: httpGet("/", endless), TimeoutSeconds: 3},
			code: 200, maxTime: 2 * time.Second,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := Path("web", Liveness)
			url := statusPort(t, map[string]Probe{path: tc.probe}, nil)
			start := time.Now()
			a := get(t, url+path)
			took := time.Since(start)
			if a.code != tc.code || !strings.Contains(a.body, tc.body) {
				t.Errorf("GET %s = %d %q, want %d containing %q", path, a.code, a.body, tc.code, tc.body)
			}
			if loc := a.header.Get("Location"); loc != "" {
				t.Errorf("the application's Location %q was passed on to the kubelet", loc)
			}
			if tc.maxTime > 0 && took >= tc.maxTime {
				t.Errorf("took %v, want less than %v", took, tc.maxTime)
			}
			if tc.check != nil {
				tc.check(t)
			}
		})
	}
}

func TestTCPProbes(t *testing.T) {
	t.Parallel()
	open := portOf(t, listen(t).Addr())
	refused := closedPort(t)
	for _, tc := range []struct {
		name string
		port int32
		code int
		body string
	}{
		{"a listening port is a success", open, 200, "TCP probe succeeded"},
		{"a refused connection is a failure", refused, 503, "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := Path("db", Readiness)
			url := statusPort(t, map[string]Probe{path: {TCPSocket: &TCPSocketAction{Port: tc.port}}}, nil)
			if a := get(t, url+path); a.code != tc.code || !strings.Contains(a.body, tc.body) {
				t.Errorf("GET %s = %d %q, want %d containing %q", path, a.code, a.body, tc.code, tc.body)
			}
		})
	}
}

func startGRPC(t *testing.T, withHealth bool) int32 {
	t.Helper()
	ln := listen(t)
	srv := grpc.NewServer()
	if withHealth {
		hs := health.NewServer() // "" is SERVING
		hs.SetServingStatus("api.v1.Health", healthpb.HealthCheckResponse_SERVING)
		hs.SetServingStatus("api.v1.Down", healthpb.HealthCheckResponse_NOT_SERVING)
		healthpb.RegisterHealthServer(srv, hs)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return portOf(t, ln.Addr())
}

func TestGRPCProbes(t *testing.T) {
	t.Parallel()
	port := startGRPC(t, true)
	bare := startGRPC(t, false)
	refused := closedPort(t)
	for _, tc := range []struct {
		name    string
		port    int32
		service string
		code    int
		body    string
	}{
		{"a SERVING service is a success", port, "api.v1.Health", 200, `service "api.v1.Health" is SERVING`},
		{"the server as a whole is checked without a service", port, "", 200, "the server is SERVING"},
		{"a NOT_SERVING service is a failure", port, "api.v1.Down", 503, `service "api.v1.Down" is NOT_SERVING`},
		{"a service the health server does not know is a failure", port, "api.v1.Nope", 503, `does not know service "api.v1.Nope"`},
		{"a server without the health service is a failure", bare, "", 503, "does not implement the health protocol"},
		{"a refused connection is a failure", refused, "", 503, "gRPC probe failed: Unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := Path("api", Startup)
			url := statusPort(t, map[string]Probe{path: {GRPC: &GRPCAction{Port: tc.port, Service: tc.service}}}, nil)
			if a := get(t, url+path); a.code != tc.code || !strings.Contains(a.body, tc.body) {
				t.Errorf("GET %s = %d %q, want %d containing %q", path, a.code, a.body, tc.code, tc.body)
			}
		})
	}
}

func TestGRPCProbeTimesOut(t *testing.T) {
	t.Parallel()
	// Accepts connections and never speaks HTTP/2.
	ln := listen(t)
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	path := Path("api", Liveness)
	url := statusPort(t, map[string]Probe{path: {GRPC: &GRPCAction{Port: portOf(t, ln.Addr())}, TimeoutSeconds: 1}}, nil)
	start := time.Now()
	a := get(t, url+path)
	if a.code != 503 || !strings.Contains(a.body, "gRPC probe timed out (timeoutSeconds: 1)") {
		t.Errorf("GET %s = %d %q, want a timeout", path, a.code, a.body)
	}
	if took := time.Since(start); took >= time.Second {
		t.Errorf("took %v, want less than the kubelet's 1s", took)
	}
}

func TestUnknownPathsAreNotFound(t *testing.T) {
	t.Parallel()
	port := portOf(t, listen(t).Addr())
	probes := map[string]Probe{Path("api", Liveness): {TCPSocket: &TCPSocketAction{Port: port}}}
	url := statusPort(t, probes, nil)
	for _, tc := range []struct{ name, path string }{
		{"another container", "/app-health/web/livez"},
		{"another kind of the same container", "/app-health/api/readyz"},
		{"a kind that does not exist", "/app-health/api/healthz"},
		{"more segments", "/app-health/api/livez/x"},
		{"the prefix alone", "/app-health/"},
		{"a path outside the prefix", "/healthz/ready"},
		{"an escaped path", "/app-health/api%2Flivez"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if a := get(t, url+tc.path); a.code != 404 {
				t.Errorf("GET %s = %d %q, want 404", tc.path, a.code, a.body)
			}
		})
	}
	t.Run("a handler without probes", func(t *testing.T) {
		for _, p := range []*Probes{nil, {}} {
			rec := httptest.NewRecorder()
			Handler(p, nil).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/app-health/api/livez", nil))
			if rec.Code != 404 {
				t.Errorf("GET = %d, want 404", rec.Code)
			}
		}
	})
	t.Run("a POST to a known path", func(t *testing.T) {
		resp, err := http.Post(url+"/app-health/api/livez", "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD" {
			t.Errorf("POST = %d (Allow %q), want 405", resp.StatusCode, resp.Header.Get("Allow"))
		}
	})
}

func TestEveryKindOfProbeDialsThroughTheHook(t *testing.T) {
	t.Parallel()
	_, httpPort := startApp(t, false)
	grpcPort := startGRPC(t, true)
	tcpPort := portOf(t, listen(t).Addr())
	// The probes name port 1 on a host that does not exist; the hook sends each to its
	// application, so a success proves the hook carried the connection.
	// The gRPC probe always dials 127.0.0.1.
	real := map[string]int32{"http": httpPort, "tcp": tcpPort, "127": grpcPort}
	var mu sync.Mutex
	var dialled []string
	hook := func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		dialled = append(dialled, network+" "+addr)
		mu.Unlock()
		kind, _, _ := strings.Cut(addr, ".")
		var d net.Dialer
		return d.DialContext(ctx, network, net.JoinHostPort("127.0.0.1", strconv.Itoa(int(real[kind]))))
	}
	url := statusPort(t, map[string]Probe{
		Path("a", Liveness):  {HTTPGet: &HTTPGetAction{Path: "/ok", Port: 1, Host: "http.invalid"}},
		Path("a", Readiness): {TCPSocket: &TCPSocketAction{Port: 1, Host: "tcp.invalid"}},
		Path("b", Startup):   {GRPC: &GRPCAction{Port: 2}},
	}, hook)
	for _, path := range []string{Path("a", Liveness), Path("a", Readiness), Path("b", Startup)} {
		if a := get(t, url+path); a.code != 200 {
			t.Errorf("GET %s = %d %q, want 200", path, a.code, a.body)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"tcp http.invalid:1", "tcp tcp.invalid:1", "tcp 127.0.0.1:2"}
	if strings.Join(dialled, ",") != strings.Join(want, ",") {
		t.Errorf("dialled %q, want %q", dialled, want)
	}
}

func TestConcurrentRequestsShareOneRun(t *testing.T) {
	t.Parallel()
	var hits atomic.Int32
	release := make(chan struct{})
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		<-release
	}))
	t.Cleanup(app.Close)
	path := Path("api", Readiness)
	p, err := Parse(jsonOf(t, map[string]Probe{path: {HTTPGet: &HTTPGetAction{Path: "/", Port: portOf(t, app.Listener.Addr())}, TimeoutSeconds: 10}}))
	if err != nil {
		t.Fatal(err)
	}
	const n = 10
	var arrived atomic.Int32
	h := Handler(p, nil)
	status := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(status.Close)

	codes := make(chan int, n)
	for range n {
		go func() {
			resp, err := http.Get(status.URL + path)
			if err != nil {
				codes <- 0
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for arrived.Load() < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // let the last ones reach the shared run
	close(release)
	for range n {
		if code := <-codes; code != 200 {
			t.Errorf("a request got %d, want 200", code)
		}
	}
	if got := hits.Load(); got != 1 {
		t.Errorf("the application got %d probes for %d concurrent requests, want 1", got, n)
	}
	// Once the run is over the next request runs the probe again.
	if a := get(t, status.URL+path); a.code != 200 || hits.Load() != 2 {
		t.Errorf("a later request = %d with %d probes, want 200 with 2", a.code, hits.Load())
	}
}

func TestFailureReasonsAreShortPrintableLines(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"control characters are replaced", "bad\r\nHeader: x\x00", "bad??Header: x?"},
		{"invalid UTF-8 is replaced", "a\xffb", "a?b"},
		{"a long reason is cut", strings.Repeat("é", maxReason), strings.Repeat("é", maxReason/2) + "..."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := sanitize(tc.in); got != tc.want {
				t.Errorf("sanitize(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}
