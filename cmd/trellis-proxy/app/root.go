// Package app is the trellis-proxy command: the sidecar (`run`) and its traffic redirect
// setup (`init`).
package app

import (
	"github.com/spf13/cobra"

	"github.com/trellis-mesh/trellis/internal/logging"
	"github.com/trellis-mesh/trellis/internal/version"
)

// Options are the flags every trellis-proxy subcommand shares.
type Options struct {
	Logging logging.Options
}

// DefaultOptions returns the proxy's defaults.
func DefaultOptions() *Options {
	return &Options{Logging: logging.DefaultOptions()}
}

// NewCommand returns the trellis-proxy command tree bound to opts.
func NewCommand(opts *Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "trellis-proxy",
		Short: "The Trellis sidecar proxy",
		Long: `trellis-proxy is the sidecar Trellis injects into every meshed pod. It intercepts the
pod's TCP traffic, speaks mTLS with other sidecars using SPIFFE identities, and applies the
routing, retry, timeout and authorization configuration it receives from the control plane.`,
		SilenceUsage: true,
	}
	opts.Logging.AddFlags(cmd.PersistentFlags())
	cmd.AddCommand(newRunCommand(opts), version.NewCommand("trellis-proxy"))
	cmd.AddCommand(newInitCommand(opts))
	return cmd
}
