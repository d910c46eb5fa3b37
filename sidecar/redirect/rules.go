package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// Defaults of Rules: the Istio numbers, so that people's habits carry over.
const (
	DefaultProxyUID     uint32 = 1337
	DefaultOutboundPort uint16 = 15001
	DefaultInboundPort  uint16 = 15006
)

// ErrNetAdmin is what Apply and Remove return (wrapping the EPERM from netlink) when the
// process may not change nftables.
var ErrNetAdmin = errors.New("programming nftables needs the NET_ADMIN capability: run trellis-proxy init as root with NET_ADMIN and NET_RAW (the injector's init container does)")

// proxyPorts are the sidecar's own listening ports. Inbound connections to them are never
// redirected (they are for the proxy itself: admin, metrics, health, rewritten probes), in
// addition to Rules.InboundExcludePorts.
var proxyPorts = []uint16{15000, 15001, 15006, 15020, 15021}

// Rules describe the interception of one pod.
type Rules struct {
	// ProxyUID is the UID the proxy runs as. Its outbound connections are not redirected,
	// except to the pod's own IP (see the package documentation on hairpin traffic).
	ProxyUID uint32
	// OutboundPort is the proxy's outbound capture listener.
	OutboundPort uint16
	// InboundPort is the proxy's inbound capture listener.
	InboundPort uint16
	// InboundExcludePorts reach the application directly, not through the proxy. The
	// proxy's own ports (15000, 15001, 15006, 15020, 15021, OutboundPort and InboundPort)
	// are always excluded and need not be listed.
	InboundExcludePorts []uint16
	// OutboundExcludePorts are destination ports the application reaches directly.
	OutboundExcludePorts []uint16
	// OutboundExcludeCIDRs are destination networks the application reaches directly.
	OutboundExcludeCIDRs []netip.Prefix
}

// DefaultRules redirect all TCP: outbound to 15001, inbound to 15006, with the proxy running
// as UID 1337.
func DefaultRules() Rules {
	return Rules{ProxyUID: DefaultProxyUID, OutboundPort: DefaultOutboundPort, InboundPort: DefaultInboundPort}
}

// Validate reports the first thing wrong with r, saying what to do about it.
func (r Rules) Validate() error {
	if r.OutboundPort == 0 {
		return fmt.Errorf("outbound capture port is 0: use the port the proxy's outbound listener listens on (default %d)", DefaultOutboundPort)
	}
	if r.InboundPort == 0 {
		return fmt.Errorf("inbound capture port is 0: use the port the proxy's inbound listener listens on (default %d)", DefaultInboundPort)
	}
	if r.OutboundPort == r.InboundPort {
		return fmt.Errorf("outbound and inbound capture ports are both %d: they must be different listeners", r.InboundPort)
	}
	if r.ProxyUID == 0 {
		return fmt.Errorf("proxy UID is 0: the proxy must not run as root, or every root process in the pod would bypass the mesh (default %d)", DefaultProxyUID)
	}
	for _, p := range r.InboundExcludePorts {
		if p == 0 {
			return fmt.Errorf("inbound excluded port 0: use ports from 1 to 65535")
		}
	}
	for _, p := range r.OutboundExcludePorts {
		if p == 0 {
			return fmt.Errorf("outbound excluded port 0: use ports from 1 to 65535")
		}
	}
	for _, p := range r.OutboundExcludeCIDRs {
		if err := checkPrefix(p); err != nil {
			return fmt.Errorf("outbound excluded CIDR: %w", err)
		}
	}
	return nil
}

func checkPrefix(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return fmt.Errorf("%q is not a CIDR: use an address and a prefix length, such as 10.0.0.0/8 or fd00::/8", p.String())
	case p.Addr().Is4In6():
		return fmt.Errorf("%s is an IPv4-mapped IPv6 network: write it as IPv4 (%s)", p, netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0)).Masked())
	case p != p.Masked():
		return fmt.Errorf("%s has bits set after the prefix length: did you mean %s?", p, p.Masked())
	}
	return nil
}

// inboundExcluded is the sorted, deduplicated list of inbound ports that reach their
// listener directly: the proxy's own and the user's.
func (r Rules) inboundExcluded() []uint16 {
	ports := slices.Concat(proxyPorts, []uint16{r.OutboundPort, r.InboundPort}, r.InboundExcludePorts)
	return sortedUnique(ports)
}

func sortedUnique(ports []uint16) []uint16 {
	ports = slices.Clone(ports)
	slices.Sort(ports)
	return slices.Compact(ports)
}

// sortedPrefixes returns the prefixes sorted (IPv4 first) and deduplicated.
func sortedPrefixes(ps []netip.Prefix) []netip.Prefix {
	ps = slices.Clone(ps)
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(ps)
}
