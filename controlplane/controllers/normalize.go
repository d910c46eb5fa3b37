package controllers

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	policyv1alpha1 "github.com/trellis-mesh/trellis/api/policy/v1alpha1"
	splitv1alpha4 "github.com/trellis-mesh/trellis/api/split/v1alpha4"
	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

// The names the injector and the controllers agree on.
const (
	// InjectLabel on a namespace turns sidecar injection on.
	InjectLabel = "trellis.dev/inject"
	// ProxyContainerName is the sidecar's container name; a pod that has it is meshed.
	ProxyContainerName = "trellis-proxy"
)

func key(namespace, name string) meshstate.Key {
	return meshstate.Key{Namespace: namespace, Name: name}
}

// namespaceFromK8s keeps whether injection is on.
func namespaceFromK8s(ns *corev1.Namespace) *meshstate.Namespace {
	return &meshstate.Namespace{Name: ns.Name, Injected: ns.Labels[InjectLabel] == "enabled"}
}

// serviceFromK8s keeps the cluster IPs (none for headless Services) and the ports with
// their protocol.
func serviceFromK8s(svc *corev1.Service) *meshstate.Service {
	out := &meshstate.Service{Key: key(svc.Namespace, svc.Name)}
	for _, ip := range svc.Spec.ClusterIPs {
		if a, err := netip.ParseAddr(ip); err == nil {
			out.ClusterIPs = append(out.ClusterIPs, a)
		}
	}
	for _, p := range svc.Spec.Ports {
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			continue // UDP and SCTP are not proxied
		}
		appProtocol := ""
		if p.AppProtocol != nil {
			appProtocol = *p.AppProtocol
		}
		out.Ports = append(out.Ports, meshstate.ServicePort{
			Name:       p.Name,
			Port:       uint32(p.Port),
			TargetPort: p.TargetPort.String(),
			Protocol:   protocolOf(appProtocol, p.Name),
		})
	}
	return out
}

// protocolOf reads the declared protocol: appProtocol first, then the port name's prefix
// (http, http-web, grpc-api, ...), as Istio does. Anything else is detected by sniffing,
// except well-known server-first protocols, which are declared opaque TCP so that they
// never wait on a sniff.
func protocolOf(appProtocol, portName string) meshstate.Protocol {
	if p, ok := declaredProtocol(strings.ToLower(appProtocol)); ok {
		return p
	}
	prefix, _, _ := strings.Cut(strings.ToLower(portName), "-")
	if p, ok := declaredProtocol(prefix); ok {
		return p
	}
	return meshstate.ProtocolDetect
}

func declaredProtocol(name string) (meshstate.Protocol, bool) {
	switch name {
	case "http", "http1", "kubernetes.io/ws":
		return meshstate.ProtocolHTTP, true
	case "http2", "h2c", "kubernetes.io/h2c":
		return meshstate.ProtocolHTTP2, true
	case "grpc", "grpc-web":
		return meshstate.ProtocolGRPC, true
	case "tcp", "tls", "https", "kubernetes.io/wss", "mysql", "postgres", "postgresql", "redis", "mongo", "mongodb", "smtp", "amqp", "kafka", "nats", "zookeeper":
		return meshstate.ProtocolTCP, true
	}
	return meshstate.ProtocolDetect, false
}

// endpointSliceFromK8s keeps the addresses of each endpoint, whether it is ready, and its
// pod. It returns nil for slices that belong to no Service or carry FQDNs.
func endpointSliceFromK8s(es *discoveryv1.EndpointSlice) *meshstate.EndpointSlice {
	svcName := es.Labels[discoveryv1.LabelServiceName]
	if svcName == "" || es.AddressType == discoveryv1.AddressTypeFQDN {
		return nil
	}
	out := &meshstate.EndpointSlice{Key: key(es.Namespace, es.Name), Service: key(es.Namespace, svcName)}
	for _, p := range es.Ports {
		if p.Port == nil || (p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP) {
			continue
		}
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		out.Ports = append(out.Ports, meshstate.EndpointPort{Name: name, Port: uint32(*p.Port)})
	}
	for _, e := range es.Endpoints {
		entry := meshstate.EndpointSliceEntry{
			// Ready unset means "unknown", which the API says to read as ready; a terminating
			// endpoint is never ready.
			Ready: (e.Conditions.Ready == nil || *e.Conditions.Ready) &&
				(e.Conditions.Terminating == nil || !*e.Conditions.Terminating),
		}
		for _, a := range e.Addresses {
			if addr, err := netip.ParseAddr(a); err == nil {
				entry.Addresses = append(entry.Addresses, addr)
			}
		}
		if e.TargetRef != nil && e.TargetRef.Kind == "Pod" {
			k := key(e.TargetRef.Namespace, e.TargetRef.Name)
			if k.Namespace == "" {
				k.Namespace = es.Namespace
			}
			entry.Pod = &k
		}
		out.Endpoints = append(out.Endpoints, entry)
	}
	return out
}

// podFromK8s keeps the pod's identity, addresses, labels, declared ports and whether it
// runs the sidecar (as a native sidecar init container or a regular container).
func podFromK8s(pod *corev1.Pod) *meshstate.Pod {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	out := &meshstate.Pod{Key: key(pod.Namespace, pod.Name), ServiceAccount: sa, Labels: pod.Labels}
	for _, ip := range pod.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out.IPs = append(out.IPs, a)
		}
	}
	for _, c := range pod.Spec.InitContainers {
		if c.Name == ProxyContainerName {
			out.Injected = true
		}
	}
	for _, c := range pod.Spec.Containers {
		if c.Name == ProxyContainerName {
			out.Injected = true
			continue
		}
		for _, p := range c.Ports {
			if p.Protocol == "" || p.Protocol == corev1.ProtocolTCP {
				out.Ports = append(out.Ports, meshstate.ContainerPort{Name: p.Name, Port: uint32(p.ContainerPort)})
			}
		}
	}
	return out
}

// splitFromAPI keeps the root, the weighted backends and the names of the route groups.
func splitFromAPI(ts *splitv1alpha4.TrafficSplit) *meshstate.Split {
	out := &meshstate.Split{
		Key:        key(ts.Namespace, ts.Name),
		Generation: ts.Generation,
		Created:    ts.CreationTimestamp.UTC(),
		Service:    ts.Spec.Service,
	}
	for _, b := range ts.Spec.Backends {
		w := b.Weight
		if w < 0 {
			w = 0 // refused at admission; never trust it here either
		}
		out.Backends = append(out.Backends, meshstate.Backend{Service: b.Service, Weight: uint32(w)})
	}
	for _, m := range ts.Spec.Matches {
		out.Matches = append(out.Matches, m.Name)
	}
	return out
}

// trafficPolicyFromAPI converts durations and fills the documented defaults for parts the
// apiserver did not default (it defaults them when the part is present).
func trafficPolicyFromAPI(tp *policyv1alpha1.TrafficPolicy) (*meshstate.TrafficPolicy, error) {
	s := tp.Spec
	out := &meshstate.TrafficPolicy{
		Key:        key(tp.Namespace, tp.Name),
		Generation: tp.Generation,
		Created:    tp.CreationTimestamp.UTC(),
		Target:     s.TargetRef.Name,
	}
	var errs []string
	dur := func(field string, d *policyv1alpha1.Duration, def time.Duration) time.Duration {
		if d == nil {
			return def
		}
		v, err := time.ParseDuration(string(*d))
		if err != nil || v < 0 {
			errs = append(errs, fmt.Sprintf("%s %q is not a duration", field, *d))
			return def
		}
		return v
	}
	optDur := func(field string, d *policyv1alpha1.Duration) *time.Duration {
		if d == nil {
			return nil
		}
		v := dur(field, d, 0)
		return &v
	}
	u32 := func(p *int32, def uint32) uint32 {
		if p == nil || *p < 0 {
			return def
		}
		return uint32(*p)
	}
	optU32 := func(p *int32) *uint32 {
		if p == nil || *p < 0 {
			return nil
		}
		v := uint32(*p)
		return &v
	}
	if r := s.Retries; r != nil {
		rr := &meshstate.Retries{
			Attempts:      u32(r.Attempts, 2),
			PerTryTimeout: optDur("retries.perTryTimeout", r.PerTryTimeout),
			Budget:        meshstate.RetryBudget{Percent: 20, MinPerSecond: 10, Window: 10 * time.Second},
		}
		for _, c := range r.RetryOn {
			rr.RetryOn = append(rr.RetryOn, string(c))
		}
		if len(rr.RetryOn) == 0 {
			rr.RetryOn = []string{"connect-failure", "refused-stream", "unavailable", "cancelled", "gateway-error"}
		}
		if b := r.Budget; b != nil {
			rr.Budget = meshstate.RetryBudget{
				Percent:      u32(b.Percent, 20),
				MinPerSecond: u32(b.MinRetriesPerSecond, 10),
				Window:       dur("retries.budget.window", b.Window, 10*time.Second),
			}
		}
		out.Retries = rr
	}
	if t := s.Timeouts; t != nil {
		out.Timeouts = &meshstate.Timeouts{
			Request: optDur("timeouts.request", t.Request),
			Idle:    optDur("timeouts.idle", t.Idle),
		}
	}
	if c := s.ConnectionPool; c != nil {
		out.ConnectionPool = &meshstate.ConnectionPool{
			MaxConnections:           optU32(c.MaxConnections),
			MaxPendingRequests:       optU32(c.MaxPendingRequests),
			MaxRequests:              optU32(c.MaxRequests),
			MaxRequestsPerConnection: optU32(c.MaxRequestsPerConnection),
		}
	}
	if o := s.OutlierDetection; o != nil {
		out.OutlierDetection = &meshstate.OutlierDetection{
			Consecutive5xxErrors:       u32(o.Consecutive5xxErrors, 5),
			ConsecutiveConnectFailures: u32(o.ConsecutiveConnectFailures, 5),
			Interval:                   dur("outlierDetection.interval", o.Interval, 10*time.Second),
			BaseEjectionTime:           dur("outlierDetection.baseEjectionTime", o.BaseEjectionTime, 30*time.Second),
			MaxEjectionPercent:         min(u32(o.MaxEjectionPercent, 10), 100),
		}
	}
	if lb := s.LoadBalancer; lb != nil {
		out.LoadBalancer = meshstate.LoadBalancer(lb.Type)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("TrafficPolicy %s/%s: %s", tp.Namespace, tp.Name, strings.Join(errs, "; "))
	}
	return out, nil
}

// authorizationPolicyFromAPI fills each ServiceAccount's namespace with the policy's own
// when left out.
func authorizationPolicyFromAPI(ap *policyv1alpha1.AuthorizationPolicy) *meshstate.AuthorizationPolicy {
	out := &meshstate.AuthorizationPolicy{
		Key:        key(ap.Namespace, ap.Name),
		Generation: ap.Generation,
		Selector:   meshstate.Selector{},
	}
	if len(ap.Spec.Selector.MatchLabels) > 0 {
		out.Selector.MatchLabels = map[string]string{}
		for k, v := range ap.Spec.Selector.MatchLabels {
			out.Selector.MatchLabels[k] = string(v)
		}
	}
	for _, e := range ap.Spec.Selector.MatchExpressions {
		req := meshstate.LabelRequirement{Key: e.Key, Operator: e.Operator}
		for _, v := range e.Values {
			req.Values = append(req.Values, string(v))
		}
		out.Selector.MatchExpressions = append(out.Selector.MatchExpressions, req)
	}
	for _, r := range ap.Spec.Rules {
		rule := meshstate.AuthzRule{}
		for _, p := range r.Ports {
			rule.Ports = append(rule.Ports, uint32(p))
		}
		for _, f := range r.From {
			switch {
			case f.ServiceAccount != nil:
				ns := f.ServiceAccount.Namespace
				if ns == "" {
					ns = ap.Namespace
				}
				rule.From = append(rule.From, meshstate.Principal{ServiceAccount: &meshstate.Key{Namespace: ns, Name: f.ServiceAccount.Name}})
			case f.Namespace != nil:
				rule.From = append(rule.From, meshstate.Principal{Namespace: *f.Namespace})
			case f.Identity != nil:
				rule.From = append(rule.From, meshstate.Principal{Identity: *f.Identity})
			}
		}
		out.Rules = append(out.Rules, rule)
	}
	return out
}

// meshFromAPI reads the MeshConfig; nil gives the defaults.
func meshFromAPI(mc *policyv1alpha1.MeshConfig) meshstate.Mesh {
	m := meshstate.DefaultMesh()
	if mc == nil {
		return m
	}
	if mc.Spec.TrustDomain != "" {
		m.TrustDomain = mc.Spec.TrustDomain
	}
	if mc.Spec.MTLS.Mode != "" {
		m.MTLSMode = meshstate.MTLSMode(mc.Spec.MTLS.Mode)
	}
	for _, o := range mc.Spec.MTLS.NamespaceOverrides {
		if m.NamespaceModes == nil {
			m.NamespaceModes = map[string]meshstate.MTLSMode{}
		}
		m.NamespaceModes[o.Namespace] = meshstate.MTLSMode(o.Mode)
	}
	return m
}
