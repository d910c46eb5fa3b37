package redirect

// Test scaffolding for the network-namespace tests: two namespaces joined by a veth pair,
// code run inside a namespace from a goroutine locked to an OS thread that joined it, TCP
// servers that tell a client where it landed, and a copy of the test binary run as the proxy's
// UID for the tests that need another user.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// helperEnv selects a helper mode when the test binary runs as a child process.
	helperEnv = "TRELLIS_REDIRECT_TEST_HELPER"
	// helperAddrEnv is the address the "dial" helper connects to.
	helperAddrEnv = "TRELLIS_REDIRECT_TEST_ADDR"
	// requireEnv turns the network-namespace tests' skips into failures (for CI).
	requireEnv = "TRELLIS_REQUIRE_NETNS"

	dialTimeout = 3 * time.Second
	ioTimeout   = 5 * time.Second
	childLimit  = 20 * time.Second
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode))
	}
	code := m.Run()
	if reason := skippedNetns.Load(); reason != nil {
		fmt.Fprintf(os.Stderr, "\n!!! %s\n!!! the nftables redirect was NOT tested against a kernel\n\n", *reason)
	}
	removeHelperBinary()
	os.Exit(code)
}

var skippedNetns atomic.Pointer[string]

// requireNetns skips the test, loudly, unless it can create network namespaces; with
// TRELLIS_REQUIRE_NETNS set it fails instead.
func requireNetns(t *testing.T) {
	t.Helper()
	reason := ""
	switch {
	case os.Geteuid() != 0:
		reason = "SKIPPED: needs root to create network namespaces (run go test as root; CI does)"
	default:
		if _, err := exec.LookPath("ip"); err != nil {
			reason = "SKIPPED: needs the ip command (iproute2) to create network namespaces"
		}
	}
	if reason == "" {
		return
	}
	skipOrFail(t, reason)
}

// skipOrFail skips with reason, or fails when TRELLIS_REQUIRE_NETNS says these tests must run.
func skipOrFail(t *testing.T, reason string) {
	t.Helper()
	if os.Getenv(requireEnv) != "" {
		t.Fatalf("%s; %s is set, so this is a failure", strings.TrimPrefix(reason, "SKIPPED: "), requireEnv)
	}
	skippedNetns.Store(&reason)
	t.Skip(reason)
}

// netns is a named network namespace (/run/netns/<name>) the test created.
type netns struct {
	name string
	file *os.File // keeps the namespace open for setns
	ino  uint64   // identifies the namespace
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func ipCommand(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func mustIP(t *testing.T, args ...string) {
	t.Helper()
	if err := ipCommand(args...); err != nil {
		t.Fatal(err)
	}
}

// newNetns creates a namespace that t.Cleanup deletes, whatever the test's outcome.
func newNetns(t *testing.T, name string) *netns {
	t.Helper()
	if err := ipCommand("netns", "add", name); err != nil {
		skipOrFail(t, fmt.Sprintf("SKIPPED: cannot create network namespaces (%v)", err))
	}
	t.Cleanup(func() {
		if err := ipCommand("netns", "del", name); err != nil {
			t.Errorf("delete network namespace: %v", err)
		}
	})
	f, err := os.Open(filepath.Join("/run/netns", name))
	if err != nil {
		t.Fatalf("open network namespace %s: %v", name, err)
	}
	t.Cleanup(func() { _ = f.Close() })
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatalf("stat network namespace %s: %v", name, err)
	}
	return &netns{name: name, file: f, ino: st.Ino}
}

// run calls fn in the namespace, on a goroutine locked to an OS thread that joined it. The
// thread is never unlocked, so the runtime discards it when fn returns: no other goroutine
// ever runs in the namespace by accident. Sockets fn creates stay in the namespace for their
// whole life, whichever goroutine uses them later; a child process fn starts is born in it.
func (n *netns) run(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(int(n.file.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter network namespace %s: %w", n.name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func (n *netns) mustRun(t *testing.T, fn func() error) {
	t.Helper()
	if err := n.run(fn); err != nil {
		t.Fatal(err)
	}
}

// topology is namespace A (the pod, where the rules go) and namespace B (a peer) joined by
// a veth pair. B has a second address, used as an excluded destination.
type topology struct {
	a, b *netns
	v4   hosts
	v6   hosts
	// noIPv6 says why the veth has no IPv6 addresses; "" when it has.
	noIPv6 string
}

// hosts are the addresses of one IP version.
type hosts struct {
	a, b, bExcluded netip.Addr
	// excluded is an outbound-excluded network holding bExcluded but not b. Its length is
	// not a multiple of 8, so the rule needs a mask.
	excluded netip.Prefix
	loopback netip.Addr
}

// newTopology builds A and B on 10.x.y.0/24 (x, y random; the namespaces have their own
// routing, so nothing can clash with the host's) and, when the kernel allows, fdXX::/64.
func newTopology(t *testing.T) *topology {
	t.Helper()
	requireNetns(t)
	suffix := randomHex(3)
	topo := &topology{
		a: newNetns(t, "trellis-rt-"+suffix+"-a"),
		b: newNetns(t, "trellis-rt-"+suffix+"-b"),
	}
	r := []byte(randomHex(8))
	x, y := 200+int(r[0])%50, int(r[1])
	net4 := fmt.Sprintf("10.%d.%d.", x, y)
	topo.v4 = hosts{
		a: netip.MustParseAddr(net4 + "1"), b: netip.MustParseAddr(net4 + "2"),
		bExcluded: netip.MustParseAddr(net4 + "130"),
		excluded:  netip.MustParsePrefix(net4 + "128/25"),
		loopback:  netip.MustParseAddr("127.0.0.1"),
	}
	net6 := "fd" + randomHex(1) + ":" + randomHex(2) + ":" + randomHex(2) + ":1::"
	topo.v6 = hosts{
		a: netip.MustParseAddr(net6 + "1"), b: netip.MustParseAddr(net6 + "2"),
		bExcluded: netip.MustParseAddr(net6 + "8001"),
		excluded:  netip.MustParsePrefix(net6 + "8000/113"),
		loopback:  netip.MustParseAddr("::1"),
	}

	a, b := topo.a.name, topo.b.name
	mustIP(t, "link", "add", "veth-a", "netns", a, "type", "veth", "peer", "name", "veth-b", "netns", b)
	for _, ns := range []string{a, b} {
		mustIP(t, "-n", ns, "link", "set", "lo", "up")
	}
	// Links up before the addresses: with the addresses added to the down veth, the first
	// IPv6 connection from A to B waited a second (a neighbour solicitation retransmitted).
	mustIP(t, "-n", a, "link", "set", "veth-a", "up")
	mustIP(t, "-n", b, "link", "set", "veth-b", "up")
	mustIP(t, "-n", a, "addr", "add", topo.v4.a.String()+"/24", "dev", "veth-a")
	mustIP(t, "-n", b, "addr", "add", topo.v4.b.String()+"/24", "dev", "veth-b")
	mustIP(t, "-n", b, "addr", "add", topo.v4.bExcluded.String()+"/24", "dev", "veth-b")
	for _, step := range [][]string{
		{"-n", a, "-6", "addr", "add", topo.v6.a.String() + "/64", "dev", "veth-a", "nodad"},
		{"-n", b, "-6", "addr", "add", topo.v6.b.String() + "/64", "dev", "veth-b", "nodad"},
		{"-n", b, "-6", "addr", "add", topo.v6.bExcluded.String() + "/64", "dev", "veth-b", "nodad"},
	} {
		if err := ipCommand(step...); err != nil {
			topo.noIPv6 = err.Error()
			break
		}
	}
	return topo
}

// versions are the IP versions the topology can test.
type ipVersion struct {
	name  string
	hosts func(*topology) hosts
}

var ipVersions = []ipVersion{
	{"IPv4", func(topo *topology) hosts { return topo.v4 }},
	{"IPv6", func(topo *topology) hosts { return topo.v6 }},
}

func (v ipVersion) skipUnavailable(t *testing.T, topo *topology) {
	t.Helper()
	if v.name == "IPv6" && topo.noIPv6 != "" {
		t.Skipf("SKIPPED: IPv6 is unavailable in the test namespaces, so the IPv6 redirect is not tested: %s", topo.noIPv6)
	}
}

// landing is what a test server tells a client about the connection it accepted.
type landing struct {
	Listener string `json:"listener"`
	Local    string `json:"local"`
	Remote   string `json:"remote"`
	// Mapped says the connection is IPv4 on an IPv6 socket (a dual-stack listener).
	Mapped bool `json:"mapped,omitempty"`
	// Orig is OriginalDestination's answer, for capture listeners.
	Orig    string `json:"orig,omitempty"`
	OrigErr string `json:"origErr,omitempty"`
}

// serve starts a server in ns on network and addr, named name, answering every connection with a
// landing; capture servers also report the original destination, like the proxy's capture
// listeners. t.Cleanup stops it.
func serve(t *testing.T, ns *netns, name, network, addr string, capture bool) {
	t.Helper()
	var ln net.Listener
	ns.mustRun(t, func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	t.Cleanup(func() { _ = ln.Close() })
	// Bounded even if Cleanup never came: no test needs a listener for longer.
	_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Minute))
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go answer(c.(*net.TCPConn), name, capture)
		}
	}()
}

func unmapped(a net.Addr) string {
	ap := a.(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
}

func answer(c *net.TCPConn, name string, capture bool) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	l := landing{
		Listener: name, Local: unmapped(c.LocalAddr()), Remote: unmapped(c.RemoteAddr()),
		Mapped: c.LocalAddr().(*net.TCPAddr).AddrPort().Addr().Is4In6(),
	}
	if capture {
		if orig, err := OriginalDestination(c); err != nil {
			l.OrigErr = err.Error()
		} else {
			l.Orig = orig.String()
		}
	}
	b, _ := json.Marshal(l)
	_, _ = c.Write(append(b, '\n'))
}

// dial connects to addr from the calling thread's namespace and reads the landing.
func dial(addr netip.AddrPort) (landing, error) {
	d := net.Dialer{Timeout: dialTimeout}
	c, err := d.Dial("tcp", addr.String())
	if err != nil {
		return landing{}, fmt.Errorf("dial %s: %w", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		return landing{}, fmt.Errorf("read from %s: %w", addr, err)
	}
	var l landing
	if err := json.Unmarshal(line, &l); err != nil {
		return landing{}, fmt.Errorf("read from %s: %q: %w", addr, line, err)
	}
	return l, nil
}

// dialFrom dials addr from ns as the test process (root, so: the application).
func dialFrom(ns *netns, addr netip.AddrPort) (landing, error) {
	var l landing
	err := ns.run(func() error {
		var err error
		l, err = dial(addr)
		return err
	})
	return l, err
}

// helperReport is what a helper child prints.
type helperReport struct {
	UID     int     `json:"uid"`
	NetnsNo uint64  `json:"netns"`
	Landing landing `json:"landing"`
	Err     string  `json:"err,omitempty"`
	// For the apply helper: what errors.Is says of Apply's and Remove's errors.
	ApplyIsNetAdmin  bool   `json:"applyIsNetAdmin"`
	ApplyIsEPERM     bool   `json:"applyIsEPERM"`
	RemoveErr        string `json:"removeErr,omitempty"`
	RemoveIsNetAdmin bool   `json:"removeIsNetAdmin"`
}

func runHelper(mode string) int {
	rep := helperReport{UID: os.Getuid()}
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err == nil {
		rep.NetnsNo = st.Ino
	}
	switch mode {
	case "dial":
		ap, err := netip.ParseAddrPort(os.Getenv(helperAddrEnv))
		if err == nil {
			rep.Landing, err = dial(ap)
		}
		if err != nil {
			rep.Err = err.Error()
		}
	case "apply":
		if err := Apply(DefaultRules()); err != nil {
			rep.Err = err.Error()
			rep.ApplyIsNetAdmin = errors.Is(err, ErrNetAdmin)
			rep.ApplyIsEPERM = errors.Is(err, syscall.EPERM)
		}
		if err := Remove(); err != nil {
			rep.RemoveErr = err.Error()
			rep.RemoveIsNetAdmin = errors.Is(err, ErrNetAdmin)
		}
	default:
		fmt.Fprintf(os.Stderr, "unknown helper mode %q\n", mode)
		return 2
	}
	_ = json.NewEncoder(os.Stdout).Encode(rep)
	return 0
}

var helper struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// helperBinary is a copy of the test binary that any user can run (go test's own lives in
// a directory only its owner can enter).
func helperBinary() (string, error) {
	helper.once.Do(func() {
		self, err := os.Executable()
		if err != nil {
			helper.err = err
			return
		}
		if helper.dir, helper.err = os.MkdirTemp("", "trellis-redirect-test-"); helper.err != nil {
			return
		}
		if helper.err = os.Chmod(helper.dir, 0o755); helper.err != nil {
			return
		}
		helper.path = filepath.Join(helper.dir, "redirect.test")
		helper.err = copyFile(self, helper.path, 0o755)
	})
	return helper.path, helper.err
}

func removeHelperBinary() {
	if helper.dir != "" {
		_ = os.RemoveAll(helper.dir)
	}
}

func copyFile(from, to string, mode os.FileMode) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return err
	}
	return out.Close()
}

// runAsProxy runs the test binary in helper mode inside ns as the proxy's UID and GID
// (SysProcAttr.Credential, no capabilities), and returns its report. The child is forked
// from a thread inside ns, so it is born there; the report's namespace is checked.
func runAsProxy(t *testing.T, ns *netns, mode string, env ...string) helperReport {
	t.Helper()
	bin, err := helperBinary()
	if err != nil {
		t.Fatalf("prepare the helper binary: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), childLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Dir = "/"
	cmd.Env = append([]string{helperEnv + "=" + mode, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: DefaultProxyUID, Gid: DefaultProxyUID},
		// No Pdeathsig: it fires when the forking thread ends, and that thread is discarded
		// as soon as Start returns. ctx bounds the child instead.
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := ns.run(cmd.Start); err != nil {
		t.Fatalf("start the helper as UID %d: %v", DefaultProxyUID, err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper %s as UID %d: %v\nstdout: %s\nstderr: %s", mode, DefaultProxyUID, err, &stdout, &stderr)
	}
	var rep helperReport
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("helper %s: bad report %q: %v (stderr: %s)", mode, &stdout, err, &stderr)
	}
	if rep.UID != int(DefaultProxyUID) {
		t.Fatalf("helper ran as UID %d, want %d", rep.UID, DefaultProxyUID)
	}
	if rep.NetnsNo != ns.ino {
		t.Fatalf("helper ran in network namespace %d, want %s (%d)", rep.NetnsNo, ns.name, ns.ino)
	}
	return rep
}
