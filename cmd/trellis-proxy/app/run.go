package app

import (
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/trellis-mesh/trellis/sidecar/agent"
)

// runOptions are the sidecar's flags; the pod's facts default to the downward-API
// environment the injector sets (POD_NAME, POD_NAMESPACE, SERVICE_ACCOUNT).
func runOptions() agent.Options {
	o := agent.DefaultOptions()
	o.PodName = os.Getenv("POD_NAME")
	o.PodNamespace = os.Getenv("POD_NAMESPACE")
	o.ServiceAccount = os.Getenv("SERVICE_ACCOUNT")
	o.AppProbes = os.Getenv("TRELLIS_APP_PROBES") // the injector fills it from trellis.dev/original-probes
	if td := os.Getenv("TRELLIS_TRUST_DOMAIN"); td != "" {
		o.TrustDomain = td
	}
	return o
}

func addRunFlags(fs *pflag.FlagSet, o *agent.Options) {
	fs.StringVar(&o.PodName, "pod-name", o.PodName, "this pod's name ($POD_NAME); with the namespace it is the proxy's xDS node")
	fs.StringVar(&o.PodNamespace, "pod-namespace", o.PodNamespace, "this pod's namespace ($POD_NAMESPACE)")
	fs.StringVar(&o.ServiceAccount, "service-account", o.ServiceAccount, "this pod's service account ($SERVICE_ACCOUNT); names the SPIFFE identity requested")
	fs.StringVar(&o.TrustDomain, "trust-domain", o.TrustDomain, "SPIFFE trust domain ($TRELLIS_TRUST_DOMAIN)")
	fs.StringVar(&o.ControlPlaneAddr, "control-plane-addr", o.ControlPlaneAddr, "address of the control plane's xDS and certificate service")
	fs.StringVar(&o.ControlPlaneServerName, "control-plane-server-name", o.ControlPlaneServerName, "DNS name the control plane's certificate must carry")
	fs.StringVar(&o.ControlPlaneIdentity, "control-plane-identity", o.ControlPlaneIdentity, "SPIFFE ID the control plane must present on the xDS stream (default spiffe://<trust-domain>/ns/trellis-system/sa/trellis-controlplane)")
	fs.StringVar(&o.TokenPath, "token-path", o.TokenPath, "projected ServiceAccount token for audience trellis-ca")
	fs.StringVar(&o.RootCertPath, "root-cert-path", o.RootCertPath, "PEM trust bundle of the mesh CA (ConfigMap trellis-ca-root-cert)")
	fs.StringVar(&o.OutboundAddr, "outbound-addr", o.OutboundAddr, "where redirected outbound traffic arrives")
	fs.StringVar(&o.InboundAddr, "inbound-addr", o.InboundAddr, "where redirected inbound traffic arrives")
	fs.StringVar(&o.AdminAddr, "admin-addr", o.AdminAddr, "admin API (keep it on loopback)")
	fs.StringVar(&o.StatusAddr, "status-addr", o.StatusAddr, "kubelet probes (/healthz/ready) and metrics")
	fs.DurationVar(&o.DrainDuration, "drain-duration", o.DrainDuration, "how long in-flight requests may finish after SIGTERM")
}

func newRunCommand(opts *Options) *cobra.Command {
	o := runOptions()
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the sidecar proxy",
		Long: `run obtains the pod's SPIFFE certificate from the control plane, receives its configuration
over xDS, and proxies the pod's redirected traffic: outbound on :15001, inbound on :15006.
SIGTERM stops accepting, lets in-flight requests finish for --drain-duration, and exits.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := opts.Logging.New(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			o.Logger = log
			return agent.Run(cmd.Context(), o)
		},
	}
	addRunFlags(cmd.Flags(), &o)
	return cmd
}
