package redirect

import (
	"flag"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-mesh/trellis/internal/golden"
)

var update = flag.Bool("update", false, "rewrite testdata/*.nft from the current rendering")

// comparePrefixes lets go-cmp compare netip values, whose fields are unexported.
var comparePrefixes = cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })

// exclusionRules exercise every kind of exclusion, in a deliberately unsorted order with a
// duplicate, and both byte-aligned and masked networks of both IP versions.
func exclusionRules() Rules {
	r := DefaultRules()
	r.InboundExcludePorts = []uint16{9091, 22, 22}
	r.OutboundExcludePorts = []uint16{8081, 25}
	r.OutboundExcludeCIDRs = []netip.Prefix{
		netip.MustParsePrefix("fd00:1:2::/60"),
		netip.MustParsePrefix("169.254.169.254/32"),
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("2001:db8::1/128"),
	}
	return r
}

func TestRenderGolden(t *testing.T) {
	tests := []struct {
		name   string // sentence
		golden string
		render func() string
	}{
		{
			name:   "default rules redirect all TCP in one inet table",
			golden: "default.nft",
			render: func() string { return Render(DefaultRules()) },
		},
		{
			name:   "exclusions are sorted, deduplicated and listed before the redirects",
			golden: "exclusions.nft",
			render: func() string { return Render(exclusionRules()) },
		},
		{
			name:   "the ip and ip6 layout gives each table only the rules of its IP version",
			golden: "exclusions-split.nft",
			render: func() string { return render(exclusionRules().build(layoutSplit)) },
		},
		{
			name:   "a different proxy UID and capture ports appear everywhere they are used",
			golden: "custom-ports.nft",
			render: func() string {
				r := DefaultRules()
				r.ProxyUID, r.OutboundPort, r.InboundPort = 2000, 16001, 16006
				r.OutboundExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}
				return Render(r)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.render()
			golden.Check(t, filepath.Join("testdata", tt.golden), []byte(got), *update, "the rendering")
		})
	}
}

func TestRenderIsStable(t *testing.T) {
	r := exclusionRules()
	before := Render(r)
	if again := Render(r); again != before {
		t.Errorf("a second Render of the same rules differs:\n%s", cmp.Diff(before, again))
	}
	if diff := cmp.Diff(exclusionRules(), r, comparePrefixes); diff != "" {
		t.Errorf("Render changed its input (-before +after):\n%s", diff)
	}
}

func TestRenderedRulesOrder(t *testing.T) {
	out := Render(exclusionRules())
	tests := []struct {
		name          string
		before, after string
	}{
		{"loopback destinations return before the hairpin rule", "ip6 daddr ::1 return", `oifname "lo" meta skuid 1337 goto inbound`},
		{"the proxy's hairpin goes inbound before the proxy UID returns", `oifname "lo" meta skuid 1337 goto inbound`, "\t\tmeta skuid 1337 return"},
		{"exclusions return before the outbound redirect", "ip daddr 172.16.0.0/12 return", "redirect to :15001"},
		{"proxy ports return before the inbound redirect", "tcp dport 15021 return", "redirect to :15006"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, a := strings.Index(out, tt.before), strings.Index(out, tt.after)
			if b < 0 || a < 0 || b > a {
				t.Errorf("want %q before %q in:\n%s", tt.before, tt.after, out)
			}
		})
	}
}

func TestRulesValidate(t *testing.T) {
	tests := []struct {
		name    string
		change  func(*Rules)
		wantErr string // substring; "" means valid
	}{
		{"default rules are valid", func(*Rules) {}, ""},
		{"exclusions of both IP versions are valid", func(r *Rules) { *r = exclusionRules() }, ""},
		{"an outbound port of 0 is refused", func(r *Rules) { r.OutboundPort = 0 }, "outbound capture port is 0"},
		{"an inbound port of 0 is refused", func(r *Rules) { r.InboundPort = 0 }, "inbound capture port is 0"},
		{"one port for both listeners is refused", func(r *Rules) { r.InboundPort = r.OutboundPort }, "must be different listeners"},
		{"a root proxy is refused", func(r *Rules) { r.ProxyUID = 0 }, "must not run as root"},
		{"an excluded inbound port 0 is refused", func(r *Rules) { r.InboundExcludePorts = []uint16{0} }, "inbound excluded port 0"},
		{"an excluded outbound port 0 is refused", func(r *Rules) { r.OutboundExcludePorts = []uint16{80, 0} }, "outbound excluded port 0"},
		{"a zero prefix is refused", func(r *Rules) { r.OutboundExcludeCIDRs = []netip.Prefix{{}} }, "is not a CIDR"},
		{"host bits after the prefix are refused with the fix", func(r *Rules) {
			r.OutboundExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("10.1.2.3/8")}
		}, "did you mean 10.0.0.0/8?"},
		{"an IPv4-mapped network is refused with its IPv4 form", func(r *Rules) {
			r.OutboundExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")}
		}, "write it as IPv4 (10.0.0.0/8)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := DefaultRules()
			tt.change(&r)
			err := r.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Validate: %v, want no error", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Validate: %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}
