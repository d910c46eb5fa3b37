package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// TCPOptions are the flags of `trellis-demo tcp-hello`.
type TCPOptions struct {
	Addr    string        // host:port
	Line    string        // the line sent after the banner
	Timeout time.Duration // for the whole exchange
}

// DefaultTCPOptions are the flag defaults.
func DefaultTCPOptions() TCPOptions { return TCPOptions{Line: "ping", Timeout: 5 * time.Second} }

// Validate says what is wrong with the options, for a usage error.
func (o TCPOptions) Validate() error {
	if _, _, err := net.SplitHostPort(o.Addr); err != nil || o.Addr == "" {
		return fmt.Errorf("--addr %q: want host:port, e.g. echo:7000", o.Addr)
	}
	if strings.ContainsAny(o.Line, "\r\n") || o.Line == "QUIT" {
		return fmt.Errorf("--line %q: want one line of text other than QUIT", o.Line)
	}
	if o.Timeout <= 0 {
		return fmt.Errorf("--timeout %s: want a positive duration", o.Timeout)
	}
	return nil
}

// TCPResult is what `trellis-demo tcp-hello` prints.
type TCPResult struct {
	Addr string `json:"addr"`
	// Banner is the server's first line without its newline ("HELLO v1 echo-7d9c-x2"),
	// read before this tool sent anything; Version and Pod are its two words.
	Banner  string `json:"banner"`
	Version string `json:"version"`
	Pod     string `json:"pod"`
	// Echo is the answer to the line sent ("ECHO ping").
	Echo string `json:"echo"`
	// Error says which step failed ("" if none).
	Error string `json:"error"`
	// BannerMs is how long the banner took from the start of the connect.
	BannerMs   float64 `json:"bannerMs"`
	DurationMs float64 `json:"durationMs"`
}

// TCPHello connects, reads the banner without sending anything first (a proxy that waits for
// the client to speak stalls here until the timeout), sends o.Line, reads the echo and
// says QUIT.
func TCPHello(ctx context.Context, o TCPOptions) TCPResult {
	start := time.Now()
	r := TCPResult{Addr: o.Addr}
	if err := tcpHello(ctx, o, &r, start); err != nil {
		r.Error = err.Error()
	}
	r.DurationMs = ms(time.Since(start))
	return r
}

func tcpHello(ctx context.Context, o TCPOptions, r *TCPResult, start time.Time) error {
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", o.Addr)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	rd := bufio.NewReader(c)
	banner, err := readLine(rd)
	if err != nil {
		return fmt.Errorf("read the banner: %w", explain(ctx, err))
	}
	r.BannerMs = ms(time.Since(start))
	r.Banner = banner
	if f := strings.Fields(banner); len(f) == 3 && f[0] == "HELLO" {
		r.Version, r.Pod = f[1], f[2]
	} else {
		return fmt.Errorf("the banner %q is not HELLO <version> <pod>", banner)
	}
	if _, err := fmt.Fprintf(c, "%s\n", o.Line); err != nil {
		return fmt.Errorf("send %q: %w", o.Line, explain(ctx, err))
	}
	if r.Echo, err = readLine(rd); err != nil {
		return fmt.Errorf("read the echo: %w", explain(ctx, err))
	}
	if want := "ECHO " + o.Line; r.Echo != want {
		return fmt.Errorf("the echo is %q, want %q", r.Echo, want)
	}
	// Say goodbye; the answer does not matter.
	fmt.Fprint(c, "QUIT\n")
	readLine(rd)
	return nil
}

func readLine(rd *bufio.Reader) (string, error) {
	line, err := rd.ReadString('\n')
	if err != nil {
		if line != "" {
			return "", fmt.Errorf("%w after the partial line %q", err, line)
		}
		return "", err
	}
	return strings.TrimRight(line, "\r\n"), nil
}

// explain turns the deadline set on ctx's end into ctx's error.
func explain(ctx context.Context, err error) error {
	var ne net.Error
	if ctx.Err() != nil && errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}
