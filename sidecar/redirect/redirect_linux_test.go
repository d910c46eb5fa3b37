package redirect

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Listeners of the traffic tests. A is the pod with the rules; B is a peer.
const (
	listenerOutbound  = "A outbound capture (15001)"
	listenerInbound   = "A inbound capture (15006)"
	listenerApp       = "A app (9090)"
	listenerAppExcl   = "A app on an excluded inbound port (9091)"
	listenerMetrics   = "A proxy metrics (15020)"
	listenerBApp      = "B app (8080)"
	listenerBExclPort = "B app on an excluded outbound port (8081)"

	appPort          = 9090
	appExcludedPort  = 9091
	metricsPort      = 15020
	peerPort         = 8080
	peerExcludedPort = 8081

	readyTimeout = 10 * time.Second
)

// startServers starts every listener. The capture listeners are one dual-stack socket each
// (IPv4 clients arrive v4-mapped), or, with separateStacks, an IPv4 and an IPv6-only socket:
// OriginalDestination must work on all three kinds.
func startServers(t *testing.T, topo *topology, separateStacks bool) {
	t.Helper()
	for _, c := range []struct {
		name string
		port string
	}{{listenerOutbound, "15001"}, {listenerInbound, "15006"}} {
		if !separateStacks {
			serve(t, topo.a, c.name, "tcp", ":"+c.port, true)
			continue
		}
		serve(t, topo.a, c.name, "tcp4", "0.0.0.0:"+c.port, true)
		if topo.noIPv6 == "" {
			serve(t, topo.a, c.name, "tcp6", "[::]:"+c.port, true)
		}
	}
	serve(t, topo.a, listenerApp, "tcp", ":9090", false)
	serve(t, topo.a, listenerAppExcl, "tcp", ":9091", false)
	serve(t, topo.a, listenerMetrics, "tcp", ":15020", false)
	serve(t, topo.b, listenerBApp, "tcp", ":8080", false)
	serve(t, topo.b, listenerBExclPort, "tcp", ":8081", false)
}

// waitReady waits until B reaches A's app over the veth, before any rule exists.
func waitReady(t *testing.T, topo *topology) {
	t.Helper()
	for _, v := range ipVersions {
		if v.name == "IPv6" && topo.noIPv6 != "" {
			continue
		}
		addr := netip.AddrPortFrom(v.hosts(topo).a, appPort)
		deadline := time.Now().Add(readyTimeout)
		for {
			l, err := dialFrom(topo.b, addr)
			if err == nil && l.Listener == listenerApp {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the veth pair is not passing %s traffic after %s: %v (landing %+v)", v.name, readyTimeout, err, l)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// testRules exclude inbound 9091, outbound 8081 and the network of B's second address.
func testRules(topo *topology) Rules {
	r := DefaultRules()
	r.InboundExcludePorts = []uint16{appExcludedPort}
	r.OutboundExcludePorts = []uint16{peerExcludedPort}
	r.OutboundExcludeCIDRs = []netip.Prefix{topo.v4.excluded}
	if topo.noIPv6 == "" {
		r.OutboundExcludeCIDRs = append(r.OutboundExcludeCIDRs, topo.v6.excluded)
	}
	return r
}

type host uint8

const (
	hostA         host = iota // A's pod address
	hostB                     // B's address
	hostBExcluded             // B's address in an excluded network
	hostLoopback              // 127.0.0.1 or ::1
)

func (h hosts) addr(x host) netip.Addr {
	switch x {
	case hostA:
		return h.a
	case hostB:
		return h.b
	case hostBExcluded:
		return h.bExcluded
	default:
		return h.loopback
	}
}

// trafficCase is one connection and where it must land.
type trafficCase struct {
	name    string
	fromB   bool // else from A
	asProxy bool // from A, as UID 1337 (a child process)
	to      host
	port    uint16
	want    string // the listener that must accept it
	// redirected connections arrive at arriveAt on the listener's port, and their original
	// destination is the dialled address; others arrive at exactly the dialled address.
	redirected bool
	arriveAt   host
}

var trafficCases = []trafficCase{
	{
		name: "an app connection from A to B lands on A's outbound listener, from loopback",
		to:   hostB, port: peerPort, want: listenerOutbound, redirected: true, arriveAt: hostLoopback,
	},
	{
		name:  "a connection from B to A's app lands on A's inbound listener, at A's address",
		fromB: true, to: hostA, port: appPort, want: listenerInbound, redirected: true, arriveAt: hostA,
	},
	{
		name:    "a connection from the proxy's UID in A goes straight to B",
		asProxy: true, to: hostB, port: peerPort, want: listenerBApp,
	},
	{
		name: "a connection from A to an excluded outbound port goes straight to B",
		to:   hostB, port: peerExcludedPort, want: listenerBExclPort,
	},
	{
		name: "a connection from A to an excluded network goes straight to B",
		to:   hostBExcluded, port: peerPort, want: listenerBApp,
	},
	{
		name:  "a connection from B to an excluded inbound port reaches A's app directly",
		fromB: true, to: hostA, port: appExcludedPort, want: listenerAppExcl,
	},
	{
		name:  "a connection from B to the proxy's metrics port reaches the proxy directly",
		fromB: true, to: hostA, port: metricsPort, want: listenerMetrics,
	},
	{
		name:  "a connection from B straight to A's inbound port is not redirected and its original destination is its own address",
		fromB: true, to: hostA, port: DefaultInboundPort, want: listenerInbound,
	},
	{
		name: "a loopback connection in A is not redirected",
		to:   hostLoopback, port: appPort, want: listenerApp,
	},
	{
		name:    "a loopback connection of the proxy's UID in A is not redirected",
		asProxy: true, to: hostLoopback, port: appPort, want: listenerApp,
	},
	{
		name: "the app in A calling its own pod address reaches itself directly (hairpin)",
		to:   hostA, port: appPort, want: listenerApp,
	},
	{
		name:    "the proxy's UID calling its own pod address goes through the inbound listener (hairpin)",
		asProxy: true, to: hostA, port: appPort, want: listenerInbound, redirected: true, arriveAt: hostLoopback,
	},
	{
		name:    "the proxy's UID calling its own pod address on an excluded inbound port reaches the app directly",
		asProxy: true, to: hostA, port: appExcludedPort, want: listenerAppExcl,
	},
}

func listenerPort(name string) uint16 {
	if name == listenerOutbound {
		return DefaultOutboundPort
	}
	return DefaultInboundPort
}

// run makes the connection and checks where it landed. dualStack says the capture listeners
// are dual-stack sockets, on which IPv4 connections must arrive v4-mapped.
func (tc trafficCase) run(t *testing.T, topo *topology, v ipVersion, dualStack bool) {
	t.Helper()
	h := v.hosts(topo)
	dialled := netip.AddrPortFrom(h.addr(tc.to), tc.port)
	var l landing
	switch {
	case tc.asProxy:
		rep := runAsProxy(t, topo.a, "dial", helperAddrEnv+"="+dialled.String())
		if rep.Err != "" {
			t.Fatalf("as UID %d in A: %s", DefaultProxyUID, rep.Err)
		}
		l = rep.Landing
	case tc.fromB:
		var err error
		if l, err = dialFrom(topo.b, dialled); err != nil {
			t.Fatalf("from B: %v", err)
		}
	default:
		var err error
		if l, err = dialFrom(topo.a, dialled); err != nil {
			t.Fatalf("from A: %v", err)
		}
	}
	t.Logf("dialled %s: %+v", dialled, l)
	if l.Listener != tc.want {
		t.Fatalf("dialling %s landed on %q, want %q (landing %+v)", dialled, l.Listener, tc.want, l)
	}
	wantLocal := dialled
	if tc.redirected {
		wantLocal = netip.AddrPortFrom(h.addr(tc.arriveAt), listenerPort(tc.want))
	}
	if l.Local != wantLocal.String() {
		t.Errorf("the connection arrived at %s, want %s", l.Local, wantLocal)
	}
	if tc.want == listenerOutbound || tc.want == listenerInbound {
		if l.OrigErr != "" || l.Orig != dialled.String() {
			t.Errorf("OriginalDestination = %q (error %q), want %s", l.Orig, l.OrigErr, dialled)
		}
		if wantMapped := dualStack && dialled.Addr().Is4(); l.Mapped != wantMapped {
			t.Errorf("the capture listener saw a v4-mapped connection: %v, want %v", l.Mapped, wantMapped)
		}
	}
}

func TestRedirect(t *testing.T) {
	requireNetns(t)
	tests := []struct {
		name           string
		layout         layout
		separateStacks bool
	}{
		{"rules in one inet table, as Apply chooses on this kernel, with dual-stack capture listeners", layoutInet, false},
		{"rules in ip and ip6 tables, the fallback for old kernels, with single-stack capture listeners", layoutSplit, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			topo := newTopology(t)
			startServers(t, topo, tt.separateStacks)
			waitReady(t, topo)
			rules := testRules(topo)
			if tt.layout == layoutInet {
				topo.a.mustRun(t, func() error { return Apply(rules) })
			} else {
				topo.a.mustRun(t, func() error { return apply(rules, tt.layout) })
			}
			if diff := cmp.Diff(wantTables(rules, tt.layout), mustDump(t, topo.a)); diff != "" {
				t.Fatalf("the kernel's ruleset is not the %s layout of the rules (-want +got):\n%s", tt.layout, diff)
			}
			for _, v := range ipVersions {
				t.Run(v.name, func(t *testing.T) {
					v.skipUnavailable(t, topo)
					for _, tc := range trafficCases {
						t.Run(tc.name, func(t *testing.T) { tc.run(t, topo, v, !tt.separateStacks && topo.noIPv6 == "") })
					}
				})
			}
		})
	}
}

// expectLanding checks where an app connection from A to B's port lands.
func expectLanding(t *testing.T, topo *topology, port uint16, want string) {
	t.Helper()
	dst := netip.AddrPortFrom(topo.v4.b, port)
	l, err := dialFrom(topo.a, dst)
	if err != nil {
		t.Fatalf("from A to %s: %v", dst, err)
	}
	if l.Listener != want {
		t.Fatalf("from A to %s landed on %q, want %q", dst, l.Listener, want)
	}
}

func TestApplyReplacesTheRulesAndRemoveDeletesThem(t *testing.T) {
	requireNetns(t)
	topo := newTopology(t)
	startServers(t, topo, false)
	waitReady(t, topo)
	rules := testRules(topo)
	a := topo.a

	a.mustRun(t, func() error { return Apply(rules) })
	first := mustDump(t, a)
	if diff := cmp.Diff(wantTables(rules, layoutInet), first); diff != "" {
		t.Fatalf("after Apply, the kernel's ruleset is not the rules' (-want +got):\n%s", diff)
	}
	a.mustRun(t, func() error { return Apply(rules) })
	if diff := cmp.Diff(first, mustDump(t, a)); diff != "" {
		t.Fatalf("a second Apply of the same rules changed the ruleset (-first +second):\n%s", diff)
	}
	expectLanding(t, topo, peerPort, listenerOutbound)
	expectLanding(t, topo, peerExcludedPort, listenerBExclPort)

	// Different rules replace the old ones: 8081 is no longer excluded.
	a.mustRun(t, func() error { return Apply(DefaultRules()) })
	if diff := cmp.Diff(wantTables(DefaultRules(), layoutInet), mustDump(t, a)); diff != "" {
		t.Fatalf("Apply of other rules did not replace the ruleset (-want +got):\n%s", diff)
	}
	expectLanding(t, topo, peerExcludedPort, listenerOutbound)

	// Whatever layout was there before, Apply leaves only its own.
	a.mustRun(t, func() error { return apply(rules, layoutSplit) })
	if diff := cmp.Diff(wantTables(rules, layoutSplit), mustDump(t, a)); diff != "" {
		t.Fatalf("the ip and ip6 layout did not replace the inet table (-want +got):\n%s", diff)
	}
	a.mustRun(t, func() error { return Apply(rules) })
	if diff := cmp.Diff(wantTables(rules, layoutInet), mustDump(t, a)); diff != "" {
		t.Fatalf("Apply did not replace the ip and ip6 tables (-want +got):\n%s", diff)
	}
	expectLanding(t, topo, peerPort, listenerOutbound)

	a.mustRun(t, Remove)
	if got := mustDump(t, a); len(got) != 0 {
		t.Fatalf("after Remove, tables are left: %+v", got)
	}
	expectLanding(t, topo, peerPort, listenerBApp)
	if err := a.run(Remove); err != nil {
		t.Fatalf("Remove with no rules in place: %v, want no error", err)
	}
}

func TestApplyWithoutNetAdminSaysWhatToDo(t *testing.T) {
	requireNetns(t)
	ns := newNetns(t, "trellis-rt-"+randomHex(3)+"-a")
	rep := runAsProxy(t, ns, "apply")
	if rep.Err != ErrNetAdmin.Error() {
		t.Errorf("Apply without NET_ADMIN: %q, want %q", rep.Err, ErrNetAdmin)
	}
	if !rep.ApplyIsNetAdmin || !rep.ApplyIsEPERM {
		t.Errorf("Apply's error: errors.Is ErrNetAdmin %v, EPERM %v; want both", rep.ApplyIsNetAdmin, rep.ApplyIsEPERM)
	}
	if rep.RemoveErr != ErrNetAdmin.Error() || !rep.RemoveIsNetAdmin {
		t.Errorf("Remove without NET_ADMIN: %q (errors.Is ErrNetAdmin %v), want %q", rep.RemoveErr, rep.RemoveIsNetAdmin, ErrNetAdmin)
	}
	if got := mustDump(t, ns); len(got) != 0 {
		t.Errorf("a refused Apply left tables: %+v", got)
	}
}

func TestRenderIsWhatNftLists(t *testing.T) {
	requireNetns(t)
	nft, err := exec.LookPath("nft")
	if err != nil {
		t.Skip("nft is not installed (it is only a cross-check here; apt-get install nftables to run it)")
	}
	for _, l := range []layout{layoutInet, layoutSplit} {
		t.Run("the "+l.String()+" layout", func(t *testing.T) {
			ns := newNetns(t, "trellis-rt-"+randomHex(3)+"-a")
			r := exclusionRules()
			ns.mustRun(t, func() error { return apply(r, l) })
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns.name, nft, "list", "ruleset").CombinedOutput()
			if err != nil {
				t.Fatalf("nft list ruleset: %v: %s", err, out)
			}
			version, _ := exec.CommandContext(ctx, nft, "--version").Output()
			if diff := cmp.Diff(render(r.build(l)), string(out)); diff != "" {
				t.Errorf("Render differs from what %s lists (-render +nft):\n%s", bytes.TrimSpace(version), diff)
			}
		})
	}
}

func TestOriginalDestinationWithoutConntrackSaysSo(t *testing.T) {
	requireNetns(t)
	if b, err := os.ReadFile("/sys/module/nf_conntrack/parameters/enable_hooks"); err == nil && strings.TrimSpace(string(b)) == "Y" {
		t.Skip("conntrack is forced on in every namespace (nf_conntrack.enable_hooks=Y), so there is no namespace without it")
	}
	ns := newNetns(t, "trellis-rt-"+randomHex(3)+"-a")
	mustIP(t, "-n", ns.name, "link", "set", "lo", "up")
	var origErr error
	ns.mustRun(t, func() error {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer ln.Close()
		_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(ioTimeout))
		c, err := net.DialTimeout("tcp4", ln.Addr().String(), dialTimeout)
		if err != nil {
			return err
		}
		defer c.Close()
		s, err := ln.Accept()
		if err != nil {
			return err
		}
		defer s.Close()
		_, origErr = OriginalDestination(s.(*net.TCPConn))
		return nil
	})
	if !errors.Is(origErr, unix.ENOENT) || !strings.Contains(origErr.Error(), "conntrack has no entry") {
		t.Errorf("OriginalDestination in a namespace without NAT rules: %v, want an error about conntrack wrapping ENOENT", origErr)
	}
}

// dumpedTable is a table as the kernel reports it.
type dumpedTable struct {
	Family nftables.TableFamily
	Chains []dumpedChain
}

type dumpedChain struct {
	Name     string
	Type     nftables.ChainType
	Hook     nftables.ChainHook
	Priority nftables.ChainPriority
	Policy   nftables.ChainPolicy
	Rules    [][]expr.Any
}

// mustDump reads the Trellis tables of ns back over netlink.
func mustDump(t *testing.T, ns *netns) []dumpedTable {
	t.Helper()
	var tables []dumpedTable
	ns.mustRun(t, func() error {
		var err error
		tables, err = dumpTables()
		return err
	})
	return tables
}

func dumpTables() ([]dumpedTable, error) {
	c, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.CloseLasting() }()
	all, err := c.ListTables()
	if err != nil {
		return nil, err
	}
	var out []dumpedTable
	for _, t := range all {
		if t.Name != tableName {
			continue
		}
		dt := dumpedTable{Family: t.Family}
		chains, err := c.ListChainsOfTableFamily(t.Family)
		if err != nil {
			return nil, err
		}
		for _, ch := range chains {
			if ch.Table.Name != tableName {
				continue
			}
			dc := dumpedChain{Name: ch.Name, Type: ch.Type}
			if ch.Hooknum != nil {
				dc.Hook = *ch.Hooknum
			}
			if ch.Priority != nil {
				dc.Priority = *ch.Priority
			}
			if ch.Policy != nil {
				dc.Policy = *ch.Policy
			}
			rules, err := c.GetRules(t, ch)
			if err != nil {
				return nil, err
			}
			for _, r := range rules {
				dc.Rules = append(dc.Rules, r.Exprs)
			}
			dt.Chains = append(dt.Chains, dc)
		}
		out = append(out, dt)
	}
	sortTables(out)
	return out, nil
}

// wantTables is what the kernel must report after programming r laid out as l: the same
// model, compiled.
func wantTables(r Rules, l layout) []dumpedTable {
	var out []dumpedTable
	for _, t := range r.build(l) {
		dt := dumpedTable{Family: t.family.nftables()}
		for _, ch := range t.chains {
			nc := ch.nftables(&nftables.Table{Name: tableName, Family: dt.Family})
			dc := dumpedChain{Name: ch.name, Type: nc.Type}
			if nc.Hooknum != nil {
				dc.Hook, dc.Priority, dc.Policy = *nc.Hooknum, *nc.Priority, *nc.Policy
			}
			for _, ru := range ch.rules {
				dc.Rules = append(dc.Rules, ru.compile(t.family))
			}
			dt.Chains = append(dt.Chains, dc)
		}
		out = append(out, dt)
	}
	sortTables(out)
	return out
}

func sortTables(ts []dumpedTable) {
	slices.SortFunc(ts, func(a, b dumpedTable) int { return int(a.Family) - int(b.Family) })
}
