// Command trellis-demo is the Trellis demo application (examples/shop): HTTP, gRPC and TCP
// servers, and the client tools the end-to-end suite runs in its pods. See `trellis-demo
// --help` and examples/shop/README.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/trellis-mesh/trellis/examples/apps/demo/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := app.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
