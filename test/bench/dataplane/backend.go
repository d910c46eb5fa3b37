package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/trellis-mesh/trellis/test/bench/internal/benchio"
)

// payloadSize is the size of every response body (HTTP) and message (gRPC).
const payloadSize = 1024

// The backend's ports. The server side of every pair reaches it on 127.0.0.1 at appHTTP
// and appGRPC; the direct target reaches it from the client namespace at directHTTP and
// directGRPC, which the sidecar's redirect leaves alone (same process, same handlers).
const (
	appHTTP    = 8080
	directHTTP = 8081
	appGRPC    = 9090
	directGRPC = 9091
)

var payload = bytes.Repeat([]byte("x"), payloadSize)

// benchService is trellis.bench.Bench (bench.proto) without generated code: the request
// and response have the wire form of google.protobuf.BytesValue.
var benchService = grpc.ServiceDesc{
	ServiceName: "trellis.bench.Bench",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Get",
		Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			if err := dec(new(wrapperspb.BytesValue)); err != nil {
				return nil, err
			}
			return &wrapperspb.BytesValue{Value: payload}, nil
		},
	}},
	Metadata: "bench.proto",
}

// runBackend serves the backend until SIGTERM: HTTP answers every request with 1 KiB, gRPC
// answers trellis.bench.Bench/Get with 1 KiB.
func runBackend() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", fmt.Sprint(payloadSize))
		_, _ = w.Write(payload)
	})
	g := grpc.NewServer()
	g.RegisterService(&benchService, struct{}{})
	errc := make(chan error, 4)
	var servers []*http.Server
	for _, port := range []int{appHTTP, directHTTP} {
		s := &http.Server{Addr: fmt.Sprintf(":%d", port), Handler: handler, ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, s)
		go func() { errc <- s.ListenAndServe() }()
	}
	for _, port := range []int{appGRPC, directGRPC} {
		l, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
		if err != nil {
			return fmt.Errorf("listen on %d: %w", port, err)
		}
		go func() { errc <- g.Serve(l) }()
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("backend: %w", err)
		}
	}
	for _, s := range servers {
		_ = s.Close()
	}
	g.Stop()
	return nil
}

// get fetches url once and fails unless the answer is 200 with want bytes (want < 0: any).
func get(url string, want int) error {
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(b))
	}
	if want >= 0 && len(b) != want {
		return fmt.Errorf("GET %s: %d bytes, want %d", url, len(b), want)
	}
	return nil
}

// fetch saves the body of a GET of url (a profile from a sidecar's loopback) to path.
func fetch(url, path string) error {
	return benchio.SaveURL(url, path, 2*time.Minute)
}
