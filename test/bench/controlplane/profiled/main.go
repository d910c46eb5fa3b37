// Command profiled is trellis-controlplane with Go's profiler served on
// $TRELLIS_PPROF_ADDR (net/http/pprof), for `bench-controlplane --profile`. The product
// binary does not serve pprof; this is the same control plane otherwise.
package main

import (
	"context"
	"fmt"
	"net/http"
	_ "net/http/pprof" // registers /debug/pprof on http.DefaultServeMux
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/trellis-mesh/trellis/cmd/trellis-controlplane/app"
)

func main() {
	if addr := os.Getenv("TRELLIS_PPROF_ADDR"); addr != "" {
		srv := &http.Server{Addr: addr, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := srv.ListenAndServe(); err != nil {
				fmt.Fprintf(os.Stderr, "pprof on %s: %v\n", addr, err)
			}
		}()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := app.NewCommand(app.DefaultOptions()).ExecuteContext(ctx)
	stop()
	if err != nil {
		os.Exit(1)
	}
}
