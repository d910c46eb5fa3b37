package podspec

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/trellis-mesh/trellis/internal/version"
)

// The names the injector, the sidecar and the control plane agree on.
const (
	// InitContainerName programs the pod's redirect rules (`trellis-proxy init`).
	InitContainerName = "trellis-init"
	// ProxyContainerName is the sidecar (`trellis-proxy run`); a pod that has a container or
	// an init container of this name is meshed (the controllers read it the same way).
	ProxyContainerName = "trellis-proxy"

	// TokenVolumeName is the projected ServiceAccount token for the CA, mounted at TokenDir.
	TokenVolumeName = "trellis-tokens"
	TokenDir        = "/var/run/secrets/trellis/tokens"
	TokenFile       = "trellis-ca-token"
	// TokenAudience is the audience the CA accepts; TokenExpirationSeconds the token's life
	// (the kubelet refreshes it at 80%).
	TokenAudience          = "trellis-ca"
	TokenExpirationSeconds = 3600

	// RootCertVolumeName is the trust bundle ConfigMap (published by the control plane in
	// every labelled namespace), mounted at RootCertDir.
	RootCertVolumeName = "trellis-ca-root"
	RootCertDir        = "/var/run/secrets/trellis/ca"
	RootCertConfigMap  = "trellis-ca-root-cert"
	RootCertKey        = "root-cert.pem"

	// The proxy's ports inside the pod (the Istio numbers).
	AdminPort    = 15000 // loopback only
	OutboundPort = 15001
	InboundPort  = 15006
	StatusPort   = 15020 // kubelet probes, metrics, rewritten app probes

	// StatusPortName names StatusPort in the proxy's container ports.
	StatusPortName = "trellis-status"

	// DefaultProxyUID is the proxy's user (and group); the redirect rules exempt it.
	DefaultProxyUID = 1337
)

// ReservedPorts are the proxy's ports; an application container may not declare them.
var ReservedPorts = []int32{AdminPort, OutboundPort, InboundPort, StatusPort}

// Config is the mesh-wide injection configuration: what every injected pod gets unless
// one of its trellis.dev/ annotations says otherwise. DefaultConfig gives every default.
type Config struct {
	// ProxyImage runs both the init container and the sidecar; its entrypoint is
	// trellis-proxy. ProxyVersion is recorded in the trellis.dev/status annotation.
	ProxyImage   string
	ProxyVersion string
	// ImagePullPolicy of the injected containers; empty leaves the Kubernetes default.
	ImagePullPolicy corev1.PullPolicy

	// NativeSidecars runs the proxy as a native sidecar (an init container with
	// restartPolicy: Always, Kubernetes 1.29 and later): the application starts only once
	// the proxy is ready, and Jobs complete when their application exits. When false the
	// proxy is a regular container (the fallback for older clusters; see docs/injection.md
	// for how Jobs stop it).
	NativeSidecars bool

	// ControlPlaneAddr serves xDS and certificates; ControlPlaneServerName is the DNS name
	// its certificate carries. ControlPlaneIdentity, when set, is the SPIFFE ID the control
	// plane must present (the sidecar's default assumes namespace trellis-system).
	ControlPlaneAddr       string
	ControlPlaneServerName string
	ControlPlaneIdentity   string
	// TrustDomain is the mesh's SPIFFE trust domain.
	TrustDomain string

	// ProxyUID is the proxy's user and group; the redirect rules exempt its traffic.
	ProxyUID int64
	// LogLevel of the proxy: debug, info, warn or error.
	LogLevel string
	// DrainDuration is how long in-flight requests may finish after SIGTERM.
	DrainDuration time.Duration
	// ProxyResources and InitResources are the containers' requests and limits.
	ProxyResources corev1.ResourceRequirements
	InitResources  corev1.ResourceRequirements

	// Mesh-wide redirect exclusions; a pod's annotations add to them.
	InboundExcludePorts  []int32
	OutboundExcludePorts []int32
	OutboundExcludeCIDRs []netip.Prefix

	// RewriteAppProbes sends the application's HTTP, TCP and gRPC probes through the
	// proxy's status port, so that they pass under STRICT mTLS.
	RewriteAppProbes bool
}

// DefaultConfig returns the chart's defaults for this build.
func DefaultConfig() Config {
	return Config{
		ProxyImage:             "trellis/proxy:" + version.Version,
		ProxyVersion:           version.Version,
		NativeSidecars:         true,
		ControlPlaneAddr:       "trellis-controlplane.trellis-system.svc:15012",
		ControlPlaneServerName: "trellis-controlplane.trellis-system.svc",
		TrustDomain:            "cluster.local",
		ProxyUID:               DefaultProxyUID,
		LogLevel:               "info",
		DrainDuration:          5 * time.Second,
		ProxyResources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("50m"),
				corev1.ResourceMemory: resource.MustParse("64Mi"),
			},
			Limits: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("1"),
				corev1.ResourceMemory: resource.MustParse("256Mi"),
			},
		},
		InitResources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("10m"),
				corev1.ResourceMemory: resource.MustParse("16Mi"),
			},
			Limits: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("100m"),
				corev1.ResourceMemory: resource.MustParse("64Mi"),
			},
		},
		RewriteAppProbes: true,
	}
}

// Validate reports every problem of the configuration at once.
func (c Config) Validate() error {
	var errs []error
	if c.ProxyImage == "" {
		errs = append(errs, errors.New("the proxy image is empty: set --proxy-image"))
	}
	if c.ProxyVersion == "" {
		errs = append(errs, errors.New("the proxy version is empty"))
	}
	switch c.ImagePullPolicy {
	case "", corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		errs = append(errs, fmt.Errorf("image pull policy %q: use Always, IfNotPresent or Never", c.ImagePullPolicy))
	}
	if _, port, err := net.SplitHostPort(c.ControlPlaneAddr); err != nil || port == "" {
		errs = append(errs, fmt.Errorf("control-plane address %q: want host:port, such as trellis-controlplane.trellis-system.svc:15012", c.ControlPlaneAddr))
	}
	if c.ControlPlaneServerName == "" {
		errs = append(errs, errors.New("the control plane's server name is empty"))
	}
	if c.ControlPlaneIdentity != "" && !strings.HasPrefix(c.ControlPlaneIdentity, "spiffe://") {
		errs = append(errs, fmt.Errorf("control-plane identity %q: want a SPIFFE ID, spiffe://<trust domain>/ns/<namespace>/sa/<service account>", c.ControlPlaneIdentity))
	}
	if c.TrustDomain == "" || strings.ContainsAny(c.TrustDomain, "/: ") {
		errs = append(errs, fmt.Errorf("trust domain %q: want a DNS-like name such as cluster.local", c.TrustDomain))
	}
	if c.ProxyUID <= 0 {
		errs = append(errs, fmt.Errorf("proxy UID %d: must be a positive, non-root user ID", c.ProxyUID))
	}
	if err := checkLogLevel(c.LogLevel); err != nil {
		errs = append(errs, fmt.Errorf("proxy log level: %w", err))
	}
	if c.DrainDuration <= 0 {
		errs = append(errs, fmt.Errorf("drain duration %s: must be positive", c.DrainDuration))
	}
	if err := checkResources(c.ProxyResources); err != nil {
		errs = append(errs, fmt.Errorf("proxy resources: %w", err))
	}
	if err := checkResources(c.InitResources); err != nil {
		errs = append(errs, fmt.Errorf("init container resources: %w", err))
	}
	for _, p := range append(append([]int32{}, c.InboundExcludePorts...), c.OutboundExcludePorts...) {
		if p < 1 || p > 65535 {
			errs = append(errs, fmt.Errorf("excluded port %d: ports are 1-65535", p))
		}
	}
	for _, p := range c.OutboundExcludeCIDRs {
		if !p.IsValid() {
			errs = append(errs, errors.New("an excluded outbound CIDR is not valid"))
		}
	}
	return errors.Join(errs...)
}

func checkLogLevel(level string) error {
	switch level {
	case "debug", "info", "warn", "error":
		return nil
	}
	return fmt.Errorf("%q: use debug, info, warn or error", level)
}

// checkResources refuses a request above its limit, which the apiserver would refuse
// with a message that does not say where the numbers came from.
func checkResources(r corev1.ResourceRequirements) error {
	for name, req := range r.Requests {
		if lim, ok := r.Limits[name]; ok && req.Cmp(lim) > 0 {
			return fmt.Errorf("the %s request %s is above its limit %s", name, req.String(), lim.String())
		}
	}
	return nil
}
