// Package app is the trellis-controlplane command: controllers, the xDS server, the CA and
// the injector webhook in one process.
package app

import (
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/trellis-mesh/trellis/controlplane"
	"github.com/trellis-mesh/trellis/internal/logging"
	"github.com/trellis-mesh/trellis/internal/version"
)

// Options configure the control plane.
type Options struct {
	Logging      logging.Options
	ControlPlane controlplane.Options
}

// DefaultOptions returns the control plane's defaults. The namespace defaults to
// $POD_NAMESPACE when set (the chart sets it from the downward API).
func DefaultOptions() *Options {
	cp := controlplane.DefaultOptions()
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		cp.Namespace = ns
	}
	return &Options{Logging: logging.DefaultOptions(), ControlPlane: cp}
}

func (o *Options) addRunFlags(fs *pflag.FlagSet) {
	cp := &o.ControlPlane
	fs.StringVar(&cp.Kubeconfig, "kubeconfig", cp.Kubeconfig, "kubeconfig file; empty: in-cluster config, then $KUBECONFIG")
	fs.StringVar(&cp.Namespace, "namespace", cp.Namespace, "namespace the control plane runs in (its Secret, lease and identity live there)")
	fs.StringVar(&cp.ServiceAccount, "service-account", cp.ServiceAccount, "service account the control plane runs as (its own SPIFFE identity)")
	fs.StringVar(&cp.ServiceName, "service-name", cp.ServiceName, "Service in front of the control plane (DNS names of its serving certificate)")
	fs.StringVar(&cp.TrustDomain, "trust-domain", cp.TrustDomain, "SPIFFE trust domain of the mesh; must match the MeshConfig's")
	fs.StringVar(&cp.CASecret, "ca-secret", cp.CASecret, "Secret holding the CA key pair (ca.crt/ca.key or tls.crt/tls.key)")
	fs.BoolVar(&cp.CAUserSupplied, "ca-user-supplied", cp.CAUserSupplied, "never create the CA Secret: refuse to start until the user (or cert-manager) provides it")
	fs.DurationVar(&cp.CertTTL, "cert-ttl", cp.CertTTL, "lifetime of workload certificates")
	fs.DurationVar(&cp.MaxCertTTL, "max-cert-ttl", cp.MaxCertTTL, "longest lifetime a sidecar may request")
	fs.StringVar(&cp.GRPCAddr, "grpc-addr", cp.GRPCAddr, "listen address of xDS and certificate signing (TLS gRPC)")
	fs.StringVar(&cp.MetricsAddr, "metrics-addr", cp.MetricsAddr, "listen address of Prometheus metrics (/metrics)")
	fs.StringVar(&cp.HealthAddr, "health-addr", cp.HealthAddr, "listen address of /healthz and /readyz")
	fs.BoolVar(&cp.LeaderElection, "leader-elect", cp.LeaderElection, "elect a leader to write status (every replica serves xDS)")
	fs.DurationVar(&cp.Debounce, "debounce", cp.Debounce, "quiet time after a change before proxies' configuration is rebuilt")
	fs.DurationVar(&cp.ShutdownTimeout, "shutdown-timeout", cp.ShutdownTimeout, "how long a stop waits for streams and work to end")
	fs.IntVar(&cp.Injector.Port, "webhook-port", cp.Injector.Port, "port of the sidecar-injection webhook")
	fs.StringVar((*string)(&cp.Injector.FailurePolicy), "webhook-failure-policy", string(cp.Injector.FailurePolicy), "what the apiserver does when the webhook cannot be called: Fail (pods wait; never start outside the mesh) or Ignore")
	fs.BoolVar(&cp.Injector.DetectNativeSidecars, "detect-native-sidecars", cp.Injector.DetectNativeSidecars, "inject regular sidecar containers instead of native sidecars when the cluster is older than Kubernetes 1.29")
	cp.Injector.Config.AddFlags(fs)
}

func newRunCommand(opts *Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the control plane",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := opts.Logging.New(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			cp := opts.ControlPlane
			cp.Logger = log
			return controlplane.Run(cmd.Context(), cp)
		},
	}
	opts.addRunFlags(cmd.Flags())
	return cmd
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
	cmd.AddCommand(newRunCommand(opts), version.NewCommand("trellis-controlplane"))
	return cmd
}
