package redirect

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
)

// Options are the flags of `trellis-proxy init` as a user, or the injector from pod
// annotations, writes them: lists are comma-separated strings, checked by Rules.
type Options struct {
	ProxyUID             uint32
	InboundExcludePorts  []string
	OutboundExcludePorts []string
	OutboundExcludeCIDRs []string
}

// DefaultOptions give DefaultRules.
func DefaultOptions() Options { return Options{ProxyUID: DefaultProxyUID} }

// AddFlags binds the options to a flag set.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.Uint32Var(&o.ProxyUID, "proxy-uid", o.ProxyUID, "`UID` the proxy runs as; its own connections are not redirected")
	fs.StringSliceVar(&o.InboundExcludePorts, "inbound-exclude-ports", o.InboundExcludePorts,
		"comma-separated inbound `ports` that reach the application directly, not through the proxy (the proxy's ports 15000, 15001, 15006, 15020 and 15021 always do)")
	fs.StringSliceVar(&o.OutboundExcludePorts, "outbound-exclude-ports", o.OutboundExcludePorts,
		"comma-separated destination `ports` the application reaches directly, not through the proxy")
	fs.StringSliceVar(&o.OutboundExcludeCIDRs, "outbound-exclude-cidrs", o.OutboundExcludeCIDRs,
		"comma-separated destination `networks` (CIDRs such as 10.0.0.0/8 or fd00::/8, or single addresses) the application reaches directly")
}

// Rules checks the options and returns the rules they describe. Errors name the flag, the
// value and what to write instead.
func (o Options) Rules() (Rules, error) {
	r := DefaultRules()
	if o.ProxyUID == 0 {
		return Rules{}, fmt.Errorf("--proxy-uid 0: the proxy must not run as root, or every root process in the pod would bypass the mesh; use the proxy container's runAsUser (default %d)", DefaultProxyUID)
	}
	r.ProxyUID = o.ProxyUID
	var err error
	if r.InboundExcludePorts, err = parsePorts(o.InboundExcludePorts); err != nil {
		return Rules{}, fmt.Errorf("--inbound-exclude-ports: %w", err)
	}
	if r.OutboundExcludePorts, err = parsePorts(o.OutboundExcludePorts); err != nil {
		return Rules{}, fmt.Errorf("--outbound-exclude-ports: %w", err)
	}
	if r.OutboundExcludeCIDRs, err = parseCIDRs(o.OutboundExcludeCIDRs); err != nil {
		return Rules{}, fmt.Errorf("--outbound-exclude-cidrs: %w", err)
	}
	if err := r.Validate(); err != nil {
		return Rules{}, err
	}
	return r, nil
}

// fields splits list items further on commas (a flag may be given as "80, 443") and drops
// blanks, so that an empty annotation means an empty list.
func fields(list []string) []string {
	var out []string
	for _, item := range list {
		for f := range strings.SplitSeq(item, ",") {
			if f = strings.TrimSpace(f); f != "" {
				out = append(out, f)
			}
		}
	}
	return out
}

func parsePorts(list []string) ([]uint16, error) {
	var ports []uint16
	for _, f := range fields(list) {
		p, err := strconv.ParseUint(f, 10, 16)
		if err != nil || p == 0 {
			return nil, fmt.Errorf("%q is not a port: use numbers from 1 to 65535 separated by commas, such as 22,8081", f)
		}
		ports = append(ports, uint16(p))
	}
	return ports, nil
}

func parseCIDRs(list []string) ([]netip.Prefix, error) {
	var prefixes []netip.Prefix
	for _, f := range fields(list) {
		var p netip.Prefix
		if strings.Contains(f, "/") {
			var err error
			if p, err = netip.ParsePrefix(f); err != nil {
				return nil, fmt.Errorf("%q is not a CIDR: use an address and a prefix length, such as 10.0.0.0/8 or fd00::/8", f)
			}
		} else {
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, fmt.Errorf("%q is neither a CIDR nor an IP address: use forms such as 10.0.0.0/8, fd00::/8 or 192.0.2.7", f)
			}
			if a.Zone() != "" {
				return nil, fmt.Errorf("%q has a zone: excluded destinations cannot name an interface", f)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if err := checkPrefix(p); err != nil {
			return nil, err
		}
		prefixes = append(prefixes, p)
	}
	return prefixes, nil
}
