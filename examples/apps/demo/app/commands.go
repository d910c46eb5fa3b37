package app

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"time"

	"github.com/spf13/cobra"

	"github.com/trellis-mesh/trellis/examples/apps/demo/client"
	"github.com/trellis-mesh/trellis/examples/apps/demo/server"
)

func newHTTPCommand(stderr io.Writer, frontend bool) *cobra.Command {
	var (
		f   serverFlags
		srv server.HTTP
	)
	cmd := &cobra.Command{
		Use:   "http",
		Short: "Serve HTTP/1.1 and h2c: GET / answers who served and who called (JSON)",
		Long: `Serve HTTP/1.1 and HTTP/2 without TLS (h2c, prior knowledge) on one port.

  GET /healthz        200 ok
  GET /bytes?n=N      N bytes
  GET /headers        the request headers as JSON
  ANY /status/CODE    that status
  ANY /delay/D        the reply after waiting D (250ms, 2s)
  ANY /anything-else  {"service","version","pod","namespace","protocol","peerIdentity","host","path"}

Every response carries x-demo-version. peerIdentity is the x-trellis-peer-identity request
header, which the inbound sidecar sets to the caller's SPIFFE ID.`,
		Args: noArgs,
	}
	service := "demo"
	if frontend {
		service = "frontend"
		cmd.Use = "frontend"
		cmd.Short = "Serve like http, and call a backend once per GET / to show the whole chain"
		cmd.Long += `

As frontend, every reply also carries "backend" (the backend's JSON), "backendStatus",
"backendUpstreamIdentity" (the x-trellis-upstream-identity header of the backend's answer:
its SPIFFE ID as this pod's sidecar verified it) and, if the call failed, "backendError"
with status 502.`
		cmd.Flags().StringVar(&srv.Backend, "backend", "http://backend:8080/", "URL the frontend calls for every reply")
		cmd.Flags().BoolVar(&srv.BackendH2C, "backend-h2c", false, "call the backend over h2c instead of HTTP/1.1")
		cmd.Flags().DurationVar(&srv.BackendTimeout, "backend-timeout", 5*time.Second, "timeout of the call to the backend")
	}
	f.add(cmd.Flags(), 8080, service)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, err := f.common(stderr)
		if err != nil {
			return err
		}
		if frontend {
			if u, err := url.Parse(srv.Backend); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return fmt.Errorf("--backend %q: want an absolute http:// URL, e.g. http://backend:8080/", srv.Backend)
			}
			if srv.BackendTimeout <= 0 {
				return fmt.Errorf("--backend-timeout %s: want a positive duration", srv.BackendTimeout)
			}
		}
		srv.Common = c
		return f.serve(cmd.Context(), srv.Serve)
	}
	return cmd
}

func newGRPCCommand(stderr io.Writer) *cobra.Command {
	var f serverFlags
	cmd := &cobra.Command{
		Use:   "grpc",
		Short: "Serve gRPC demo.Echo (unary Hello, bidirectional Chat) and grpc.health.v1",
		Long: `Serve the gRPC service demo.Echo and the standard health service.

  demo.Echo/Hello(StringValue) returns (Struct)
  demo.Echo/Chat(stream StringValue) returns (stream Struct)

Each reply Struct has message, seq, service, version, pod, namespace and peerIdentity (the
x-trellis-peer-identity request metadata the inbound sidecar sets).`,
		Args: noArgs,
	}
	f.add(cmd.Flags(), 9090, "greeter")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, err := f.common(stderr)
		if err != nil {
			return err
		}
		srv := &server.GRPC{Common: c}
		return f.serve(cmd.Context(), srv.Serve)
	}
	return cmd
}

func newTCPCommand(stderr io.Writer) *cobra.Command {
	var f serverFlags
	cmd := &cobra.Command{
		Use:   "tcp",
		Short: "Serve a server-first line protocol: HELLO banner, then ECHO each line; QUIT closes",
		Long: `Serve a line protocol in which the server speaks first, like SMTP or MySQL:

  server: HELLO <version> <pod>      (sent on connect, before anything is read)
  client: anything                    server: ECHO anything
  client: QUIT                        server: BYE, and closes`,
		Args: noArgs,
	}
	f.add(cmd.Flags(), 7000, "echo")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, err := f.common(stderr)
		if err != nil {
			return err
		}
		srv := &server.TCP{Common: c}
		return f.serve(cmd.Context(), func(ctx context.Context, ln net.Listener) error { return srv.Serve(ctx, ln) })
	}
	return cmd
}

func newGetCommand(stdout io.Writer) *cobra.Command {
	o := client.DefaultGetOptions()
	cmd := &cobra.Command{
		Use:   "get --url URL [--n 2000] [--concurrency 8] [--h2c] [--header k=v]... [--timeout 5s]",
		Short: "Make N GET requests and print one JSON object counting statuses, versions and identities",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Validate(); err != nil {
				return err
			}
			return printJSON(stdout, client.Get(cmd.Context(), o))
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.URL, "url", "", "URL to GET (required)")
	fs.IntVar(&o.N, "n", o.N, "requests in all")
	fs.IntVar(&o.Concurrency, "concurrency", o.Concurrency, "requests in flight at once")
	fs.BoolVar(&o.H2C, "h2c", false, "HTTP/2 without TLS (prior knowledge) instead of HTTP/1.1")
	fs.StringArrayVar(&o.Headers, "header", nil, "request header name=value (repeatable; host=NAME sets the Host)")
	fs.DurationVar(&o.Timeout, "timeout", o.Timeout, "timeout of each request")
	return cmd
}

func newGRPCChatCommand(stdout io.Writer, unary bool) *cobra.Command {
	o := client.DefaultGRPCOptions()
	cmd := &cobra.Command{
		Use:   "grpc-chat --addr HOST:PORT [--messages 10] [--header k=v]... [--timeout 10s]",
		Short: "Send N messages on one demo.Echo/Chat stream and print one JSON object",
		Args:  noArgs,
	}
	run := client.GRPCChat
	fs := cmd.Flags()
	if unary {
		cmd.Use = "grpc-hello --addr HOST:PORT [--n 10] [--header k=v]... [--timeout 10s]"
		cmd.Short = "Make N unary demo.Echo/Hello calls on one connection and print one JSON object"
		run = client.GRPCHello
		fs.IntVar(&o.Messages, "n", o.Messages, "calls to make")
		fs.DurationVar(&o.Timeout, "timeout", o.Timeout, "timeout of each call")
	} else {
		fs.IntVar(&o.Messages, "messages", o.Messages, "messages to send, one at a time, each waiting for its echo")
		fs.DurationVar(&o.Timeout, "timeout", o.Timeout, "timeout of the whole stream")
	}
	fs.StringVar(&o.Addr, "addr", "", "server host:port, e.g. greeter:9090 (required)")
	fs.StringArrayVar(&o.Headers, "header", nil, "request metadata name=value (repeatable)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := o.Validate(); err != nil {
			return err
		}
		return printJSON(stdout, run(cmd.Context(), o))
	}
	return cmd
}

func newTCPHelloCommand(stdout io.Writer) *cobra.Command {
	o := client.DefaultTCPOptions()
	cmd := &cobra.Command{
		Use:   "tcp-hello --addr HOST:PORT [--line ping] [--timeout 5s]",
		Short: "Connect, read the server's banner before sending anything, send a line, read its echo",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Validate(); err != nil {
				return err
			}
			return printJSON(stdout, client.TCPHello(cmd.Context(), o))
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.Addr, "addr", "", "server host:port, e.g. echo:7000 (required)")
	fs.StringVar(&o.Line, "line", o.Line, "the line to send after the banner")
	fs.DurationVar(&o.Timeout, "timeout", o.Timeout, "timeout of the whole exchange")
	return cmd
}

func newJobCommand(stdout io.Writer) *cobra.Command {
	o := client.DefaultJobOptions()
	cmd := &cobra.Command{
		Use:   "job --url URL [--n 5] [--wait 0s] [--timeout 5s]",
		Short: "Make N GET requests one by one; exit 0 only if all answered 2xx (for a Kubernetes Job)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Validate(); err != nil {
				return err
			}
			r := client.Job(cmd.Context(), o)
			if err := printJSON(stdout, r); err != nil {
				return err
			}
			if !r.OK {
				return &failure{err: errJobFailed, silent: true}
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.URL, "url", "", "URL to GET (required)")
	fs.IntVar(&o.N, "n", o.N, "requests that must all succeed")
	fs.DurationVar(&o.Wait, "wait", 0, "first poll the URL once a second until it answers 2xx, for at most this long")
	fs.DurationVar(&o.Timeout, "timeout", o.Timeout, "timeout of each request")
	return cmd
}
