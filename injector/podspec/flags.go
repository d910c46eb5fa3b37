package podspec

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// AddFlags binds the proxy's mesh-wide knobs to fs, for the control plane (the webhook) and
// `mesh inject` alike, so that both inject the same pod. The trust domain and the control
// plane's address are left to the caller, which knows them under its own flag names.
func (c *Config) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.ProxyImage, "proxy-image", c.ProxyImage, "image of the injected proxy and its init container (entrypoint trellis-proxy)")
	fs.StringVar((*string)(&c.ImagePullPolicy), "proxy-image-pull-policy", string(c.ImagePullPolicy), "image pull policy of the injected containers: Always, IfNotPresent or Never (empty: the Kubernetes default)")
	fs.BoolVar(&c.NativeSidecars, "native-sidecars", c.NativeSidecars, "inject the proxy as a native sidecar (Kubernetes 1.29 and later); false injects a regular container for older clusters")
	fs.StringVar(&c.LogLevel, "proxy-log-level", c.LogLevel, "log level of injected proxies: debug, info, warn or error")
	fs.DurationVar(&c.DrainDuration, "proxy-drain-duration", c.DrainDuration, "how long an injected proxy lets in-flight requests finish after SIGTERM")
	fs.BoolVar(&c.RewriteAppProbes, "rewrite-app-probes", c.RewriteAppProbes, "send applications' HTTP, TCP and gRPC probes through the proxy's status port (:15020)")
	fs.Int32SliceVar(&c.InboundExcludePorts, "inbound-exclude-ports", c.InboundExcludePorts, "inbound ports never redirected to the proxy, in every pod")
	fs.Int32SliceVar(&c.OutboundExcludePorts, "outbound-exclude-ports", c.OutboundExcludePorts, "outbound ports never redirected to the proxy, in every pod")
	fs.Var(&prefixesValue{&c.OutboundExcludeCIDRs}, "outbound-exclude-cidrs", "outbound CIDRs never redirected to the proxy, in every pod (comma-separated)")
	for _, r := range []struct {
		list *corev1.ResourceList
		name corev1.ResourceName
		flag string
	}{
		{&c.ProxyResources.Requests, corev1.ResourceCPU, "proxy-cpu-request"},
		{&c.ProxyResources.Limits, corev1.ResourceCPU, "proxy-cpu-limit"},
		{&c.ProxyResources.Requests, corev1.ResourceMemory, "proxy-memory-request"},
		{&c.ProxyResources.Limits, corev1.ResourceMemory, "proxy-memory-limit"},
	} {
		fs.Var(&quantityValue{list: r.list, name: r.name}, r.flag, "the injected proxy's "+strings.ReplaceAll(r.flag[len("proxy-"):], "-", " ")+" (a Kubernetes quantity)")
	}
}

// quantityValue is one entry of a ResourceList as a flag.
type quantityValue struct {
	list *corev1.ResourceList
	name corev1.ResourceName
}

func (q *quantityValue) String() string {
	if q.list == nil || *q.list == nil {
		return ""
	}
	v, ok := (*q.list)[q.name]
	if !ok {
		return ""
	}
	return v.String()
}

func (q *quantityValue) Set(s string) error {
	v, err := resource.ParseQuantity(s)
	if err != nil || v.Sign() <= 0 {
		return fmt.Errorf("%q is not a positive Kubernetes quantity, such as 100m or 128Mi", s)
	}
	if *q.list == nil {
		*q.list = corev1.ResourceList{}
	}
	(*q.list)[q.name] = v
	return nil
}

func (q *quantityValue) Type() string { return "quantity" }

// prefixesValue is a comma-separated list of CIDRs as a flag.
type prefixesValue struct{ p *[]netip.Prefix }

func (v *prefixesValue) String() string { return joinPrefixes(*v.p) }

func (v *prefixesValue) Set(s string) error {
	ps, err := parseCIDRs(s)
	if err != nil {
		return fmt.Errorf("%w: write CIDRs such as 10.0.0.0/8,fd00::/8", err)
	}
	*v.p = append(*v.p, ps...)
	return nil
}

func (v *prefixesValue) Type() string { return "cidrs" }
