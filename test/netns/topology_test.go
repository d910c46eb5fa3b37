package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// topology is a private bridge with pods (network namespaces) on it. Nothing is routed off
// the bridge: it has no uplink, no NAT, and forwarding is left as it was, so every packet
// stays between the namespaces this test made and the host's address on the bridge.
type topology struct {
	t      *testing.T
	id     string
	bridge string
	prefix netip.Prefix // a /24
	host   netip.Addr   // the bridge's address (the control plane listens here)
	next   netip.Addr
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		msg := "network-namespace tests need root (CI runs them as root); run `sudo go test ./test/netns/`"
		if os.Getenv("TRELLIS_REQUIRE_NETNS") == "1" {
			t.Fatal(msg)
		}
		t.Skip("SKIPPED: " + msg)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("these tests need iproute2's ip: %v", err)
	}
}

func sh(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func newTopology(t *testing.T) *topology {
	t.Helper()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	// 10.231.<n>.0/24: an address range no other test here uses; the bridge has no uplink.
	prefix := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 231, b[0], 0}), 24)
	tp := &topology{t: t, id: id, bridge: "trlbr" + id, prefix: prefix}
	tp.host = prefix.Addr().Next()
	tp.next = tp.host.Next()
	sh(t, "ip", "link", "add", tp.bridge, "type", "bridge")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", tp.bridge).Run() })
	sh(t, "ip", "addr", "add", netip.PrefixFrom(tp.host, 24).String(), "dev", tp.bridge)
	sh(t, "ip", "link", "set", tp.bridge, "up")
	return tp
}

// pod makes a network namespace with one veth on the bridge and a default route through it.
func (tp *topology) pod(name string) (ns string, ip netip.Addr) {
	t := tp.t
	t.Helper()
	ns = "trl-" + name + "-" + tp.id
	ip = tp.next
	tp.next = tp.next.Next()
	host, peer := "trlh"+name[:min(3, len(name))]+tp.id, "trlp"+name[:min(3, len(name))]+tp.id
	sh(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	sh(t, "ip", "link", "add", host, "type", "veth", "peer", "name", peer)
	sh(t, "ip", "link", "set", peer, "netns", ns)
	sh(t, "ip", "link", "set", host, "master", tp.bridge, "up")
	sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
	sh(t, "ip", "-n", ns, "link", "set", peer, "name", "eth0")
	sh(t, "ip", "-n", ns, "addr", "add", netip.PrefixFrom(ip, 24).String(), "dev", "eth0")
	sh(t, "ip", "-n", ns, "link", "set", "eth0", "up")
	sh(t, "ip", "-n", ns, "route", "add", "default", "via", tp.host.String())
	return ns, ip
}

// process is a command running in a namespace; it is stopped by its PID when the test ends.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// start runs argv inside ns as uid (0 for root), with env added.
func start(t *testing.T, name, ns string, uid uint32, env []string, argv ...string) *process {
	t.Helper()
	if uid != 0 {
		// ip netns exec needs root to enter the namespace; setpriv (util-linux) then drops
		// to uid for the program, as the proxy's container does with runAsUser.
		argv = append([]string{"setpriv", fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", uid), "--clear-groups"}, argv...)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Env = append(os.Environ(), env...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, out: out, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
		if t.Failed() {
			t.Logf("--- output of %s ---\n%s", name, out.String())
		}
	})
	return p
}

// runToEnd runs argv in ns and returns its output, failing the test on a non-zero exit.
func runToEnd(t *testing.T, ns string, timeout time.Duration, env []string, argv ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}
