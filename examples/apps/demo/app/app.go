// Package app is the trellis-demo command: the demo application's servers (http, frontend,
// grpc, tcp) and the client tools the end-to-end suite runs in its pods (get, grpc-chat,
// grpc-hello, tcp-hello, job). Each tool prints one JSON object on stdout and exits 0 even
// when requests fail (the failures are counted in the JSON), except job, which exits 1
// unless every request succeeded. Usage errors exit 2.
package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/trellis-mesh/trellis/examples/apps/demo/server"
)

// Exit codes.
const (
	ExitOK      = 0
	ExitFailure = 1 // a server could not serve, or job saw a failed request
	ExitUsage   = 2 // bad flags or arguments
)

// failure is an error that is not the caller's fault. silent failures have already been
// reported on stdout.
type failure struct {
	err    error
	silent bool
}

func (f *failure) Error() string { return f.err.Error() }
func (f *failure) Unwrap() error { return f.err }

// Main runs trellis-demo with args (without the program name) and returns the exit code.
// ctx ending (SIGTERM) stops servers gracefully and tools early.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd := NewCommand(stdout, stderr)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	if f, ok := errors.AsType[*failure](err); ok {
		if !f.silent {
			fmt.Fprintln(stderr, "trellis-demo:", f.err)
		}
		return ExitFailure
	}
	fmt.Fprintf(stderr, "trellis-demo: %v\nRun 'trellis-demo --help' for usage.\n", err)
	return ExitUsage
}

// NewCommand returns the command tree, printing results on stdout and logs on stderr.
func NewCommand(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "trellis-demo",
		Short: "The Trellis demo application: HTTP, gRPC and TCP servers, and the client tools the e2e suite runs",
		Long: `trellis-demo is the demo application of the Trellis service mesh (examples/shop).

Servers report who they are (--service, --version, $POD_NAME, $POD_NAMESPACE) and who
called them (the x-trellis-peer-identity header the inbound sidecar sets). Client tools
print one JSON object on stdout; request failures are counted in it, not in the exit code
(except job). Usage errors exit 2.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.CompletionOptions.DisableDefaultCmd = true
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return err })
	root.AddCommand(
		newHTTPCommand(stderr, false),
		newHTTPCommand(stderr, true),
		newGRPCCommand(stderr),
		newTCPCommand(stderr),
		newGetCommand(stdout),
		newGRPCChatCommand(stdout, false),
		newGRPCChatCommand(stdout, true),
		newTCPHelloCommand(stdout),
		newJobCommand(stdout),
	)
	return root
}

// serverFlags are the flags every server has.
type serverFlags struct {
	port    int
	service string
	version string
	verbose bool
	drain   time.Duration
}

func (f *serverFlags) add(fs *pflag.FlagSet, port int, service string) {
	f.port, f.service, f.version, f.drain = port, service, "v1", 10*time.Second
	fs.IntVar(&f.port, "port", f.port, "TCP port to listen on (all addresses)")
	fs.StringVar(&f.service, "service", f.service, "service name the server reports")
	fs.StringVar(&f.version, "version", f.version, "version the server reports (x-demo-version, the TCP banner, gRPC replies)")
	fs.BoolVar(&f.verbose, "verbose", false, "log one line per request or connection on stderr")
	fs.DurationVar(&f.drain, "drain", f.drain, "how long open requests and connections get after SIGTERM")
}

func (f *serverFlags) common(stderr io.Writer) (server.Common, error) {
	if f.port < 1 || f.port > 65535 {
		return server.Common{}, fmt.Errorf("--port %d: want a port from 1 to 65535", f.port)
	}
	if f.drain <= 0 {
		return server.Common{}, fmt.Errorf("--drain %s: want a positive duration", f.drain)
	}
	return server.Common{
		Info:    server.Info{Service: f.service, Version: f.version, Pod: podName(), Namespace: podNamespace()},
		Log:     slog.New(slog.NewTextHandler(stderr, nil)),
		Verbose: f.verbose,
		Drain:   f.drain,
	}, nil
}

// serve listens on the port and runs serve until ctx ends.
func (f *serverFlags) serve(ctx context.Context, run func(context.Context, net.Listener) error) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", ":"+strconv.Itoa(f.port))
	if err != nil {
		return &failure{err: fmt.Errorf("listen on port %d: %w", f.port, err)}
	}
	defer ln.Close()
	if err := run(ctx, ln); err != nil {
		return &failure{err: err}
	}
	return nil
}

// podName is $POD_NAME (set from the downward API in the manifests), else the host name.
func podName() string {
	if p := os.Getenv("POD_NAME"); p != "" {
		return p
	}
	h, _ := os.Hostname()
	return h
}

// podNamespace is $POD_NAMESPACE, else the namespace of the mounted ServiceAccount token.
func podNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// printJSON writes v as one line of JSON.
func printJSON(w io.Writer, v any) error {
	if err := json.NewEncoder(w).Encode(v); err != nil {
		return &failure{err: fmt.Errorf("print the result: %w", err)}
	}
	return nil
}

// noArgs refuses positional arguments: every input is a flag.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("%s takes no arguments, only flags; got %q", cmd.CommandPath(), args)
	}
	return nil
}

var errJobFailed = errors.New("not every request succeeded")
