package proxy

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The reverse proxies flush streamed responses (no Content-Length, or text/event-stream) at
// every write, and let a response of known length leave in one piece when it is complete
// (fewer writes and system calls per request: see docs/performance.md).
func TestStreamedResponsesArriveAsTheAppFlushesThem(t *testing.T) {
	for _, tc := range []struct {
		name        string
		contentType string
		client      func(string) *http.Client
	}{
		// HTTP/1.1 → sidecar → HTTP/1.1 over mTLS → sidecar → app
		{"a chunked response over HTTP/1.1 between the sidecars", "text/plain", clientTo},
		{"server-sent events over HTTP/1.1 between the sidecars", "text/event-stream", clientTo},
		// h2c → sidecar → HTTP/2 over mTLS → sidecar → app
		{"a chunked response over HTTP/2 between the sidecars", "text/plain", h2cClientTo},
		{"server-sent events over HTTP/2 between the sidecars", "text/event-stream", h2cClientTo},
	} {
		t.Run(tc.name, func(t *testing.T) {
			release := make(chan struct{})
			appAddr := app(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", tc.contentType)
				io.WriteString(w, "first\n")
				w.(http.Flusher).Flush()
				// The second part waits until the client has seen the first one.
				select {
				case <-release:
				case <-time.After(10 * time.Second):
				}
				io.WriteString(w, "second\n")
			}))
			addr := httpPair(t, appAddr, nil).client
			c := tc.client(addr)
			resp, err := c.Get("http://web.default/")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			r := bufio.NewReader(resp.Body)
			got := make(chan string, 1)
			go func() { line, _ := r.ReadString('\n'); got <- line }()
			select {
			case line := <-got:
				close(release)
				if line != "first\n" {
					t.Fatalf("first part %q", line)
				}
			case <-time.After(5 * time.Second):
				close(release)
				t.Fatal("the first part did not arrive before the app wrote the rest: the proxies held a streamed response back")
			}
			rest, err := io.ReadAll(r)
			if err != nil || strings.TrimSpace(string(rest)) != "second" {
				t.Fatalf("rest %q, %v", rest, err)
			}
		})
	}
}
