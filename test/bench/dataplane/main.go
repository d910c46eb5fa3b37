// Command dataplane is the data-plane benchmark behind `make bench` (test/bench/run.sh runs
// it as root). In one run, interleaved round by round, it drives the same load against:
//
//	direct   the backend, from the client namespace;
//	trellis  client sidecar → mTLS (HTTP/2) → server sidecar → backend, with the real
//	         nftables redirects, SVIDs from the real CA and configuration over real xDS;
//	nginx    client-side nginx → mTLS → server-side nginx → backend;
//	haproxy  client-side HAProxy → mTLS → server-side HAProxy → backend.
//
// The load generator and the client-side proxies run in a client network namespace, the
// server-side proxies and the backend in a server namespace, on a private bridge with no
// uplink, each side pinned to its own CPU. It writes a Markdown report (see report.go) and
// a JSON record of every run. The approach is test/netns's (docs/sidecar.md), as a program.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// options are the benchmark's flags.
type options struct {
	ProxyBin, FortioBin, GhzBin string
	WorkDir, CleanupScript      string
	ResultsDir                  string
	Targets                     []string

	Rounds   int
	Duration time.Duration
	QPS      int
	Conns    int
	Warmup   time.Duration

	SatDuration time.Duration
	SatConns    int

	GRPCDuration time.Duration
	GRPCRPS      int
	GRPCConns    int

	ClientCPUs, ServerCPUs string
	Deadline               time.Duration
	Note                   string
	ProfileDir             string
}

func defaultOptions() options {
	return options{
		Targets: []string{"direct", "trellis", "nginx", "haproxy"},
		Rounds:  3, Duration: 30 * time.Second, QPS: 1000, Conns: 4, Warmup: 3 * time.Second,
		SatDuration: 10 * time.Second, SatConns: 16,
		GRPCDuration: 15 * time.Second, GRPCRPS: 1000, GRPCConns: 4,
		ClientCPUs: "0", ServerCPUs: "1",
		Deadline:   20 * time.Minute,
		ResultsDir: "test/bench/results",
	}
}

func newCommand() *cobra.Command {
	o := defaultOptions()
	root := &cobra.Command{
		Use:          "dataplane",
		Short:        "Benchmark the Trellis sidecar pair against nginx and HAProxy pairs and a direct connection",
		SilenceUsage: true,
	}
	run := &cobra.Command{
		Use:   "run",
		Short: "Run the benchmark (as root) and write the report",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
			defer stop()
			ctx, cancel := context.WithTimeout(ctx, o.Deadline)
			defer cancel()
			return runBench(ctx, o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fs := run.Flags()
	fs.StringVar(&o.ProxyBin, "proxy", "", "trellis-proxy binary (readable and executable by UID 1337)")
	fs.StringVar(&o.FortioBin, "fortio", "fortio", "fortio binary (fortio.org/fortio@v1.68.2)")
	fs.StringVar(&o.GhzBin, "ghz", "ghz", "ghz binary (github.com/bojand/ghz/cmd/ghz@v0.120.0); empty skips the gRPC run")
	fs.StringVar(&o.WorkDir, "work-dir", "", "scratch directory for configs, certificates and raw results (default: a new temporary one)")
	fs.StringVar(&o.CleanupScript, "cleanup-script", "", "file to record undo commands in, for a trap to run if this process is killed")
	fs.StringVar(&o.ResultsDir, "results", o.ResultsDir, "where dataplane-<date>.md, dataplane-latest.md and the JSON record go")
	fs.StringSliceVar(&o.Targets, "targets", o.Targets, "targets to run, of direct, trellis, nginx, haproxy (direct is always run: the others are measured against it)")
	fs.IntVar(&o.Rounds, "rounds", o.Rounds, "fixed-rate rounds; each round runs every target once, in a rotating order")
	fs.DurationVar(&o.Duration, "duration", o.Duration, "length of one fixed-rate run")
	fs.IntVar(&o.QPS, "qps", o.QPS, "fixed request rate")
	fs.IntVar(&o.Conns, "conns", o.Conns, "connections of the fixed-rate runs")
	fs.DurationVar(&o.Warmup, "warmup", o.Warmup, "unmeasured run per target before the first round")
	fs.DurationVar(&o.SatDuration, "sat-duration", o.SatDuration, "length of each saturation (max rate) run; 0 skips them")
	fs.IntVar(&o.SatConns, "sat-conns", o.SatConns, "connections of the saturation runs")
	fs.DurationVar(&o.GRPCDuration, "grpc-duration", o.GRPCDuration, "length of each gRPC run; 0 skips them")
	fs.IntVar(&o.GRPCRPS, "grpc-rps", o.GRPCRPS, "gRPC request rate")
	fs.IntVar(&o.GRPCConns, "grpc-conns", o.GRPCConns, "gRPC connections (one worker each)")
	fs.StringVar(&o.ClientCPUs, "client-cpus", o.ClientCPUs, "CPUs (taskset list) of the client namespace: load generator and client-side proxies; empty: not pinned")
	fs.StringVar(&o.ServerCPUs, "server-cpus", o.ServerCPUs, "CPUs of the server namespace: server-side proxies and backend; empty: not pinned")
	fs.DurationVar(&o.Deadline, "deadline", o.Deadline, "stop everything after this long, whatever is left")
	fs.StringVar(&o.Note, "note", "", "free text for the report (e.g. what else the machine was running)")
	fs.StringVar(&o.ProfileDir, "profile-dir", "", "with a trellis-proxy built from test/bench/proxyprof: write CPU and heap profiles of both sidecars here, taken during the last fixed-rate trellis run")

	root.AddCommand(run,
		&cobra.Command{
			Use: "backend", Short: "Serve the benchmark's backend (the harness runs it in the server namespace)", Hidden: true,
			Args: cobra.NoArgs,
			RunE: func(*cobra.Command, []string) error { return runBackend() },
		},
		&cobra.Command{
			Use: "get URL [BYTES]", Short: "GET a URL once; fail unless 200 (with BYTES bytes)", Hidden: true,
			Args: cobra.RangeArgs(1, 2),
			RunE: func(_ *cobra.Command, args []string) error {
				want := -1
				if len(args) == 2 {
					n, err := strconv.Atoi(args[1])
					if err != nil {
						return fmt.Errorf("BYTES %q: %w", args[1], err)
					}
					want = n
				}
				return get(args[0], want)
			},
		},
		&cobra.Command{
			Use: "fetch URL FILE", Short: "GET a URL into FILE", Hidden: true,
			Args: cobra.ExactArgs(2),
			RunE: func(_ *cobra.Command, args []string) error { return fetch(args[0], args[1]) },
		},
	)
	return root
}

func (o options) validate() error {
	var errs []error
	if o.ProxyBin == "" {
		errs = append(errs, errors.New("--proxy is required (test/bench/run.sh builds it)"))
	}
	for _, t := range o.Targets {
		switch t {
		case "direct", "trellis", "nginx", "haproxy":
		default:
			errs = append(errs, fmt.Errorf("--targets: unknown target %q (use direct, trellis, nginx, haproxy)", t))
		}
	}
	if o.Rounds < 1 || o.Duration <= 0 || o.QPS <= 0 || o.Conns <= 0 {
		errs = append(errs, errors.New("--rounds, --duration, --qps and --conns must be positive"))
	}
	if os.Geteuid() != 0 {
		errs = append(errs, errors.New("the benchmark makes network namespaces and nftables rules: run it as root (make bench does)"))
	}
	return errors.Join(errs...)
}

// cpuCount is the number of CPUs in a taskset list such as "0", "0-1" or "0,2"; 0 if empty.
func cpuCount(list string) int {
	n := 0
	for part := range strings.SplitSeq(list, ",") {
		if part == "" {
			continue
		}
		lo, hi, found := strings.Cut(part, "-")
		a, _ := strconv.Atoi(lo)
		b := a
		if found {
			b, _ = strconv.Atoi(hi)
		}
		n += b - a + 1
	}
	return n
}

func main() {
	if err := newCommand().Execute(); err != nil {
		os.Exit(1)
	}
}
