package redirect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Apply programs the redirect rules r into the network namespace of the calling thread (for a
// Go program that has not called setns, the process's), replacing any Trellis table there.
// Old tables are deleted and the new ones created in one netlink batch, which the kernel
// applies atomically: there is never a moment without rules, and a failure leaves the
// previous rules in place.
//
// Apply uses one inet table when the kernel has NAT chains in inet tables (Linux 5.2 and
// later), and an ip and an ip6 table otherwise.
func Apply(r Rules) error {
	if err := r.Validate(); err != nil {
		return fmt.Errorf("redirect rules: %w", err)
	}
	err := apply(r, layoutInet)
	if err == nil || !inetNATUnsupported(err) {
		return err
	}
	if errSplit := apply(r, layoutSplit); errSplit != nil {
		return fmt.Errorf("%w (before that, the kernel refused NAT chains in an inet table: %v)", errSplit, err)
	}
	return nil
}

// Remove deletes the Trellis tables from the calling thread's network namespace. Removing
// rules that are not there is not an error.
func Remove() error {
	c, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return netlinkError("open nftables netlink socket", err)
	}
	defer func() { _ = c.CloseLasting() }()
	if err := deleteOurTables(c); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return netlinkError("delete the trellis nftables tables", err)
	}
	return nil
}

// apply replaces the Trellis tables with r laid out as l, in one batch.
func apply(r Rules, l layout) error {
	c, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return netlinkError("open nftables netlink socket", err)
	}
	defer func() { _ = c.CloseLasting() }()
	if err := deleteOurTables(c); err != nil {
		return err
	}
	for _, t := range r.build(l) {
		t.program(c)
	}
	if err := c.Flush(); err != nil {
		return netlinkError(fmt.Sprintf("program nftables (table %s)", l), err)
	}
	return nil
}

// deleteOurTables queues the deletion of every table named trellis in the families Trellis
// uses, whichever layout an earlier Apply chose.
func deleteOurTables(c *nftables.Conn) error {
	tables, err := c.ListTables()
	if err != nil {
		return netlinkError("list nftables tables", err)
	}
	for _, t := range tables {
		if t.Name != tableName {
			continue
		}
		switch t.Family {
		case nftables.TableFamilyINet, nftables.TableFamilyIPv4, nftables.TableFamilyIPv6:
			c.DelTable(t)
		}
	}
	return nil
}

// permissionError reads as ErrNetAdmin and unwraps to both ErrNetAdmin and netlink's error.
type permissionError struct{ cause error }

func (e *permissionError) Error() string   { return ErrNetAdmin.Error() }
func (e *permissionError) Unwrap() []error { return []error{ErrNetAdmin, e.cause} }

func netlinkError(op string, err error) error {
	if errors.Is(err, unix.EPERM) {
		return &permissionError{cause: err}
	}
	return fmt.Errorf("%s: %w", op, err)
}

// inetNATUnsupported reports whether err is how a kernel without NAT chains in inet tables
// (before 5.2) refuses one: the chain type "nat" does not exist for the family.
func inetNATUnsupported(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP)
}

func (f family) nftables() nftables.TableFamily {
	switch f {
	case familyIP:
		return nftables.TableFamilyIPv4
	case familyIP6:
		return nftables.TableFamilyIPv6
	default:
		return nftables.TableFamilyINet
	}
}

// program queues the table, its chains, then its rules (every chain exists before a rule
// can jump to it).
func (t table) program(c *nftables.Conn) {
	nt := c.AddTable(&nftables.Table{Name: tableName, Family: t.family.nftables()})
	chains := make([]*nftables.Chain, len(t.chains))
	for i, ch := range t.chains {
		chains[i] = c.AddChain(ch.nftables(nt))
	}
	for i, ch := range t.chains {
		for _, ru := range ch.rules {
			c.AddRule(&nftables.Rule{Table: nt, Chain: chains[i], Exprs: ru.compile(t.family)})
		}
	}
}

func (ch chain) nftables(t *nftables.Table) *nftables.Chain {
	nc := &nftables.Chain{Name: ch.name, Table: t}
	switch ch.hook {
	case hookPrerouting:
		nc.Hooknum = nftables.ChainHookPrerouting
	case hookOutput:
		nc.Hooknum = nftables.ChainHookOutput
	default:
		return nc
	}
	accept := nftables.ChainPolicyAccept
	nc.Type = nftables.ChainTypeNAT
	nc.Priority = nftables.ChainPriorityRef(natPriority)
	nc.Policy = &accept
	return nc
}

// The register every match loads into: NFT_REG_1, as nft uses.
const reg = 1

// compile returns the rule's netlink expressions, the ones nft generates for the text that
// render prints (so that `nft list ruleset` shows exactly Render's output).
func (ru rule) compile(fam family) []expr.Any {
	var out []expr.Any
	for _, m := range ru.matches {
		out = append(out, m.compile(fam)...)
	}
	switch ru.verdict.kind {
	case verdictReturn:
		out = append(out, &expr.Verdict{Kind: expr.VerdictReturn})
	case verdictGoto:
		out = append(out, &expr.Verdict{Kind: expr.VerdictGoto, Chain: ru.verdict.chain})
	case verdictRedirect:
		out = append(out,
			&expr.Immediate{Register: reg, Data: binary.BigEndian.AppendUint16(nil, ru.verdict.port)},
			&expr.Redir{RegisterProtoMin: reg, RegisterProtoMax: reg, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED},
		)
	}
	return out
}

func (m match) compile(fam family) []expr.Any {
	switch m.kind {
	case matchL4ProtoTCP:
		return metaCmp(expr.MetaKeyL4PROTO, expr.CmpOpEq, []byte{unix.IPPROTO_TCP})
	case matchL4ProtoNotTCP:
		return metaCmp(expr.MetaKeyL4PROTO, expr.CmpOpNeq, []byte{unix.IPPROTO_TCP})
	case matchIifname:
		return metaCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, ifname(m.name))
	case matchOifname:
		return metaCmp(expr.MetaKeyOIFNAME, expr.CmpOpEq, ifname(m.name))
	case matchSkuid:
		// Socket UIDs are in host byte order.
		return metaCmp(expr.MetaKeySKUID, expr.CmpOpEq, binary.NativeEndian.AppendUint32(nil, m.uid))
	case matchTCPDport:
		return append(metaCmp(expr.MetaKeyL4PROTO, expr.CmpOpEq, []byte{unix.IPPROTO_TCP}),
			&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: binary.BigEndian.AppendUint16(nil, m.port)},
		)
	case matchDaddr:
		return daddrCompile(fam, m.prefix)
	}
	panic(fmt.Sprintf("redirect: no compilation for match kind %d", m.kind))
}

func metaCmp(key expr.MetaKey, op expr.CmpOp, data []byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: reg},
		&expr.Cmp{Op: op, Register: reg, Data: data},
	}
}

// ifname is an interface name as the kernel compares it: NUL-padded to IFNAMSIZ, so that "lo"
// does not also match "lo0".
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

// daddrCompile matches the destination address against p as nft does: whole bytes are
// compared directly, other prefix lengths through a mask. An inet table first checks the
// packet's IP version.
func daddrCompile(fam family, p netip.Prefix) []expr.Any {
	var out []expr.Any
	offset, nfproto := uint32(16), byte(unix.NFPROTO_IPV4) // struct iphdr.daddr
	if p.Addr().Is6() {
		offset, nfproto = 24, unix.NFPROTO_IPV6 // struct ipv6hdr.daddr
	}
	if fam == familyInet {
		out = metaCmp(expr.MetaKeyNFPROTO, expr.CmpOpEq, []byte{nfproto})
	}
	if p.Bits() == 0 {
		return out
	}
	addr := p.Masked().Addr().AsSlice()
	if p.Bits()%8 == 0 {
		n := p.Bits() / 8
		return append(out,
			&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(n)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: addr[:n]},
		)
	}
	mask := make([]byte, len(addr))
	for i := range p.Bits() {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return append(out,
		&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(len(addr))},
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: uint32(len(addr)), Mask: mask, Xor: make([]byte, len(addr))},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: addr},
	)
}
