// Package app is the `mesh` command-line tool: the operator's interface to a Trellis mesh.
package app

import (
	"github.com/spf13/cobra"

	"github.com/trellis-mesh/trellis/internal/logging"
	"github.com/trellis-mesh/trellis/internal/version"
)

// Options are the flags every mesh subcommand shares.
type Options struct {
	Logging logging.Options
}

// DefaultOptions returns the defaults of the shared flags.
func DefaultOptions() *Options {
	return &Options{Logging: logging.DefaultOptions()}
}

// NewCommand returns the mesh command tree bound to opts.
func NewCommand(opts *Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "mesh",
		Short: "Operate a Trellis service mesh",
		Long: `mesh installs, inspects and operates a Trellis service mesh.

Trellis gives every pod in a labelled namespace a sidecar proxy with mTLS (SPIFFE
identities), retries, timeouts, circuit breaking and SMI traffic splitting.`,
		SilenceUsage:  true,
		SilenceErrors: false,
	}
	opts.Logging.AddFlags(cmd.PersistentFlags())
	cmd.AddCommand(version.NewCommand("mesh"), newInjectCommand(), newInstallCommand(opts), newUninstallCommand(opts))
	return cmd
}
