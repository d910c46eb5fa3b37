package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/examples/apps/demo/app"
)

func run(t *testing.T, ctx context.Context, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = app.Main(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestUsageErrorsExit2AndSayWhatIsWrong(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"an unknown subcommand", []string{"serve"}, `unknown command "serve"`},
		{"get without --url", []string{"get"}, "--url"},
		{"get with an unknown flag", []string{"get", "--url", "http://x/", "--bogus"}, "bogus"},
		{"get with a positional argument", []string{"get", "http://x/"}, "takes no arguments"},
		{"get with a bad header", []string{"get", "--url", "http://x/", "--header", "nope"}, "--header"},
		{"grpc-chat without a port", []string{"grpc-chat", "--addr", "greeter"}, "--addr"},
		{"tcp-hello sending QUIT", []string{"tcp-hello", "--addr", "echo:7000", "--line", "QUIT"}, "--line"},
		{"job with zero requests", []string{"job", "--url", "http://x/", "--n", "0"}, "--n"},
		{"a server on port 0", []string{"http", "--port", "0"}, "--port"},
		{"a frontend with a backend that is not a URL", []string{"frontend", "--port", "8080", "--backend", "backend:8080"}, "--backend"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := run(t, context.Background(), tc.args...)
			if code != app.ExitUsage {
				t.Errorf("exit %d, want %d", code, app.ExitUsage)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing (only results go there)", stdout)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr %q does not mention %q", stderr, tc.want)
			}
		})
	}
}

// serveDemo runs `trellis-demo <args> --port P` until the test ends and waits for it to
// answer on P.
func serveDemo(t *testing.T, args ...string) string {
	t.Helper()
	port := freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var code int
	var stderr string
	wg.Go(func() { code, _, stderr = run(t, ctx, append(args, "--port", fmt.Sprint(port))...) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if code != app.ExitOK {
			t.Errorf("%v exited %d after SIGTERM, want 0; stderr:\n%s", args, code, stderr)
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v does not listen on %s: %v", args, addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// one decodes stdout, which must be exactly one JSON object on one line.
func one(t *testing.T, stdout string) map[string]any {
	t.Helper()
	if strings.Count(stdout, "\n") != 1 || !strings.HasSuffix(stdout, "\n") {
		t.Fatalf("stdout is not one line: %q", stdout)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(stdout), &m); err != nil {
		t.Fatalf("stdout is not a JSON object: %v\n%s", err, stdout)
	}
	return m
}

func TestToolsPrintOneJSONObjectAndExit0EvenWhenRequestsFail(t *testing.T) {
	httpAddr := serveDemo(t, "http", "--version", "v7")
	grpcAddr := serveDemo(t, "grpc", "--version", "v8")
	tcpAddr := serveDemo(t, "tcp", "--version", "v9")
	tests := []struct {
		name  string
		args  []string
		field string
		want  any
	}{
		{"get counts versions", []string{"get", "--url", "http://" + httpAddr + "/", "--n", "20"}, "versions", map[string]any{"v7": 20.0}},
		{"get over h2c", []string{"get", "--url", "http://" + httpAddr + "/", "--n", "5", "--h2c"}, "protocols", map[string]any{"HTTP/2.0": 5.0}},
		{"get counts refused requests", []string{"get", "--url", "http://127.0.0.1:1/", "--n", "3"}, "errorCount", 3.0},
		{"grpc-chat counts replies", []string{"grpc-chat", "--addr", grpcAddr, "--messages", "4"}, "versions", map[string]any{"v8": 4.0}},
		{"grpc-hello counts calls", []string{"grpc-hello", "--addr", grpcAddr, "--n", "3"}, "codes", map[string]any{"OK": 3.0}},
		{"tcp-hello reads the banner", []string{"tcp-hello", "--addr", tcpAddr}, "version", "v9"},
		{"tcp-hello reports a refused connection", []string{"tcp-hello", "--addr", "127.0.0.1:1"}, "banner", ""},
		{"job with every request answered", []string{"job", "--url", "http://" + httpAddr + "/", "--n", "3"}, "ok", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := run(t, context.Background(), tc.args...)
			if code != app.ExitOK {
				t.Fatalf("exit %d, want 0; stderr: %s", code, stderr)
			}
			got := one(t, stdout)[tc.field]
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("%s = %v, want %v\n%s", tc.field, got, tc.want, stdout)
			}
		})
	}
}

func TestJobExits1WhenARequestFails(t *testing.T) {
	httpAddr := serveDemo(t, "http")
	code, stdout, stderr := run(t, context.Background(), "job", "--url", "http://"+httpAddr+"/status/500", "--n", "2")
	if code != app.ExitFailure {
		t.Errorf("exit %d, want %d", code, app.ExitFailure)
	}
	if m := one(t, stdout); m["ok"] != false || m["failed"] != 2.0 {
		t.Errorf("result %s, want ok false and 2 failed", stdout)
	}
	if stderr != "" {
		t.Errorf("stderr %q, want nothing: the JSON says it all", stderr)
	}
}

func TestFrontendCommandCallsItsBackend(t *testing.T) {
	backend := serveDemo(t, "http", "--service", "backend", "--version", "v2")
	frontend := serveDemo(t, "frontend", "--backend", "http://"+backend+"/", "--verbose")
	resp, err := http.Get("http://" + frontend + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got struct {
		Service string `json:"service"`
		Backend struct {
			Service string `json:"service"`
			Version string `json:"version"`
		} `json:"backend"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || got.Service != "frontend" || got.Backend.Service != "backend" || got.Backend.Version != "v2" {
		t.Errorf("status %d, reply %+v", resp.StatusCode, got)
	}
}

func TestAServerOnABusyPortExits1(t *testing.T) {
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	code, _, stderr := run(t, context.Background(), "tcp", "--port", fmt.Sprint(ln.Addr().(*net.TCPAddr).Port))
	if code != app.ExitFailure || !strings.Contains(stderr, "listen on port") {
		t.Errorf("exit %d, stderr %q; want 1 and the listen error", code, stderr)
	}
}
