package redirect

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"
)

// parseFlags binds DefaultOptions to a fresh flag set, as trellis-proxy init does, and
// returns the rules the arguments describe.
func parseFlags(args ...string) (Rules, error) {
	o := DefaultOptions()
	fs := pflag.NewFlagSet("init", pflag.ContinueOnError)
	fs.SetOutput(&strings.Builder{})
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return Rules{}, err
	}
	return o.Rules()
}

func TestOptionsRules(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want Rules
	}{
		{
			name: "no flags give the default rules",
			want: DefaultRules(),
		},
		{
			name: "every flag is honoured",
			args: []string{
				"--proxy-uid=2000",
				"--inbound-exclude-ports=22,9091",
				"--outbound-exclude-ports=25",
				"--outbound-exclude-cidrs=10.0.0.0/8,fd00::/8",
			},
			want: Rules{
				ProxyUID: 2000, OutboundPort: 15001, InboundPort: 15006,
				InboundExcludePorts:  []uint16{22, 9091},
				OutboundExcludePorts: []uint16{25},
				OutboundExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")},
			},
		},
		{
			name: "repeated flags, spaces and empty items are accepted as annotations write them",
			args: []string{
				"--outbound-exclude-ports", "25, 8081",
				"--outbound-exclude-ports", "",
				"--inbound-exclude-ports=",
				"--outbound-exclude-cidrs= 192.0.2.7 ,2001:db8::1",
			},
			want: Rules{
				ProxyUID: 1337, OutboundPort: 15001, InboundPort: 15006,
				OutboundExcludePorts: []uint16{25, 8081},
				OutboundExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("2001:db8::1/128")},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFlags(tt.args...)
			if err != nil {
				t.Fatalf("parse %q: %v", tt.args, err)
			}
			if diff := cmp.Diff(tt.want, got, comparePrefixes); diff != "" {
				t.Errorf("rules (-want +got):\n%s", diff)
			}
		})
	}
}

func TestOptionsRulesErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // the whole error message
	}{
		{
			name: "a port above 65535 is refused",
			args: []string{"--inbound-exclude-ports=22,70000"},
			want: `--inbound-exclude-ports: "70000" is not a port: use numbers from 1 to 65535 separated by commas, such as 22,8081`,
		},
		{
			name: "a port that is not a number is refused",
			args: []string{"--outbound-exclude-ports=http"},
			want: `--outbound-exclude-ports: "http" is not a port: use numbers from 1 to 65535 separated by commas, such as 22,8081`,
		},
		{
			name: "port 0 is refused",
			args: []string{"--outbound-exclude-ports=0"},
			want: `--outbound-exclude-ports: "0" is not a port: use numbers from 1 to 65535 separated by commas, such as 22,8081`,
		},
		{
			name: "a port range is refused",
			args: []string{"--inbound-exclude-ports=8000-8010"},
			want: `--inbound-exclude-ports: "8000-8010" is not a port: use numbers from 1 to 65535 separated by commas, such as 22,8081`,
		},
		{
			name: "a prefix length beyond the address is refused",
			args: []string{"--outbound-exclude-cidrs=10.0.0.0/33"},
			want: `--outbound-exclude-cidrs: "10.0.0.0/33" is not a CIDR: use an address and a prefix length, such as 10.0.0.0/8 or fd00::/8`,
		},
		{
			name: "a host name is refused",
			args: []string{"--outbound-exclude-cidrs=metadata.google.internal"},
			want: `--outbound-exclude-cidrs: "metadata.google.internal" is neither a CIDR nor an IP address: use forms such as 10.0.0.0/8, fd00::/8 or 192.0.2.7`,
		},
		{
			name: "bits after the prefix length are refused with the likely meaning",
			args: []string{"--outbound-exclude-cidrs=10.1.2.3/8"},
			want: `--outbound-exclude-cidrs: 10.1.2.3/8 has bits set after the prefix length: did you mean 10.0.0.0/8?`,
		},
		{
			name: "an IPv4-mapped address is refused with its IPv4 form",
			args: []string{"--outbound-exclude-cidrs=::ffff:192.0.2.7"},
			want: `--outbound-exclude-cidrs: ::ffff:192.0.2.7/128 is an IPv4-mapped IPv6 network: write it as IPv4 (192.0.2.7/32)`,
		},
		{
			name: "an address with a zone is refused",
			args: []string{"--outbound-exclude-cidrs=fe80::1%eth0"},
			want: `--outbound-exclude-cidrs: "fe80::1%eth0" has a zone: excluded destinations cannot name an interface`,
		},
		{
			name: "proxy UID 0 is refused",
			args: []string{"--proxy-uid=0"},
			want: "--proxy-uid 0: the proxy must not run as root, or every root process in the pod would bypass the mesh; use the proxy container's runAsUser (default 1337)",
		},
		{
			name: "a negative proxy UID is refused by flag parsing",
			args: []string{"--proxy-uid=-1"},
			want: `invalid argument "-1" for "--proxy-uid" flag: strconv.ParseUint: parsing "-1": invalid syntax`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseFlags(tt.args...)
			if err == nil {
				t.Fatalf("parse %q: no error, want %q", tt.args, tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("parse %q:\n got %s\nwant %s", tt.args, err, tt.want)
			}
		})
	}
}
