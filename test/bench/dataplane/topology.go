package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// cleanup is a stack of undo steps, run in reverse order once. Each step that the run.sh
// trap can redo (should this process be killed with SIGKILL) is also appended to a shell
// script, so that nothing the benchmark made outlives it.
type cleanup struct {
	mu     sync.Mutex
	steps  []func()
	script *os.File
	log    *slog.Logger
}

func newCleanup(scriptPath string, log *slog.Logger) (*cleanup, error) {
	c := &cleanup{log: log}
	if scriptPath != "" {
		f, err := os.OpenFile(scriptPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			return nil, fmt.Errorf("open the cleanup script: %w", err)
		}
		fmt.Fprintln(f, "# written by test/bench/dataplane: what to undo if it was killed; run by run.sh's trap")
		c.script = f
	}
	return c, nil
}

// add pushes an undo step; shell, when set, is the same step for the fallback script.
func (c *cleanup) add(fn func(), shell string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.steps = append(c.steps, fn)
	if c.script != nil && shell != "" {
		fmt.Fprintln(c.script, shell)
		_ = c.script.Sync()
	}
}

// run undoes everything, newest first, and empties the fallback script.
func (c *cleanup) run() {
	c.mu.Lock()
	steps := c.steps
	c.steps = nil
	c.mu.Unlock()
	for i := len(steps) - 1; i >= 0; i-- {
		steps[i]()
	}
	if c.script != nil {
		_ = c.script.Truncate(0)
		_ = c.script.Close()
		c.script = nil
	}
}

func sh(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// topology is a private bridge with network namespaces on it. The bridge has no uplink, the
// namespaces have no default route (only their /24 and the Service VIPs, both on-link), and
// forwarding is left as it was: no packet can be routed off the machine.
type topology struct {
	id     string
	bridge string
	prefix netip.Prefix // a /24
	host   netip.Addr   // the bridge's own address (the in-process control plane)
	vips   netip.Prefix // Service VIPs, a /24 routed on-link in every namespace
	next   netip.Addr
	clean  *cleanup
}

// newTopology makes the bridge, in 10.237.<n>.0/24 with VIPs in 10.238.<n>.0/24: ranges
// that neither the netns tests (10.231/16) nor the local cluster (10.96/16, 10.244/16,
// 10.250/16) use.
func newTopology(clean *cleanup) (*topology, error) {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	n := b[0]
	tp := &topology{
		id: id, bridge: "trbb" + id, clean: clean,
		prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 237, n, 0}), 24),
		vips:   netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 238, n, 0}), 24),
	}
	tp.host = tp.prefix.Addr().Next()
	tp.next = tp.host.Next()
	if err := sh("ip", "link", "add", tp.bridge, "type", "bridge"); err != nil {
		return nil, err
	}
	clean.add(func() { _ = exec.Command("ip", "link", "del", tp.bridge).Run() }, "ip link del "+tp.bridge+" 2>/dev/null")
	for _, args := range [][]string{
		{"ip", "addr", "add", netip.PrefixFrom(tp.host, 24).String(), "dev", tp.bridge},
		{"ip", "link", "set", tp.bridge, "up"},
	} {
		if err := sh(args...); err != nil {
			return nil, err
		}
	}
	return tp, nil
}

// vip returns the i-th Service VIP.
func (tp *topology) vip(i int) netip.Addr {
	a := tp.vips.Addr().As4()
	a[3] = byte(10 + i)
	return netip.AddrFrom4(a)
}

// namespace makes a network namespace with one veth on the bridge.
func (tp *topology) namespace(name string) (ns string, ip netip.Addr, err error) {
	ns = "trb-" + name + "-" + tp.id
	ip = tp.next
	tp.next = tp.next.Next()
	short := name[:min(3, len(name))]
	host, peer := "trbh"+short+tp.id, "trbp"+short+tp.id
	if err := sh("ip", "netns", "add", ns); err != nil {
		return "", ip, err
	}
	tp.clean.add(func() { _ = exec.Command("ip", "netns", "del", ns).Run() }, "ip netns del "+ns+" 2>/dev/null")
	for _, args := range [][]string{
		{"ip", "link", "add", host, "type", "veth", "peer", "name", peer},
		{"ip", "link", "set", peer, "netns", ns},
		{"ip", "link", "set", host, "master", tp.bridge, "up"},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "link", "set", peer, "name", "eth0"},
		{"ip", "-n", ns, "addr", "add", netip.PrefixFrom(ip, 24).String(), "dev", "eth0"},
		{"ip", "-n", ns, "link", "set", "eth0", "up"},
		// The VIPs are captured by the sidecar's nftables rules before they leave; should a
		// packet escape them, it is only ARPed for on the bridge, never routed.
		{"ip", "-n", ns, "route", "add", tp.vips.String(), "dev", "eth0"},
	} {
		if err := sh(args...); err != nil {
			return "", ip, err
		}
	}
	return ns, ip, nil
}

// placement says where a process runs: its namespace, CPUs (taskset list, "" for any) and
// UID (0 for root; others through setpriv, as a container's runAsUser).
type placement struct {
	ns   string
	cpus string
	uid  uint32
}

func (p placement) argv(argv []string) []string {
	if p.uid != 0 {
		argv = append([]string{"setpriv", fmt.Sprintf("--reuid=%d", p.uid), fmt.Sprintf("--regid=%d", p.uid), "--clear-groups"}, argv...)
	}
	if p.cpus != "" {
		argv = append([]string{"taskset", "-c", p.cpus}, argv...)
	}
	if p.ns != "" {
		argv = append([]string{"ip", "netns", "exec", p.ns}, argv...)
	}
	return argv
}

// process is a long-running program the benchmark started. `ip netns exec`, taskset and
// setpriv each exec the next, so Pid is the program's own PID. It is stopped by its process
// group, which is its own PID.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b.Len() > 1<<20 { // keep the tail of a chatty process bounded
		s.b.Reset()
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// start runs argv at pl and registers its stop with clean.
func start(clean *cleanup, name string, pl placement, env []string, argv ...string) (*process, error) {
	cmd := exec.Command(pl.argv(argv)[0], pl.argv(argv)[1:]...)
	cmd.Env = append(os.Environ(), env...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, out: out, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	pid := cmd.Process.Pid
	startTime, _ := procStartTime(pid)
	clean.add(func() { p.stop(10 * time.Second) },
		// Kill the group only if its leader is still the process we started (PIDs are reused).
		fmt.Sprintf(`[ "$(awk '{print $22}' /proc/%d/stat 2>/dev/null)" = "%d" ] && kill -KILL -- -%d 2>/dev/null`, pid, startTime, pid))
	return p, nil
}

// stop sends SIGTERM to the process group and SIGKILL after grace.
func (p *process) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	pid := p.cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-p.done
	}
}

// runOnce runs argv at pl to the end (or until ctx ends) and returns its combined output and
// the rusage of the program (CPU of the load generator).
func runOnce(ctx context.Context, pl placement, env []string, argv ...string) (string, *syscall.Rusage, error) {
	full := pl.argv(argv)
	cmd := exec.CommandContext(ctx, full[0], full[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ru *syscall.Rusage
	if cmd.ProcessState != nil {
		ru, _ = cmd.ProcessState.SysUsage().(*syscall.Rusage)
	}
	if err != nil && ctx.Err() != nil {
		err = errors.Join(err, ctx.Err())
	}
	return out.String(), ru, err
}
