// Package netns proves the data path as Kubernetes would run it, without Kubernetes: pods are
// network namespaces on a private bridge, each meshed pod gets `trellis-proxy init` (real
// nftables redirects) and `trellis-proxy run` as UID 1337, the control plane's real xDS
// server and CA run in the test process, and unmodified clients and servers talk through the
// sidecars over real mTLS. The test binary re-executes itself inside a namespace to play the
// apps (TRELLIS_NETNS_HELPER selects which).
package netns

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv("TRELLIS_NETNS_HELPER"); mode != "" {
		os.Exit(helper(mode, os.Args[len(os.Args)-1]))
	}
	os.Exit(m.Run())
}

// helper runs one app role and returns its exit code.
func helper(mode, arg string) int {
	switch mode {
	case "server":
		// An ordinary HTTP server on 8080 that echoes the caller identity the sidecar adds,
		// and a server-first "banner" protocol on 2525 (like SMTP or MySQL).
		go func() {
			_ = http.ListenAndServe(":8080", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, "hello from the server; peer=%s\n", r.Header.Get("x-trellis-peer-identity"))
			}))
		}()
		l, err := net.Listen("tcp", ":2525")
		if err != nil {
			fmt.Println(err)
			return 1
		}
		for {
			c, err := l.Accept()
			if err != nil {
				return 1
			}
			go func() {
				defer c.Close()
				fmt.Fprint(c, "220 banner from the server\r\n")
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	case "get":
		client := &http.Client{Timeout: 10 * time.Second}
		resp, err := client.Get(arg)
		if err != nil {
			fmt.Println("error:", err)
			return 2
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		fmt.Printf("status=%d body=%s", resp.StatusCode, b)
		if resp.StatusCode != http.StatusOK {
			return 3
		}
		return 0
	case "banner":
		// Connect and wait for the server to speak first, sending nothing.
		c, err := net.DialTimeout("tcp", arg, 5*time.Second)
		if err != nil {
			fmt.Println("error:", err)
			return 2
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			fmt.Println("error:", err)
			return 2
		}
		fmt.Print(strings.TrimSpace(line))
		return 0
	}
	fmt.Println("unknown helper mode", mode)
	return 1
}
