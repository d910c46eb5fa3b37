// Package podspec is the sidecar injector as one pure, typed function: Inject adds the
// redirect init container and the proxy to a pod. The webhook (injector/webhook) and
// `mesh inject` both call it, so a pod injected either way is the same pod. It renders no
// templates and writes no JSON patches: the webhook diffs the result against the request.
//
// docs/injection.md describes what is added, every annotation and its default, and the
// contract of rewritten probes with the proxy.
package podspec

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// Status is the JSON of the trellis.dev/status annotation: what the injector added.
type Status struct {
	// ProxyVersion is the version of the injected proxy.
	ProxyVersion string `json:"proxyVersion"`
	// Mode is "native-sidecar" (the proxy is an init container with restartPolicy: Always)
	// or "sidecar" (a regular container, for clusters older than 1.29).
	Mode string `json:"mode"`
	// InitContainers, Containers and Volumes name what was added.
	InitContainers []string `json:"initContainers"`
	Containers     []string `json:"containers"`
	Volumes        []string `json:"volumes"`
	// RewrittenProbes counts the application probes sent through the proxy.
	RewrittenProbes int `json:"rewrittenProbes"`
}

// The modes of Status.
const (
	ModeNativeSidecar = "native-sidecar"
	ModeSidecar       = "sidecar"
)

// Inject returns a copy of pod with the Trellis sidecar added, or an unchanged copy when
// the pod is not to be injected (see SkipReason). It never changes pod. An error says what
// is wrong with the pod's trellis.dev/ annotations (or the configuration) and how to fix it.
//
// Inject is idempotent: a pod that already has the proxy comes back unchanged.
func Inject(pod *corev1.Pod, cfg Config) (*corev1.Pod, error) {
	if pod == nil {
		return nil, errors.New("no pod to inject")
	}
	out := pod.DeepCopy()
	reason, injectErr := decide(pod)
	if reason != "" {
		return out, nil
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("the injector's configuration is invalid: %w", err)
	}
	s, settingsErr := settingsFor(pod, cfg)
	rewrite := cfg.RewriteAppProbes
	if settingsErr == nil {
		rewrite = s.rewriteProbes
	}
	probes := AppProbes{}
	var probesErr error
	if rewrite {
		probes, probesErr = rewriteProbes(out)
	}
	// Every problem at once, so that one round trip fixes the pod.
	if err := joinProblems(nonNil(injectErr, settingsErr, checkReserved(pod), probesErr)); err != nil {
		return nil, err
	}

	proxy := proxyContainer(cfg, s, len(probes) > 0)
	initC := initContainer(cfg, s)
	status := Status{
		ProxyVersion:    cfg.ProxyVersion,
		Volumes:         []string{TokenVolumeName, RootCertVolumeName},
		RewrittenProbes: len(probes),
	}
	if s.native {
		// The init container first (the redirect rules), then the proxy, then the
		// application's own init containers, which so have a working network.
		proxy.RestartPolicy = ptr.To(corev1.ContainerRestartPolicyAlways)
		out.Spec.InitContainers = append([]corev1.Container{initC, proxy}, out.Spec.InitContainers...)
		status.Mode = ModeNativeSidecar
		status.InitContainers = []string{InitContainerName, ProxyContainerName}
		status.Containers = []string{}
	} else {
		// Without native sidecars nothing proxies during the init phase, so the redirect
		// rules are set last: the application's init containers keep a direct network.
		out.Spec.InitContainers = append(out.Spec.InitContainers, initC)
		if _, ok := out.Annotations[DefaultContainerAnnotation]; !ok && len(out.Spec.Containers) > 0 {
			setAnnotation(out, DefaultContainerAnnotation, out.Spec.Containers[0].Name)
		}
		out.Spec.Containers = append([]corev1.Container{proxy}, out.Spec.Containers...)
		status.Mode = ModeSidecar
		status.InitContainers = []string{InitContainerName}
		status.Containers = []string{ProxyContainerName}
	}
	out.Spec.Volumes = append(out.Spec.Volumes, volumes()...)
	if out.Spec.ServiceAccountName == "" {
		// A projected token needs it. The ServiceAccount admission plugin sets the same
		// before any webhook runs; `mesh inject` and clusters without it need it here.
		out.Spec.ServiceAccountName = out.Spec.DeprecatedServiceAccount
		if out.Spec.ServiceAccountName == "" {
			out.Spec.ServiceAccountName = "default"
		}
	}

	delete(out.Annotations, OriginalProbesAnnotation)
	if len(probes) > 0 {
		b, err := json.Marshal(probes)
		if err != nil {
			return nil, fmt.Errorf("encode the original probes: %w", err)
		}
		setAnnotation(out, OriginalProbesAnnotation, string(b))
	}
	b, err := json.Marshal(status)
	if err != nil {
		return nil, fmt.Errorf("encode the injection status: %w", err)
	}
	setAnnotation(out, StatusAnnotation, string(b))
	return out, nil
}

// SkipReason says why pod is not to be injected, or "" when it is. It is an error when the
// pod's trellis.dev/inject label or annotation has a value the injector does not know
// (and nothing else keeps the pod from being injected).
func SkipReason(pod *corev1.Pod) (string, error) {
	reason, err := decide(pod)
	if reason != "" {
		return reason, nil
	}
	return "", err
}

// decide returns the reason not to inject pod, if any, and the error of its inject label
// or annotation, if any.
func decide(pod *corev1.Pod) (string, error) {
	out, err := optOut(pod)
	switch {
	case out:
		return "the pod opts out with " + InjectKey, nil
	case pod.Spec.HostNetwork:
		return "the pod uses the host's network, which the redirect rules must not touch", nil
	case Injected(pod):
		return "the pod already has the Trellis proxy", nil
	}
	return "", err
}

func nonNil(errs ...error) []error {
	var out []error
	for _, err := range errs {
		if err != nil {
			out = append(out, err)
		}
	}
	return out
}

// Injected reports whether pod already has the proxy, as a container or an init container.
func Injected(pod *corev1.Pod) bool {
	has := func(cs []corev1.Container) bool {
		return slices.ContainsFunc(cs, func(c corev1.Container) bool { return c.Name == ProxyContainerName })
	}
	return has(pod.Spec.InitContainers) || has(pod.Spec.Containers)
}

// checkReserved refuses a pod that already uses a name or a port the injector needs.
func checkReserved(pod *corev1.Pod) error {
	var errs []error
	all := append(slices.Clone(pod.Spec.InitContainers), pod.Spec.Containers...)
	for _, c := range all {
		if c.Name == InitContainerName {
			errs = append(errs, fmt.Errorf("container name %s is reserved for Trellis's redirect container; rename the container", c.Name))
		}
		for _, p := range c.Ports {
			if slices.Contains(ReservedPorts, p.ContainerPort) {
				errs = append(errs, fmt.Errorf("container %s declares port %d, which the Trellis proxy uses (%s); move the application to another port or opt the pod out with %s: \"false\"",
					c.Name, p.ContainerPort, reservedPortsList(), InjectKey))
			}
		}
	}
	for _, v := range pod.Spec.Volumes {
		if v.Name == TokenVolumeName || v.Name == RootCertVolumeName {
			errs = append(errs, fmt.Errorf("volume name %s is reserved for the Trellis proxy; rename the volume", v.Name))
		}
	}
	return joinProblems(errs)
}

func reservedPortsList() string {
	s := make([]string, len(ReservedPorts))
	for i, p := range ReservedPorts {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ", ")
}

func setAnnotation(pod *corev1.Pod, key, value string) {
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[key] = value
}

// initContainer programs the pod's redirect rules: it needs NET_ADMIN and NET_RAW as root,
// and nothing else.
func initContainer(cfg Config, s settings) corev1.Container {
	// The proxy's own ports are never redirected (trellis-proxy init's contract).
	args := []string{"init", "--proxy-uid=" + strconv.FormatInt(cfg.ProxyUID, 10)}
	if len(s.inboundExclude) > 0 {
		args = append(args, "--inbound-exclude-ports="+joinPorts(s.inboundExclude))
	}
	if len(s.outboundExclude) > 0 {
		args = append(args, "--outbound-exclude-ports="+joinPorts(s.outboundExclude))
	}
	if len(s.outboundCIDRs) > 0 {
		args = append(args, "--outbound-exclude-cidrs="+joinPrefixes(s.outboundCIDRs))
	}
	return corev1.Container{
		Name:            InitContainerName,
		Image:           cfg.ProxyImage,
		ImagePullPolicy: cfg.ImagePullPolicy,
		Args:            args,
		Resources:       *cfg.InitResources.DeepCopy(),
		SecurityContext: &corev1.SecurityContext{
			Capabilities: &corev1.Capabilities{
				Add:  []corev1.Capability{"NET_ADMIN", "NET_RAW"},
				Drop: []corev1.Capability{"ALL"},
			},
			Privileged:               ptr.To(false),
			RunAsUser:                ptr.To[int64](0),
			RunAsGroup:               ptr.To[int64](0),
			RunAsNonRoot:             ptr.To(false),
			ReadOnlyRootFilesystem:   ptr.To(true),
			AllowPrivilegeEscalation: ptr.To(false),
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
}

// proxyContainer is the sidecar. Its startup probe holds the application back (as a
// native sidecar) until the proxy has its certificate and configuration.
func proxyContainer(cfg Config, s settings, probes bool) corev1.Container {
	args := []string{
		"run",
		"--control-plane-addr=" + cfg.ControlPlaneAddr,
		"--control-plane-server-name=" + cfg.ControlPlaneServerName,
	}
	if cfg.ControlPlaneIdentity != "" {
		args = append(args, "--control-plane-identity="+cfg.ControlPlaneIdentity)
	}
	args = append(args,
		"--drain-duration="+s.drain.String(),
		"--log-level="+s.logLevel,
		"--token-path="+TokenDir+"/"+TokenFile,
		"--root-cert-path="+RootCertDir+"/"+RootCertKey,
	)
	fieldEnv := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: path}}}
	}
	env := []corev1.EnvVar{
		fieldEnv("POD_NAME", "metadata.name"),
		fieldEnv("POD_NAMESPACE", "metadata.namespace"),
		fieldEnv("SERVICE_ACCOUNT", "spec.serviceAccountName"),
		{Name: "TRELLIS_TRUST_DOMAIN", Value: cfg.TrustDomain},
	}
	if probes {
		env = append(env, fieldEnv(AppProbesEnv, "metadata.annotations['"+OriginalProbesAnnotation+"']"))
	}
	ready := &corev1.HTTPGetAction{Path: "/healthz/ready", Port: intstr.FromInt32(StatusPort), Scheme: corev1.URISchemeHTTP}
	return corev1.Container{
		Name:            ProxyContainerName,
		Image:           cfg.ProxyImage,
		ImagePullPolicy: cfg.ImagePullPolicy,
		Args:            args,
		Env:             env,
		Ports: []corev1.ContainerPort{
			{Name: StatusPortName, ContainerPort: StatusPort, Protocol: corev1.ProtocolTCP},
		},
		Resources: *s.resources.DeepCopy(),
		VolumeMounts: []corev1.VolumeMount{
			{Name: TokenVolumeName, MountPath: TokenDir, ReadOnly: true},
			{Name: RootCertVolumeName, MountPath: RootCertDir, ReadOnly: true},
		},
		// Up to 10 minutes to get a certificate and a first configuration, checked every
		// second so that the application starts as soon as the proxy is ready.
		StartupProbe: &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{HTTPGet: ready.DeepCopy()},
			PeriodSeconds:    1,
			TimeoutSeconds:   3,
			FailureThreshold: 600,
			SuccessThreshold: 1,
		},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{HTTPGet: ready.DeepCopy()},
			PeriodSeconds:    5,
			TimeoutSeconds:   3,
			FailureThreshold: 3,
			SuccessThreshold: 1,
		},
		SecurityContext: &corev1.SecurityContext{
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			Privileged:               ptr.To(false),
			RunAsUser:                ptr.To(cfg.ProxyUID),
			RunAsGroup:               ptr.To(cfg.ProxyUID),
			RunAsNonRoot:             ptr.To(true),
			ReadOnlyRootFilesystem:   ptr.To(true),
			AllowPrivilegeEscalation: ptr.To(false),
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
}

// volumes are the proxy's credentials: a token for the CA, and the trust bundle.
func volumes() []corev1.Volume {
	return []corev1.Volume{
		{
			Name: TokenVolumeName,
			VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
				Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
					Audience:          TokenAudience,
					ExpirationSeconds: ptr.To[int64](TokenExpirationSeconds),
					Path:              TokenFile,
				}}},
			}},
		},
		{
			Name: RootCertVolumeName,
			VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: RootCertConfigMap},
				Items:                []corev1.KeyToPath{{Key: RootCertKey, Path: RootCertKey}},
			}},
		},
	}
}

func joinPorts(ports []int32) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ",")
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}
