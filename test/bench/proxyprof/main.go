// Command proxyprof is trellis-proxy with Go's profiler: the same command tree, plus
// net/http/pprof on $TRELLIS_BENCH_PPROF_ADDR (keep it on loopback) when that is set. The
// data-plane benchmark uses it for `run.sh --profile`; it is never shipped.
package main

import (
	"context"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/trellis-mesh/trellis/cmd/trellis-proxy/app"
)

func main() {
	if addr := os.Getenv("TRELLIS_BENCH_PPROF_ADDR"); addr != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		s := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = s.ListenAndServe() }()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := app.NewCommand(app.DefaultOptions()).ExecuteContext(ctx)
	stop()
	if err != nil {
		os.Exit(1)
	}
}
