package server_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/examples/apps/demo/server"
)

var info = server.Info{Service: "backend", Version: "v2", Pod: "backend-v2-abc", Namespace: "shop"}

// serve runs serve on a loopback listener until the test ends, then checks that it stopped
// cleanly. It returns the address and a function that stops the server early and returns
// Serve's error.
func serve(t *testing.T, run func(context.Context, net.Listener) error) (string, func() error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, ln) }()
	var stopped bool
	var result error
	stop := func() error {
		if stopped {
			return result
		}
		stopped = true
		cancel()
		select {
		case result = <-done:
		case <-time.After(15 * time.Second):
			t.Errorf("the server did not stop within 15s of its context ending")
		}
		return result
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Serve returned %v after a clean stop", err)
		}
	})
	return ln.Addr().String(), stop
}

func common() server.Common {
	return server.Common{Info: info, Drain: 2 * time.Second}
}
