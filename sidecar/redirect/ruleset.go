package redirect

import (
	"fmt"
	"net/netip"
	"strings"
)

// This file is the one description of the ruleset. build turns Rules into tables of chains of
// rules made of a few kinds of matches and verdicts; render prints them the way `nft list`
// does, and compile (nftables_linux.go) turns the same values into netlink expressions.

// tableName is the name of Trellis's table, in every family it uses.
const tableName = "trellis"

// family is an nftables table family.
type family uint8

const (
	familyInet family = iota // IPv4 and IPv6 in one table
	familyIP                 // IPv4 only
	familyIP6                // IPv6 only
)

func (f family) String() string {
	switch f {
	case familyIP:
		return "ip"
	case familyIP6:
		return "ip6"
	default:
		return "inet"
	}
}

// layout is how many tables hold the ruleset.
type layout uint8

const (
	// layoutInet is one inet table: needs NAT chains in inet tables (Linux 5.2+).
	layoutInet layout = iota
	// layoutSplit is an ip and an ip6 table with the same chains, for older kernels.
	layoutSplit
)

func (l layout) families() []family {
	if l == layoutSplit {
		return []family{familyIP, familyIP6}
	}
	return []family{familyInet}
}

func (l layout) String() string {
	if l == layoutSplit {
		return "ip and ip6"
	}
	return "inet"
}

// hook is where a base chain is attached; hookNone is a regular chain (a jump target).
type hook uint8

const (
	hookNone hook = iota
	hookPrerouting
	hookOutput
)

// natPriority is the priority of both base chains: NF_IP_PRI_NAT_DST, where destination NAT
// happens (nft calls it "dstnat" in prerouting and prints -100 in output).
const natPriority = -100

type matchKind uint8

const (
	matchL4ProtoTCP    matchKind = iota // meta l4proto tcp
	matchL4ProtoNotTCP                  // meta l4proto != tcp
	matchIifname                        // iifname "lo"
	matchOifname                        // oifname "lo"
	matchSkuid                          // meta skuid 1337
	matchTCPDport                       // tcp dport 80
	matchDaddr                          // ip daddr 10.0.0.0/8, ip6 daddr ::1
)

// match is one condition of a rule.
type match struct {
	kind   matchKind
	name   string       // matchIifname, matchOifname
	uid    uint32       // matchSkuid
	port   uint16       // matchTCPDport
	prefix netip.Prefix // matchDaddr
}

// ipv4 and ipv6 report whether the match only applies to one IP version.
func (m match) ipv4() bool { return m.kind == matchDaddr && m.prefix.Addr().Is4() }
func (m match) ipv6() bool { return m.kind == matchDaddr && m.prefix.Addr().Is6() }

type verdictKind uint8

const (
	verdictReturn   verdictKind = iota // return: stop, accept without NAT
	verdictGoto                        // goto <chain>
	verdictRedirect                    // redirect to :<port>
)

type verdict struct {
	kind  verdictKind
	chain string // verdictGoto
	port  uint16 // verdictRedirect
}

type rule struct {
	matches []match
	verdict verdict
}

type chain struct {
	name  string
	hook  hook
	rules []rule
}

type table struct {
	family family
	chains []chain
}

// Chain names.
const (
	chainPrerouting = "prerouting"
	chainOutput     = "output"
	chainInbound    = "inbound"
)

func tcpOnly() match                { return match{kind: matchL4ProtoTCP} }
func notTCP() match                 { return match{kind: matchL4ProtoNotTCP} }
func iifname(n string) match        { return match{kind: matchIifname, name: n} }
func oifname(n string) match        { return match{kind: matchOifname, name: n} }
func skuid(uid uint32) match        { return match{kind: matchSkuid, uid: uid} }
func dport(p uint16) match          { return match{kind: matchTCPDport, port: p} }
func daddr(p netip.Prefix) match    { return match{kind: matchDaddr, prefix: p} }
func returnIf(ms ...match) rule     { return rule{matches: ms, verdict: verdict{kind: verdictReturn}} }
func gotoChain(name string) verdict { return verdict{kind: verdictGoto, chain: name} }
func redirectTo(port uint16) rule {
	return rule{matches: []match{tcpOnly()}, verdict: verdict{kind: verdictRedirect, port: port}}
}

var (
	loopback4 = netip.MustParsePrefix("127.0.0.0/8")
	loopback6 = netip.MustParsePrefix("::1/128")
)

// chains is the ruleset for r, independent of the table family. Callers validate r first;
// chains does not, so that Render can show whatever it is given.
func (r Rules) chains() []chain {
	prerouting := chain{name: chainPrerouting, hook: hookPrerouting, rules: []rule{
		// Connections from the pod to itself were decided in output; never again here.
		returnIf(iifname("lo")),
		returnIf(notTCP()),
		{verdict: gotoChain(chainInbound)},
	}}

	output := chain{name: chainOutput, hook: hookOutput, rules: []rule{
		returnIf(notTCP()),
		returnIf(daddr(loopback4)),
		returnIf(daddr(loopback6)),
		// Hairpin: the proxy dialling the pod's own IP is treated as inbound traffic; anyone
		// else talking over lo goes direct. See the package documentation.
		{matches: []match{oifname("lo"), skuid(r.ProxyUID)}, verdict: gotoChain(chainInbound)},
		returnIf(oifname("lo")),
		returnIf(skuid(r.ProxyUID)),
	}}
	for _, p := range sortedUnique(r.OutboundExcludePorts) {
		output.rules = append(output.rules, returnIf(dport(p)))
	}
	for _, p := range sortedPrefixes(r.OutboundExcludeCIDRs) {
		output.rules = append(output.rules, returnIf(daddr(p.Masked())))
	}
	output.rules = append(output.rules, redirectTo(r.OutboundPort))

	inbound := chain{name: chainInbound}
	for _, p := range r.inboundExcluded() {
		inbound.rules = append(inbound.rules, returnIf(dport(p)))
	}
	inbound.rules = append(inbound.rules, redirectTo(r.InboundPort))

	// Creation order, which is also the order nft lists them in.
	return []chain{prerouting, output, inbound}
}

// build lays the ruleset out in tables. In a single-version table, rules that only match the
// other IP version are left out, and matches on the table's own version need no check of the
// packet's version.
func (r Rules) build(l layout) []table {
	var tables []table
	for _, fam := range l.families() {
		t := table{family: fam}
		for _, c := range r.chains() {
			fc := chain{name: c.name, hook: c.hook}
			for _, ru := range c.rules {
				if ru.fits(fam) {
					fc.rules = append(fc.rules, ru)
				}
			}
			t.chains = append(t.chains, fc)
		}
		tables = append(tables, t)
	}
	return tables
}

// fits reports whether the rule can match in a table of family fam.
func (ru rule) fits(fam family) bool {
	for _, m := range ru.matches {
		if (fam == familyIP && m.ipv6()) || (fam == familyIP6 && m.ipv4()) {
			return false
		}
	}
	return true
}

// Render returns the ruleset Apply programs for r, as `nft list ruleset` prints it (nft
// 1.0): the output of `trellis-proxy init --dry-run`. It does not validate r.
func Render(r Rules) string {
	return render(r.build(layoutInet))
}

func render(tables []table) string {
	var b strings.Builder
	for _, t := range tables {
		fmt.Fprintf(&b, "table %s %s {\n", t.family, tableName)
		for i, c := range t.chains {
			if i > 0 {
				b.WriteString("\n")
			}
			fmt.Fprintf(&b, "\tchain %s {\n", c.name)
			switch c.hook {
			case hookPrerouting:
				b.WriteString("\t\ttype nat hook prerouting priority dstnat; policy accept;\n")
			case hookOutput:
				fmt.Fprintf(&b, "\t\ttype nat hook output priority %d; policy accept;\n", natPriority)
			}
			for _, ru := range c.rules {
				fmt.Fprintf(&b, "\t\t%s\n", ru.render(t.family))
			}
			b.WriteString("\t}\n")
		}
		b.WriteString("}\n")
	}
	return b.String()
}

func (ru rule) render(fam family) string {
	var parts []string
	for _, m := range ru.matches {
		if s := m.render(fam); s != "" {
			parts = append(parts, s)
		}
	}
	switch ru.verdict.kind {
	case verdictReturn:
		parts = append(parts, "return")
	case verdictGoto:
		parts = append(parts, "goto "+ru.verdict.chain)
	case verdictRedirect:
		parts = append(parts, fmt.Sprintf("redirect to :%d", ru.verdict.port))
	}
	return strings.Join(parts, " ")
}

func (m match) render(fam family) string {
	switch m.kind {
	case matchL4ProtoTCP:
		return "meta l4proto tcp"
	case matchL4ProtoNotTCP:
		return "meta l4proto != tcp"
	case matchIifname:
		return fmt.Sprintf("iifname %q", m.name)
	case matchOifname:
		return fmt.Sprintf("oifname %q", m.name)
	case matchSkuid:
		return fmt.Sprintf("meta skuid %d", m.uid)
	case matchTCPDport:
		return fmt.Sprintf("tcp dport %d", m.port)
	case matchDaddr:
		proto, nfproto := "ip", "ipv4"
		if m.prefix.Addr().Is6() {
			proto, nfproto = "ip6", "ipv6"
		}
		switch {
		case m.prefix.Bits() == 0 && fam == familyInet:
			// Every address of one version: only the version is checked.
			return "meta nfproto " + nfproto
		case m.prefix.Bits() == 0:
			return ""
		case m.prefix.IsSingleIP():
			return fmt.Sprintf("%s daddr %s", proto, m.prefix.Addr())
		default:
			return fmt.Sprintf("%s daddr %s", proto, m.prefix)
		}
	}
	return fmt.Sprintf("<unknown match %d>", m.kind)
}
