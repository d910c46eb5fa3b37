package client_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/examples/apps/demo/client"
	"github.com/trellis-mesh/trellis/examples/apps/demo/server"
)

func TestTCPHelloReadsTheBannerThenTheEcho(t *testing.T) {
	s := &server.TCP{Common: server.Common{Info: server.Info{Version: "v1", Pod: "echo-abc"}, Drain: time.Second}}
	o := client.DefaultTCPOptions()
	o.Addr, o.Line = serve(t, s.Serve), "hi there"
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	got := client.TCPHello(context.Background(), o)
	if got.Error != "" || got.Banner != "HELLO v1 echo-abc" || got.Version != "v1" || got.Pod != "echo-abc" || got.Echo != "ECHO hi there" {
		t.Errorf("result %+v", got)
	}
	if got.BannerMs <= 0 || got.DurationMs < got.BannerMs {
		t.Errorf("bannerMs %v, durationMs %v: want 0 < banner <= duration", got.BannerMs, got.DurationMs)
	}
}

// fakeTCP serves each connection with handle on a loopback port.
func fakeTCP(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln := listen(t)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); handle(c) }()
		}
	}()
	return ln.Addr().String()
}

func TestTCPHelloReportsWhatWentWrong(t *testing.T) {
	tests := []struct {
		name    string
		addr    func(t *testing.T) string
		want    string // in Error
		banner  string
		maxTime time.Duration
	}{
		{
			name:    "a refused connection fails at connect",
			addr:    closedAddr,
			want:    "connect:",
			maxTime: 3 * time.Second,
		},
		{
			name: "a server that waits for the client to speak first (a stalling proxy) fails at the banner within the timeout",
			addr: func(t *testing.T) string {
				return fakeTCP(t, func(c net.Conn) {
					bufio.NewReader(c).ReadString('\n')
				})
			},
			want:    "read the banner: context deadline exceeded",
			maxTime: 2 * time.Second,
		},
		{
			name: "a banner that is not HELLO is reported with what came",
			addr: func(t *testing.T) string {
				return fakeTCP(t, func(c net.Conn) { fmt.Fprint(c, "220 smtp.example ESMTP\r\n") })
			},
			want:    `"220 smtp.example ESMTP"`,
			banner:  "220 smtp.example ESMTP",
			maxTime: 2 * time.Second,
		},
		{
			name: "a connection closed after the banner fails at the echo",
			addr: func(t *testing.T) string {
				return fakeTCP(t, func(c net.Conn) { fmt.Fprint(c, "HELLO v1 p\n") })
			},
			want:    "read the echo: EOF",
			banner:  "HELLO v1 p",
			maxTime: 2 * time.Second,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := client.DefaultTCPOptions()
			o.Addr, o.Timeout = tc.addr(t), 500*time.Millisecond
			start := time.Now()
			got := client.TCPHello(context.Background(), o)
			if !strings.Contains(got.Error, tc.want) {
				t.Errorf("error %q, want it to contain %q", got.Error, tc.want)
			}
			if got.Banner != tc.banner {
				t.Errorf("banner %q, want %q", got.Banner, tc.banner)
			}
			if d := time.Since(start); d > tc.maxTime {
				t.Errorf("took %s, want at most %s", d, tc.maxTime)
			}
		})
	}
}
