// Package app is the trellis-controlplane command: controllers, the xDS server, the CA and
// the injector webhook in one process.
package app

import (
	"github.com/spf13/cobra"

	"github.com/trellis-mesh/trellis/internal/logging"
	"github.com/trellis-mesh/trellis/internal/version"
)

// Options configure the control plane.
type Options struct {
	Logging logging.Options
}

// DefaultOptions returns the control plane's defaults.
func DefaultOptions() *Options {
	return &Options{Logging: logging.DefaultOptions()}
}

// NewCommand returns the trellis-controlplane command tree bound to opts.
func NewCommand(opts *Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "trellis-controlplane",
		Short: "The Trellis control plane",
		Long: `trellis-controlplane watches Services, EndpointSlices, Pods, TrafficSplits and Trellis
policies, and serves each sidecar its configuration over xDS (gRPC, :15012). It is also the
mesh's certificate authority and runs the sidecar-injection webhook (:15017).`,
		SilenceUsage: true,
	}
	opts.Logging.AddFlags(cmd.PersistentFlags())
	cmd.AddCommand(version.NewCommand("trellis-controlplane"))
	return cmd
}
