package app

import (
	"io"

	"github.com/spf13/cobra"

	"github.com/trellis-mesh/trellis/sidecar/redirect"
)

// initOptions are the flags of `trellis-proxy init`.
type initOptions struct {
	Redirect redirect.Options
	// DryRun prints the ruleset instead of programming it.
	DryRun bool
}

func newInitCommand(opts *Options) *cobra.Command {
	o := initOptions{Redirect: redirect.DefaultOptions()}
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Program the pod's traffic redirect rules and exit",
		Long: `init writes the nftables rules (over netlink, no nft or iptables binary needed) that send
the pod's TCP traffic through the sidecar: outbound connections to 15001, inbound connections
to 15006. Connections of the proxy's own UID, loopback traffic, and the excluded ports and
networks pass untouched. Running it again replaces the rules atomically.

It runs once per pod, in the pod's network namespace, as the injected init container, which
has the NET_ADMIN and NET_RAW capabilities it needs. The injector sets the exclusions from the
pod's trellis.dev/ annotations.`,
		Example: `  trellis-proxy init --outbound-exclude-cidrs=169.254.169.254/32 --inbound-exclude-ports=22
  trellis-proxy init --dry-run`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := opts.Logging.New(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			rules, err := o.Redirect.Rules()
			if err != nil {
				return err
			}
			if o.DryRun {
				_, err := io.WriteString(cmd.OutOrStdout(), redirect.Render(rules))
				return err
			}
			if err := redirect.Apply(rules); err != nil {
				return err
			}
			log.Info("traffic redirect rules programmed",
				"outboundPort", rules.OutboundPort, "inboundPort", rules.InboundPort, "proxyUID", rules.ProxyUID,
				"inboundExcludePorts", rules.InboundExcludePorts, "outboundExcludePorts", rules.OutboundExcludePorts,
				"outboundExcludeCIDRs", rules.OutboundExcludeCIDRs)
			return nil
		},
	}
	o.Redirect.AddFlags(cmd.Flags())
	cmd.Flags().BoolVar(&o.DryRun, "dry-run", o.DryRun, "print the nftables ruleset, as 'nft list ruleset' would show it, and change nothing")
	return cmd
}
