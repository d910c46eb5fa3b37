// Package meshstatetest builds mesh models of a given size for benchmarks and load tests.
package meshstatetest

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

// Size is the shape of a generated mesh.
type Size struct {
	Namespaces           int // services are spread over these
	Services             int // each with one HTTP port 80 → 8080
	EndpointsPerService  int // each endpoint is its own injected pod
	Splits, Policies     int // on the first services, each split to the next two services
	AuthorizationsPerPod bool
}

// Build returns a State of that size. Pods are named <svc>-<i>, so ProxyPods lists nodes.
func Build(s Size) *meshstate.State {
	if s.Namespaces <= 0 {
		s.Namespaces = 1
	}
	st := meshstate.NewState()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for n := range s.Namespaces {
		name := fmt.Sprintf("ns-%d", n)
		st.Namespaces[name] = &meshstate.Namespace{Name: name, Injected: true}
	}
	ip := netip.MustParseAddr("10.0.0.0")
	next := func() netip.Addr { ip = ip.Next(); return ip }
	for i := range s.Services {
		ns := fmt.Sprintf("ns-%d", i%s.Namespaces)
		key := meshstate.Key{Namespace: ns, Name: fmt.Sprintf("svc-%d", i)}
		st.Services[key] = &meshstate.Service{
			Key:        key,
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})},
			Ports:      []meshstate.ServicePort{{Name: "http", Port: 80, TargetPort: "8080", Protocol: meshstate.ProtocolHTTP}},
		}
		es := &meshstate.EndpointSlice{
			Key:     meshstate.Key{Namespace: ns, Name: key.Name + "-slice"},
			Service: key,
			Ports:   []meshstate.EndpointPort{{Name: "http", Port: 8080}},
		}
		for e := range s.EndpointsPerService {
			pod := meshstate.Key{Namespace: ns, Name: fmt.Sprintf("%s-%d", key.Name, e)}
			addr := next()
			st.Pods[pod] = &meshstate.Pod{
				Key: pod, ServiceAccount: key.Name, IPs: []netip.Addr{addr},
				Labels: map[string]string{"app": key.Name}, Ports: []meshstate.ContainerPort{{Port: 8080}}, Injected: true,
			}
			es.Endpoints = append(es.Endpoints, meshstate.EndpointSliceEntry{Addresses: []netip.Addr{addr}, Ready: true, Pod: &pod})
		}
		st.EndpointSlices[es.Key] = es
	}
	for i := range min(s.Splits, max(s.Services-2, 0)) {
		ns := fmt.Sprintf("ns-%d", i%s.Namespaces)
		// Backends must share the namespace: take the next services in the same namespace.
		b1, b2 := i+s.Namespaces, i+2*s.Namespaces
		if b2 >= s.Services {
			break
		}
		k := meshstate.Key{Namespace: ns, Name: fmt.Sprintf("split-%d", i)}
		st.Splits[k] = &meshstate.Split{Key: k, Created: t0, Service: fmt.Sprintf("svc-%d", i), Backends: []meshstate.Backend{
			{Service: fmt.Sprintf("svc-%d", b1), Weight: 90}, {Service: fmt.Sprintf("svc-%d", b2), Weight: 10},
		}}
	}
	for i := range min(s.Policies, s.Services) {
		ns := fmt.Sprintf("ns-%d", i%s.Namespaces)
		k := meshstate.Key{Namespace: ns, Name: fmt.Sprintf("policy-%d", i)}
		timeout := 3 * time.Second
		st.TrafficPolicies[k] = &meshstate.TrafficPolicy{
			Key: k, Created: t0, Target: fmt.Sprintf("svc-%d", i),
			Retries:  &meshstate.Retries{Attempts: 2, RetryOn: []string{"connect-failure", "gateway-error"}, Budget: meshstate.RetryBudget{Percent: 20, MinPerSecond: 10, Window: 10 * time.Second}},
			Timeouts: &meshstate.Timeouts{Request: &timeout},
		}
	}
	if s.AuthorizationsPerPod {
		for n := range s.Namespaces {
			ns := fmt.Sprintf("ns-%d", n)
			k := meshstate.Key{Namespace: ns, Name: "allow-namespace"}
			st.AuthorizationPolicies[k] = &meshstate.AuthorizationPolicy{
				Key:   k,
				Rules: []meshstate.AuthzRule{{From: []meshstate.Principal{{Namespace: ns}}, Ports: []uint32{8080}}},
			}
		}
	}
	return st
}

// ProxyPods lists up to n pods of st, in a stable order, to act as connected proxies.
func ProxyPods(s Size, n int) []meshstate.Key {
	var out []meshstate.Key
	for e := 0; e < s.EndpointsPerService && len(out) < n; e++ {
		for i := 0; i < s.Services && len(out) < n; i++ {
			out = append(out, meshstate.Key{Namespace: fmt.Sprintf("ns-%d", i%max(s.Namespaces, 1)), Name: fmt.Sprintf("svc-%d-%d", i, e)})
		}
	}
	return out
}
