// Command trellis-controlplane is the Trellis controlplane binary.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/trellis-mesh/trellis/cmd/trellis-controlplane/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := app.NewCommand(app.DefaultOptions()).ExecuteContext(ctx)
	stop()
	if err != nil {
		os.Exit(1)
	}
}
