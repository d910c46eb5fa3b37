package podspec

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// The pod annotations (and the one label) the injector reads or writes. docs/injection.md
// lists each with its default.
const (
	// AnnotationPrefix is the prefix of every Trellis pod annotation. An annotation under it
	// that the injector does not know is refused, so that a typo is not silently ignored.
	AnnotationPrefix = "trellis.dev/"

	// InjectKey, as a pod label or annotation, opts the pod out with "false" or "disabled"
	// ("true" and "enabled" are accepted and change nothing). As a namespace label with
	// "enabled" it turns injection on for the namespace.
	InjectKey = "trellis.dev/inject"

	InboundExcludePortsAnnotation  = "trellis.dev/inbound-exclude-ports"
	OutboundExcludePortsAnnotation = "trellis.dev/outbound-exclude-ports"
	OutboundExcludeCIDRsAnnotation = "trellis.dev/outbound-exclude-cidrs"
	ProxyCPURequestAnnotation      = "trellis.dev/proxy-cpu-request"
	ProxyCPULimitAnnotation        = "trellis.dev/proxy-cpu-limit"
	ProxyMemoryRequestAnnotation   = "trellis.dev/proxy-memory-request"
	ProxyMemoryLimitAnnotation     = "trellis.dev/proxy-memory-limit"
	LogLevelAnnotation             = "trellis.dev/log-level"
	DrainDurationAnnotation        = "trellis.dev/drain-duration"
	RewriteAppProbesAnnotation     = "trellis.dev/rewrite-app-probes"
	NativeSidecarAnnotation        = "trellis.dev/native-sidecar"

	// StatusAnnotation is written by the injector: what it added (JSON, see Status).
	StatusAnnotation = "trellis.dev/status"
	// OriginalProbesAnnotation is written by the injector: the application's probes before
	// they were rewritten (JSON, see AppProbes).
	OriginalProbesAnnotation = "trellis.dev/original-probes"

	// DefaultContainerAnnotation tells kubectl which container logs and exec default to.
	DefaultContainerAnnotation = "kubectl.kubernetes.io/default-container"
)

// KnownAnnotations are the trellis.dev/ pod annotations the injector accepts.
var KnownAnnotations = []string{
	InjectKey,
	InboundExcludePortsAnnotation, OutboundExcludePortsAnnotation, OutboundExcludeCIDRsAnnotation,
	ProxyCPURequestAnnotation, ProxyCPULimitAnnotation, ProxyMemoryRequestAnnotation, ProxyMemoryLimitAnnotation,
	LogLevelAnnotation, DrainDurationAnnotation, RewriteAppProbesAnnotation, NativeSidecarAnnotation,
	StatusAnnotation, OriginalProbesAnnotation,
}

// settings is what one pod gets: the configuration with its annotations applied.
type settings struct {
	inboundExclude, outboundExclude []int32
	outboundCIDRs                   []netip.Prefix
	resources                       corev1.ResourceRequirements
	logLevel                        string
	drain                           time.Duration
	rewriteProbes                   bool
	native                          bool
}

// optOut reads the inject label and annotation: true when either says "false" or
// "disabled"; an error when either says something else than those or "true"/"enabled".
func optOut(pod *corev1.Pod) (bool, error) {
	var errs []error
	out := false
	check := func(what string, m map[string]string) {
		v, ok := m[InjectKey]
		if !ok {
			return
		}
		switch v {
		case "false", "disabled":
			out = true
		case "true", "enabled":
		default:
			errs = append(errs, fmt.Errorf(`%s %s=%q: use "false" (or "disabled") to opt the pod out; pods in a namespace labelled %s=enabled are injected by default`, what, InjectKey, v, InjectKey))
		}
	}
	check("label", pod.Labels)
	check("annotation", pod.Annotations)
	if out {
		return true, nil // an explicit opt-out wins over a typo in the other place
	}
	return false, joinProblems(errs)
}

// settingsFor applies the pod's annotations to cfg. It reports every problem, each
// naming the annotation, the value and what to write instead.
func settingsFor(pod *corev1.Pod, cfg Config) (settings, error) {
	s := settings{
		inboundExclude:  slices.Clone(cfg.InboundExcludePorts),
		outboundExclude: slices.Clone(cfg.OutboundExcludePorts),
		outboundCIDRs:   slices.Clone(cfg.OutboundExcludeCIDRs),
		resources:       *cfg.ProxyResources.DeepCopy(),
		logLevel:        cfg.LogLevel,
		drain:           cfg.DrainDuration,
		rewriteProbes:   cfg.RewriteAppProbes,
		native:          cfg.NativeSidecars,
	}
	if s.resources.Requests == nil {
		s.resources.Requests = corev1.ResourceList{}
	}
	if s.resources.Limits == nil {
		s.resources.Limits = corev1.ResourceList{}
	}
	var errs []error
	bad := func(key, value, format string, args ...any) {
		errs = append(errs, fmt.Errorf("annotation %s=%q: %s", key, value, fmt.Sprintf(format, args...)))
	}
	keys := make([]string, 0, len(pod.Annotations))
	for k := range pod.Annotations {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, key := range keys {
		if !strings.HasPrefix(key, AnnotationPrefix) {
			continue
		}
		v := pod.Annotations[key]
		switch key {
		case InjectKey, StatusAnnotation, OriginalProbesAnnotation:
			// read by optOut, or written by the injector
		case InboundExcludePortsAnnotation, OutboundExcludePortsAnnotation:
			ports, err := parsePorts(v)
			if err != nil {
				bad(key, v, "%v; write a comma-separated list of ports 1-65535, such as \"8080,9090\"", err)
				continue
			}
			if key == InboundExcludePortsAnnotation {
				s.inboundExclude = append(s.inboundExclude, ports...)
			} else {
				s.outboundExclude = append(s.outboundExclude, ports...)
			}
		case OutboundExcludeCIDRsAnnotation:
			cidrs, err := parseCIDRs(v)
			if err != nil {
				bad(key, v, "%v; write a comma-separated list of CIDRs, such as \"10.0.0.0/8,fd00::/8\"", err)
				continue
			}
			s.outboundCIDRs = append(s.outboundCIDRs, cidrs...)
		case ProxyCPURequestAnnotation, ProxyCPULimitAnnotation, ProxyMemoryRequestAnnotation, ProxyMemoryLimitAnnotation:
			q, err := resource.ParseQuantity(v)
			if err != nil || q.Sign() <= 0 {
				example := "\"100m\" or \"1\""
				if strings.Contains(key, "memory") {
					example = "\"128Mi\" or \"1Gi\""
				}
				bad(key, v, "not a positive Kubernetes quantity; write one such as %s", example)
				continue
			}
			name := corev1.ResourceCPU
			if strings.Contains(key, "memory") {
				name = corev1.ResourceMemory
			}
			if strings.HasSuffix(key, "-request") {
				s.resources.Requests[name] = q
			} else {
				s.resources.Limits[name] = q
			}
		case LogLevelAnnotation:
			if err := checkLogLevel(v); err != nil {
				bad(key, v, "use debug, info, warn or error")
				continue
			}
			s.logLevel = v
		case DrainDurationAnnotation:
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				bad(key, v, "not a positive duration; write one such as \"10s\" or \"1m30s\"")
				continue
			}
			grace := int64(corev1.DefaultTerminationGracePeriodSeconds)
			if pod.Spec.TerminationGracePeriodSeconds != nil {
				grace = *pod.Spec.TerminationGracePeriodSeconds
			}
			if d >= time.Duration(grace)*time.Second {
				bad(key, v, "the pod's terminationGracePeriodSeconds is %d, so the kubelet would kill the proxy before it drains; shorten the drain or raise terminationGracePeriodSeconds", grace)
				continue
			}
			s.drain = d
		case RewriteAppProbesAnnotation, NativeSidecarAnnotation:
			b, err := strconv.ParseBool(v)
			if err != nil {
				bad(key, v, "use \"true\" or \"false\"")
				continue
			}
			if key == RewriteAppProbesAnnotation {
				s.rewriteProbes = b
			} else {
				s.native = b
			}
		default:
			msg := "not a Trellis annotation"
			if guess := closest(key, KnownAnnotations); guess != "" {
				msg += fmt.Sprintf("; did you mean %s?", guess)
			}
			errs = append(errs, fmt.Errorf("annotation %s: %s (docs/injection.md lists them all)", key, msg))
		}
	}
	for name, req := range s.resources.Requests {
		if lim, ok := s.resources.Limits[name]; ok && req.Cmp(lim) > 0 {
			errs = append(errs, fmt.Errorf("the proxy's %s request %s is above its limit %s (annotations %s and %s, or the mesh default); raise the limit or lower the request",
				name, req.String(), lim.String(), resourceAnnotation(name, "request"), resourceAnnotation(name, "limit")))
		}
	}
	if len(errs) > 0 {
		return settings{}, joinProblems(errs)
	}
	s.inboundExclude = sortedUnique(s.inboundExclude)
	s.outboundExclude = sortedUnique(s.outboundExclude)
	s.outboundCIDRs = uniquePrefixes(s.outboundCIDRs)
	return s, nil
}

// joinProblems makes one line of several problems, for an admission message.
func joinProblems(errs []error) error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	msgs := make([]string, len(errs))
	for i, err := range errs {
		msgs[i] = err.Error()
	}
	return errors.New(strings.Join(msgs, "; "))
}

func resourceAnnotation(name corev1.ResourceName, kind string) string {
	return AnnotationPrefix + "proxy-" + string(name) + "-" + kind
}

func parsePorts(v string) ([]int32, error) {
	var out []int32
	for f := range strings.SplitSeq(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.ParseInt(f, 10, 32)
		if err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("%q is not a port", f)
		}
		out = append(out, int32(n))
	}
	return out, nil
}

func parseCIDRs(v string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for f := range strings.SplitSeq(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR", f)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func sortedUnique(ports []int32) []int32 {
	out := slices.Clone(ports)
	slices.Sort(out)
	return slices.Compact(out)
}

func uniquePrefixes(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// closest returns the candidate at the smallest edit distance from s, if it is close
// enough to be a likely typo.
func closest(s string, candidates []string) string {
	best, bestDist := "", 4
	for _, c := range candidates {
		if d := editDistance(s, c); d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
