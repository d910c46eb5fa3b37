package probes

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// contractExample is the example of docs/injection.md.
const contractExample = `{
  "/app-health/api/livez":    {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP",
                                            "httpHeaders": [{"name": "X-Probe", "value": "kubelet"}]},
                               "timeoutSeconds": 1},
  "/app-health/api/readyz":   {"tcpSocket": {"port": 8080}, "timeoutSeconds": 2},
  "/app-health/api/startupz": {"grpc": {"port": 9090, "service": "api.v1.Health"}, "timeoutSeconds": 1},
  "/app-health/admin/livez":  {"httpGet": {"path": "/", "port": 8443, "host": "127.0.0.1", "scheme": "HTTPS"},
                               "timeoutSeconds": 1}
}`

func TestParseReadsTheContract(t *testing.T) {
	p, err := Parse(contractExample)
	if err != nil {
		t.Fatal(err)
	}
	wantPaths := []string{"/app-health/admin/livez", "/app-health/api/livez", "/app-health/api/readyz", "/app-health/api/startupz"}
	if got := p.Paths(); !reflect.DeepEqual(got, wantPaths) {
		t.Errorf("Paths() = %q, want %q", got, wantPaths)
	}
	for _, tc := range []struct {
		name            string
		container, kind string
		want            Probe
	}{
		{"an HTTP probe keeps its path, port, scheme and headers", "api", Liveness, Probe{
			HTTPGet:        &HTTPGetAction{Path: "/healthz", Port: 8080, Scheme: "HTTP", Headers: []HTTPHeader{{Name: "X-Probe", Value: "kubelet"}}},
			TimeoutSeconds: 1,
		}},
		{"a TCP probe keeps its port and timeout", "api", Readiness, Probe{TCPSocket: &TCPSocketAction{Port: 8080}, TimeoutSeconds: 2}},
		{"a gRPC probe keeps its service", "api", Startup, Probe{GRPC: &GRPCAction{Port: 9090, Service: "api.v1.Health"}, TimeoutSeconds: 1}},
		{"an HTTPS probe keeps its host", "admin", Liveness, Probe{
			HTTPGet:        &HTTPGetAction{Path: "/", Port: 8443, Host: "127.0.0.1", Scheme: "HTTPS"},
			TimeoutSeconds: 1,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := p.Get(tc.container, tc.kind)
			if !ok {
				t.Fatalf("Get(%q, %q): no probe", tc.container, tc.kind)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Get(%q, %q) = %s, want %s", tc.container, tc.kind, jsonOf(t, got), jsonOf(t, tc.want))
			}
		})
	}
	if _, ok := p.Get("admin", Readiness); ok {
		t.Error("Get found a probe the variable does not have")
	}
}

func TestParseFillsInTheKubeletsDefaults(t *testing.T) {
	p, err := Parse(`{"/app-health/web/readyz": {"httpGet": {"port": 80, "scheme": "https"}, "unknownField": true}}`)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := p.Get("web", Readiness)
	want := Probe{HTTPGet: &HTTPGetAction{Path: "/", Port: 80, Scheme: "HTTPS"}, TimeoutSeconds: 1}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %s, want %s", jsonOf(t, got), jsonOf(t, want))
	}
	p, err = Parse(`{"/app-health/web/readyz": {"httpGet": {"port": 80}}}`)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := p.Get("web", Readiness); got.HTTPGet.Scheme != SchemeHTTP {
		t.Errorf("an HTTP probe without a scheme has scheme %q, want %q", got.HTTPGet.Scheme, SchemeHTTP)
	}
}

func TestParseOfNothingIsNoProbes(t *testing.T) {
	for _, s := range []string{"", "  \n", "{}"} {
		p, err := Parse(s)
		if err != nil || p.Len() != 0 {
			t.Errorf("Parse(%q) = %d probes, %v; want none and no error", s, p.Len(), err)
		}
	}
}

func TestParseSaysWhatIsWrong(t *testing.T) {
	tcp := `{"tcpSocket": {"port": 8080}}`
	one := func(path, probe string) string { return `{"` + path + `": ` + probe + `}` }
	for _, tc := range []struct {
		name, in string
		want     []string
	}{
		{"text that is not JSON is refused", "api:8080", []string{EnvVar, "is not the JSON the injector writes"}},
		{"a JSON array is refused", `[{"tcpSocket": {"port": 1}}]`, []string{"is not the JSON the injector writes", "cannot unmarshal array"}},
		{"JSON null is refused", "null", []string{"is null"}},
		{"trailing data is refused", `{} {}`, []string{"is not the JSON the injector writes"}},
		{"a truncated object is refused", `{"/app-health/api/livez": {"tcpSocket": {"port": 80`, []string{"is not the JSON the injector writes"}},
		{"a port that is a string is refused", one("/app-health/api/livez", `{"tcpSocket": {"port": "http"}}`), []string{"cannot unmarshal string"}},
		{"a port beyond int32 is refused", one("/app-health/api/livez", `{"tcpSocket": {"port": 99999999999}}`), []string{"cannot unmarshal number"}},
		{"a path outside /app-health/ is refused", one("/healthz/api/livez", tcp), []string{`probe "/healthz/api/livez"`, "does not start with /app-health/"}},
		{"a path without a kind is refused", one("/app-health/api", tcp), []string{"is not /app-health/<container>/<kind>"}},
		{"a container name that is not a DNS label is refused", one("/app-health/API_1/livez", tcp), []string{`container name "API_1" is not a DNS label`}},
		{"an empty container name is refused", one("/app-health//livez", tcp), []string{`container name "" is not a DNS label`}},
		{"an unknown kind is refused", one("/app-health/api/healthz", tcp), []string{`kind "healthz" is none of livez, readyz and startupz`}},
		{"a path with more segments is refused", one("/app-health/api/livez/x", tcp), []string{`kind "livez/x"`}},
		{"a null probe is refused", one("/app-health/api/livez", "null"), []string{"is null"}},
		{"a probe without a handler is refused", one("/app-health/api/livez", `{"exec": {"command": ["true"]}, "timeoutSeconds": 1}`), []string{"has no handler; want exactly one of httpGet, tcpSocket and grpc"}},
		{"a probe with two handlers is refused", one("/app-health/api/livez", `{"httpGet": {"port": 80}, "tcpSocket": {"port": 80}}`), []string{"has httpGet and tcpSocket"}},
		{"port 0 is refused", one("/app-health/api/livez", `{"httpGet": {"port": 0}}`), []string{"httpGet.port 0 is not a port (1-65535)"}},
		{"a port above 65535 is refused", one("/app-health/api/livez", `{"grpc": {"port": 70000}}`), []string{"grpc.port 70000 is not a port"}},
		{"a negative port is refused", one("/app-health/api/livez", `{"tcpSocket": {"port": -1}}`), []string{"tcpSocket.port -1 is not a port"}},
		{"a negative timeout is refused", one("/app-health/api/livez", `{"tcpSocket": {"port": 80}, "timeoutSeconds": -1}`), []string{"timeoutSeconds -1 is negative"}},
		{"an unknown scheme is refused", one("/app-health/api/livez", `{"httpGet": {"port": 80, "scheme": "FTP"}}`), []string{`httpGet.scheme "FTP" is neither HTTP nor HTTPS`}},
		{"a header name with a space is refused", one("/app-health/api/livez", `{"httpGet": {"port": 80, "httpHeaders": [{"name": "X Probe", "value": "v"}]}}`), []string{`httpHeaders[0].name "X Probe" is not an HTTP header name`}},
		{"an empty header name is refused", one("/app-health/api/livez", `{"httpGet": {"port": 80, "httpHeaders": [{"name": "", "value": "v"}]}}`), []string{`httpHeaders[0].name "" is not an HTTP header name`}},
		{"a header value with a line break is refused", one("/app-health/api/livez", `{"httpGet": {"port": 80, "httpHeaders": [{"name": "A", "value": "ok"}, {"name": "X", "value": "a\r\nHost: evil"}]}}`), []string{"httpHeaders[1] (X): the value has a control character"}},
		{"a host with a path is refused", one("/app-health/api/livez", `{"httpGet": {"port": 80, "host": "evil.example/x"}}`), []string{`httpGet.host "evil.example/x" is neither an IP address nor a host name`}},
		{"a host with a port is refused", one("/app-health/api/livez", `{"tcpSocket": {"port": 80, "host": "10.0.0.1:22"}}`), []string{`tcpSocket.host "10.0.0.1:22"`}},
		{"a host with user info is refused", one("/app-health/api/livez", `{"httpGet": {"port": 80, "host": "user@10.0.0.1"}}`), []string{`httpGet.host "user@10.0.0.1"`}},
		{"a value larger than any annotation is refused", `{"x": "` + strings.Repeat("a", maxInput) + `"}`, []string{"more than the"}},
		{
			"every problem is reported at once",
			`{"/app-health/api/livez": {"httpGet": {"port": 0}}, "/app-health/api/readyz": {"grpc": {"port": 70000}}, "/app-health/api/startupz": ` + tcp + `}`,
			[]string{`probe "/app-health/api/livez": httpGet.port 0`, `probe "/app-health/api/readyz": grpc.port 70000`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse(tc.in)
			if err == nil {
				t.Fatalf("Parse accepted it: %v", p.Paths())
			}
			if p != nil {
				t.Errorf("Parse returned probes with its error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestParseAcceptsHostsTheKubeletDials(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "::1", "fe80::1%eth0", "db.shop.svc.cluster.local", "my_host"} {
		in := `{"/app-health/api/livez": {"tcpSocket": {"port": 80, "host": ` + jsonString(t, host) + `}}}`
		if _, err := Parse(in); err != nil {
			t.Errorf("host %q: %v", host, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		contractExample, "", "{}", "null", "[]", `{"/app-health/a/livez": null}`,
		`{"/app-health/a/livez": {"httpGet": {"port": 1, "path": "http://evil/%zz?x#y"}}}`,
		`{"/app-health/a/livez": {"httpGet": {"port": 1, "httpHeaders": [{"name": "Host", "value": "x"}]}}}`,
		`{"/app-health/a/readyz": {"tcpSocket": {"port": 65535, "host": "::1"}, "timeoutSeconds": 2147483647}}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := Parse(s)
		if err != nil {
			if p != nil {
				t.Fatal("probes with an error")
			}
			return
		}
		for _, path := range p.Paths() {
			container, kind := splitPath(t, path)
			got, ok := p.Get(container, kind)
			if !ok {
				t.Fatalf("%s is listed but not found", path)
			}
			if got.TimeoutSeconds < 1 {
				t.Fatalf("%s: timeoutSeconds %d", path, got.TimeoutSeconds)
			}
		}
	})
}

func splitPath(t testing.TB, path string) (container, kind string) {
	t.Helper()
	rest, ok := strings.CutPrefix(path, PathPrefix)
	if !ok {
		t.Fatalf("%s is not under %s", path, PathPrefix)
	}
	container, kind, _ = strings.Cut(rest, "/")
	return container, kind
}

func jsonOf(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func jsonString(t testing.TB, s string) string { return jsonOf(t, s) }

func sameJSON(t testing.TB, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatal(err)
	}
	return reflect.DeepEqual(x, y)
}
