// Command controlplane is the control-plane benchmark (`make bench-controlplane`): a real
// kube-apiserver (envtest) holding a mesh of a given size, the real trellis-controlplane
// binary watching it, and thousands of simulated sidecars, each with its own certificate
// and ADS stream. It measures how long a TrafficSplit change takes to be acknowledged by
// every proxy, the control plane's CPU for that push, its memory, and the initial connect,
// and writes a Markdown table to test/bench/results/. It asserts nothing: it reports.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

type options struct {
	ControlPlane string // the trellis-controlplane binary

	Namespaces, Services, EndpointsPerService int
	Splits, Policies                          int
	Proxies                                   int

	Rounds         int
	Debounce       time.Duration
	MemoryLimit    string // the container's memory limit the control plane is given, as in the chart
	Settle         time.Duration
	RoundTimeout   time.Duration
	ConnectTimeout time.Duration
	Timeout        time.Duration
	Dialers        int
	Writers        int
	VerifyEvery    int

	Results string // directory; empty: do not write
	Profile string // directory for pprof profiles of the control plane; empty: none
	// ProfileSeconds is how long the CPU profile taken from the first round on lasts.
	ProfileSeconds int
	Note           string // what else ran on the machine, for the header
	Quiet          bool
}

func defaultOptions() options {
	return options{
		ControlPlane: "bin/trellis-controlplane",
		Namespaces:   20, Services: 1000, EndpointsPerService: 10,
		Splits: 100, Policies: 100,
		Proxies:        2000,
		Rounds:         5,
		Debounce:       100 * time.Millisecond,
		MemoryLimit:    "512Mi",
		Settle:         3 * time.Second,
		RoundTimeout:   60 * time.Second,
		ConnectTimeout: 5 * time.Minute,
		Timeout:        30 * time.Minute,
		Dialers:        32,
		Writers:        16,
		VerifyEvery:    50,
		Results:        "test/bench/results",
		ProfileSeconds: 30,
	}
}

func main() {
	opts := defaultOptions()
	cmd := &cobra.Command{
		Use:   "controlplane",
		Short: "Benchmark the Trellis control plane: TrafficSplit propagation to thousands of proxies",
		Long: `Starts kube-apiserver and etcd (envtest; KUBEBUILDER_ASSETS must point at them), writes a
mesh of the given size into it, starts the trellis-controlplane binary against it with a
user-supplied CA, connects simulated proxies (one TLS connection, certificate and ADS stream
each), then changes a TrafficSplit's weights round after round and measures, per proxy, the
time from the update to the proxy's ACK of the new route version. Prints a Markdown report
and writes it to --results. Everything listens on 127.0.0.1; everything started is stopped.`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), opts.Timeout)
			defer cancel()
			return run(ctx, opts, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&opts.ControlPlane, "controlplane", opts.ControlPlane, "trellis-controlplane binary to run (make build)")
	fs.IntVar(&opts.Namespaces, "namespaces", opts.Namespaces, "meshed namespaces the services are spread over")
	fs.IntVar(&opts.Services, "services", opts.Services, "Services, one HTTP port each")
	fs.IntVar(&opts.EndpointsPerService, "endpoints-per-service", opts.EndpointsPerService, "endpoints per Service, each a meshed Pod")
	fs.IntVar(&opts.Splits, "splits", opts.Splits, "TrafficSplits (the first one is the one updated)")
	fs.IntVar(&opts.Policies, "policies", opts.Policies, "TrafficPolicies (retries and timeouts); also one AuthorizationPolicy per namespace when > 0")
	fs.IntVar(&opts.Proxies, "proxies", opts.Proxies, "simulated proxies (at most services × endpoints-per-service)")
	fs.IntVar(&opts.Rounds, "rounds", opts.Rounds, "measured TrafficSplit updates")
	fs.StringVar(&opts.MemoryLimit, "memory-limit", opts.MemoryLimit, "the container memory limit to run the control plane under, as the chart's controlPlane.resources.limits.memory (default) does: it gets GOMEMLIMIT at 90% of it, what it sets itself in a pod (internal/memlimit); empty: none")
	fs.DurationVar(&opts.Debounce, "debounce", opts.Debounce, "the control plane's --debounce (its default is 100ms)")
	fs.DurationVar(&opts.Settle, "settle", opts.Settle, "quiet time between rounds")
	fs.DurationVar(&opts.RoundTimeout, "round-timeout", opts.RoundTimeout, "how long a round waits for every proxy's ACK")
	fs.DurationVar(&opts.ConnectTimeout, "connect-timeout", opts.ConnectTimeout, "how long the initial connect of all proxies may take")
	fs.DurationVar(&opts.Timeout, "timeout", opts.Timeout, "the whole run stops after this")
	fs.IntVar(&opts.Dialers, "dialers", opts.Dialers, "proxies connecting at the same time")
	fs.IntVar(&opts.Writers, "writers", opts.Writers, "concurrent writers to the apiserver during setup")
	fs.IntVar(&opts.VerifyEvery, "verify-every", opts.VerifyEvery, "check the new weights in the route of every n-th proxy (0: never)")
	fs.StringVar(&opts.Results, "results", opts.Results, "directory for controlplane-<date>.md and controlplane-latest.md; empty: print only")
	fs.StringVar(&opts.Profile, "profile", opts.Profile, "run a build of the control plane that serves pprof (test/bench/controlplane/profiled) and save heap profiles after the connect and the rounds and a CPU profile of the rounds into this directory")
	fs.IntVar(&opts.ProfileSeconds, "profile-seconds", opts.ProfileSeconds, "length of the CPU profile, from the first round on")
	fs.StringVar(&opts.Note, "note", opts.Note, "what else ran on the machine, recorded in the report")
	fs.BoolVarP(&opts.Quiet, "quiet", "q", opts.Quiet, "no progress on stderr")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cmd.ExecuteContext(ctx)
	stop()
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			fmt.Fprintln(os.Stderr, "bench-controlplane: the run hit --timeout; raise it or lower --proxies/--services")
		}
		os.Exit(1)
	}
}
