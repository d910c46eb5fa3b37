// Command mesh operates a Trellis service mesh.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/trellis-mesh/trellis/cmd/mesh/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := app.NewCommand(app.DefaultOptions()).ExecuteContext(ctx)
	stop()
	if err != nil {
		os.Exit(1)
	}
}
