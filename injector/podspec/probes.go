package podspec

import (
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	probes "github.com/trellis-mesh/trellis/api/appprobes"
)

// The probe contract between the injector and the proxy (docs/injection.md) has one
// definition, api/appprobes, free of Kubernetes types: the injector writes exactly the types
// the proxy reads.
const (
	// AppHealthPrefix is where the proxy's status port serves rewritten application probes:
	// AppHealthPrefix + "<container>/<livez|readyz|startupz>".
	AppHealthPrefix = probes.PathPrefix
	LivenessProbe   = probes.Liveness
	ReadinessProbe  = probes.Readiness
	StartupProbe    = probes.Startup
	// AppProbesEnv carries the trellis.dev/original-probes annotation to the proxy (through
	// the downward API), so that it needs no access to the Kubernetes API.
	AppProbesEnv = probes.EnvVar
)

// AppProbes is the JSON of the trellis.dev/original-probes annotation: for each rewritten
// probe's path on the status port, the probe the proxy must run against the application.
// Named ports are already resolved to numbers, and Kubernetes's defaults are filled in.
type AppProbes map[string]AppProbe

// The probe types are the contract's.
type (
	AppProbe       = probes.Probe
	HTTPGetProbe   = probes.HTTPGetAction
	HTTPHeader     = probes.HTTPHeader
	TCPSocketProbe = probes.TCPSocketAction
	GRPCProbe      = probes.GRPCAction
)

// AppHealthPath is the status-port path of a container's rewritten probe of one kind.
func AppHealthPath(container, kind string) string { return probes.Path(container, kind) }

// ParseAppProbes reads a trellis.dev/original-probes annotation.
func ParseAppProbes(s string) (AppProbes, error) {
	var out AppProbes
	if err := json.Unmarshal([]byte(s), &out); err != nil {
		return nil, fmt.Errorf("annotation %s: %w", OriginalProbesAnnotation, err)
	}
	return out, nil
}

// rewriteProbes points every HTTP, TCP and gRPC probe of the application's containers
// (and of its own native sidecars) at the proxy's status port, and returns the originals.
// Exec probes run inside the container and are left alone.
func rewriteProbes(pod *corev1.Pod) (AppProbes, error) {
	out := AppProbes{}
	var errs []error
	rewrite := func(c *corev1.Container) {
		for _, p := range []struct {
			kind, field string
			probe       **corev1.Probe
		}{
			{LivenessProbe, "livenessProbe", &c.LivenessProbe},
			{ReadinessProbe, "readinessProbe", &c.ReadinessProbe},
			{StartupProbe, "startupProbe", &c.StartupProbe},
		} {
			orig := *p.probe
			if orig == nil || orig.Exec != nil {
				continue
			}
			app, err := appProbe(c, orig)
			if err != nil {
				errs = append(errs, fmt.Errorf("container %s, %s: %w", c.Name, p.field, err))
				continue
			}
			if app == nil {
				continue
			}
			path := AppHealthPath(c.Name, p.kind)
			out[path] = *app
			rewritten := orig.DeepCopy()
			rewritten.ProbeHandler = corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path:   path,
				Port:   intstr.FromInt32(StatusPort),
				Scheme: corev1.URISchemeHTTP,
			}}
			*p.probe = rewritten
		}
	}
	for i := range pod.Spec.Containers {
		rewrite(&pod.Spec.Containers[i])
	}
	for i := range pod.Spec.InitContainers {
		c := &pod.Spec.InitContainers[i]
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			rewrite(c)
		}
	}
	if len(errs) > 0 {
		return nil, joinProblems(errs)
	}
	return out, nil
}

// appProbe is the proxy's copy of one probe, or nil for a probe with no handler.
func appProbe(c *corev1.Container, p *corev1.Probe) (*AppProbe, error) {
	timeout := p.TimeoutSeconds
	if timeout == 0 {
		timeout = 1 // the kubelet's default
	}
	switch {
	case p.HTTPGet != nil:
		port, err := resolvePort(c, p.HTTPGet.Port)
		if err != nil {
			return nil, err
		}
		h := &HTTPGetProbe{Path: p.HTTPGet.Path, Port: port, Host: p.HTTPGet.Host, Scheme: string(p.HTTPGet.Scheme)}
		if h.Path == "" {
			h.Path = "/"
		}
		if h.Scheme == "" {
			h.Scheme = string(corev1.URISchemeHTTP)
		}
		for _, hd := range p.HTTPGet.HTTPHeaders {
			h.Headers = append(h.Headers, HTTPHeader{Name: hd.Name, Value: hd.Value})
		}
		return &AppProbe{HTTPGet: h, TimeoutSeconds: timeout}, nil
	case p.TCPSocket != nil:
		port, err := resolvePort(c, p.TCPSocket.Port)
		if err != nil {
			return nil, err
		}
		return &AppProbe{TCPSocket: &TCPSocketProbe{Port: port, Host: p.TCPSocket.Host}, TimeoutSeconds: timeout}, nil
	case p.GRPC != nil:
		if p.GRPC.Port < 1 || p.GRPC.Port > 65535 {
			return nil, fmt.Errorf("port %d is not a port (1-65535)", p.GRPC.Port)
		}
		g := &GRPCProbe{Port: p.GRPC.Port}
		if p.GRPC.Service != nil {
			g.Service = *p.GRPC.Service
		}
		return &AppProbe{GRPC: g, TimeoutSeconds: timeout}, nil
	}
	return nil, nil
}

// resolvePort turns a probe's port, a number or the name of one of the container's
// ports, into a number: the proxy does not know the container's port names.
func resolvePort(c *corev1.Container, port intstr.IntOrString) (int32, error) {
	if port.Type == intstr.Int {
		if port.IntVal < 1 || port.IntVal > 65535 {
			return 0, fmt.Errorf("port %d is not a port (1-65535)", port.IntVal)
		}
		return port.IntVal, nil
	}
	for _, p := range c.Ports {
		if p.Name == port.StrVal {
			return p.ContainerPort, nil
		}
	}
	return 0, fmt.Errorf("port %q is not the name of one of the container's ports; name the port in ports[] or use its number", port.StrVal)
}
