package translate

import (
	"fmt"
	"maps"
	"math"
	"net/netip"
	"slices"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

// FuzzBuild builds every pod of a small random State. Whatever the State, Build must not
// panic; it must refuse exactly the pods that are not injected; and a successful Build must
// give a consistent, valid, deterministic snapshot in which a STRICT pod accepts no
// plaintext.
func FuzzBuild(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("trellis"))
	f.Add([]byte{3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4, 3, 3, 8, 3, 2, 7, 9, 5})
	f.Add([]byte{255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255})
	f.Fuzz(func(t *testing.T, data []byte) {
		state := fuzzState(&fuzzBytes{b: data})
		b := NewBuilder(meshstate.NewIndex(state))
		again := NewBuilder(meshstate.NewIndex(state))
		for key, pod := range state.Pods {
			res, err := b.Build(Proxy{Pod: key})
			if !pod.Injected {
				if err == nil {
					t.Fatalf("pod %s is not injected but Build gave it a configuration", key)
				}
				continue
			}
			if err != nil {
				t.Fatalf("pod %s: %v", key, err)
			}
			if err := checkResources(res); err != nil {
				t.Fatalf("pod %s: %v", key, err)
			}
			if err := checkHalves(b, Proxy{Pod: key}); err != nil {
				t.Fatalf("pod %s: %v", key, err)
			}
			if res2, err := again.Build(Proxy{Pod: key}); err != nil || !equalResources(res, res2) {
				t.Fatalf("pod %s: two translations of the same State differ (err %v)", key, err)
			}
			if state.Mesh.ModeFor(key.Namespace) != meshstate.MTLSPermissive {
				if err := acceptsOnlyTLS(res); err != nil {
					t.Fatalf("pod %s is STRICT: %v", key, err)
				}
			}
		}
	})
}

// acceptsOnlyTLS checks that every chain of the inbound listener terminates TLS.
func acceptsOnlyTLS(res *Resources) error {
	for _, l := range res.Listeners {
		if l.GetName() != InboundListenerName {
			continue
		}
		chains := append([]*listenerv3.FilterChain{l.GetDefaultFilterChain()}, l.GetFilterChains()...)
		for _, fc := range chains {
			if fc.GetTransportSocket().GetName() != transportSocketTLS {
				return fmt.Errorf("inbound chain %q accepts plaintext", fc.GetName())
			}
		}
		return nil
	}
	return fmt.Errorf("no inbound listener")
}

// fuzzBytes hands out fuzz input a few bits at a time; past the end it gives zeros.
type fuzzBytes struct{ b []byte }

func (f *fuzzBytes) byte() byte {
	if len(f.b) == 0 {
		return 0
	}
	v := f.b[0]
	f.b = f.b[1:]
	return v
}

func (f *fuzzBytes) intn(n int) int { return int(f.byte()) % n }
func (f *fuzzBytes) bool() bool     { return f.byte()&1 == 1 }

func pick[T any](f *fuzzBytes, choices ...T) T { return choices[f.intn(len(choices))] }

// Small pools, so that random references often hit something: splits name Services that
// exist, endpoints name pods that exist, and so on. Bad values the API refuses (port 0,
// 70000, an unknown operator, a negative duration) are in the pools too.
var (
	fuzzNamespaces = []string{"a", "b"}
	fuzzNames      = []string{"s0", "s1", "s2", "s3"}
	fuzzPortNames  = []string{"", "http", "grpc", "tcp"}
	fuzzPorts      = []uint32{80, 8080, 9000, 15006, 0, 70000}
	fuzzProtocols  = []meshstate.Protocol{"", "http", "http2", "grpc", "tcp", "mongo"}
	fuzzModes      = []meshstate.MTLSMode{meshstate.MTLSPermissive, meshstate.MTLSStrict, "", "BOGUS"}
	fuzzWeights    = []uint32{0, 1, 50, 1_000_000, math.MaxUint32}
	fuzzDurations  = []time.Duration{0, time.Second, 250 * time.Millisecond, -time.Second}
	fuzzLabels     = []string{"x", "y"}
)

func fuzzState(f *fuzzBytes) *meshstate.State {
	s := meshstate.NewState()
	s.Mesh.MTLSMode = pick(f, fuzzModes...)
	for _, ns := range fuzzNamespaces {
		if f.bool() {
			s.Mesh.NamespaceModes = map[string]meshstate.MTLSMode{ns: pick(f, fuzzModes...)}
		}
	}
	for i := range 1 + f.intn(5) {
		p := fuzzPod(f, i)
		s.Pods[p.Key] = p
	}
	for range f.intn(5) {
		svc := fuzzService(f)
		s.Services[svc.Key] = svc
		for j := range f.intn(3) {
			es := fuzzSlice(f, svc.Key, j, s)
			s.EndpointSlices[es.Key] = es
		}
	}
	for i := range f.intn(3) {
		sp := fuzzSplit(f, i)
		s.Splits[sp.Key] = sp
	}
	for i := range f.intn(3) {
		tp := fuzzPolicy(f, i)
		s.TrafficPolicies[tp.Key] = tp
	}
	for i := range f.intn(3) {
		ap := fuzzAuthz(f, i)
		s.AuthorizationPolicies[ap.Key] = ap
	}
	return s
}

func fuzzPod(f *fuzzBytes, i int) *meshstate.Pod {
	p := &meshstate.Pod{
		Key:            meshstate.Key{Namespace: pick(f, fuzzNamespaces...), Name: fmt.Sprintf("p%d", i)},
		ServiceAccount: pick(f, "sa0", "sa1"),
		IPs:            []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})},
		Labels:         map[string]string{"app": pick(f, fuzzLabels...)},
		Injected:       f.intn(4) != 0,
	}
	for range f.intn(3) {
		p.Ports = append(p.Ports, meshstate.ContainerPort{Port: pick(f, fuzzPorts...)})
	}
	return p
}

func fuzzService(f *fuzzBytes) *meshstate.Service {
	svc := &meshstate.Service{Key: meshstate.Key{Namespace: pick(f, fuzzNamespaces...), Name: pick(f, fuzzNames...)}}
	switch f.intn(4) {
	case 1:
		svc.ClusterIPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 96, 0, f.byte()})}
	case 2:
		svc.ClusterIPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 96, 0, f.byte()}), netip.MustParseAddr("fd00::1")}
	case 3:
		svc.ClusterIPs = []netip.Addr{{}, netip.AddrFrom4([4]byte{10, 96, 1, f.byte()})}
	}
	for range f.intn(4) {
		svc.Ports = append(svc.Ports, meshstate.ServicePort{
			Name:     pick(f, fuzzPortNames...),
			Port:     pick(f, fuzzPorts...),
			Protocol: pick(f, fuzzProtocols...),
		})
	}
	return svc
}

func fuzzSlice(f *fuzzBytes, svc meshstate.Key, j int, s *meshstate.State) *meshstate.EndpointSlice {
	es := &meshstate.EndpointSlice{Key: meshstate.Key{Namespace: svc.Namespace, Name: fmt.Sprintf("%s-%d", svc.Name, j)}, Service: svc}
	for range f.intn(3) {
		es.Ports = append(es.Ports, meshstate.EndpointPort{Name: pick(f, fuzzPortNames...), Port: pick(f, fuzzPorts...)})
	}
	for range f.intn(4) {
		e := meshstate.EndpointSliceEntry{Ready: f.intn(4) != 0}
		switch f.intn(3) {
		case 0:
			e.Addresses = []netip.Addr{netip.AddrFrom4([4]byte{10, 1, 0, f.byte()})}
		case 1:
			e.Addresses = []netip.Addr{netip.AddrFrom16([16]byte{0xfd, 15: f.byte()})}
		}
		// Sorted, so that a crasher input replays the same State.
		pods := slices.SortedFunc(maps.Keys(s.Pods), compareKeys)
		if n := f.intn(len(pods) + 2); n < len(pods) {
			e.Pod = &pods[n]
		} else if n == len(pods) {
			e.Pod = &meshstate.Key{Namespace: svc.Namespace, Name: "gone"}
		}
		es.Endpoints = append(es.Endpoints, e)
	}
	return es
}

func fuzzSplit(f *fuzzBytes, i int) *meshstate.Split {
	sp := &meshstate.Split{
		Key:     meshstate.Key{Namespace: pick(f, fuzzNamespaces...), Name: fmt.Sprintf("split%d", i)},
		Created: time.Unix(int64(f.intn(3)), 0),
		Service: pick(f, fuzzNames...),
	}
	for range f.intn(4) {
		sp.Backends = append(sp.Backends, meshstate.Backend{Service: pick(f, fuzzNames...), Weight: pick(f, fuzzWeights...)})
	}
	if f.intn(4) == 0 {
		sp.Matches = []string{"group"}
	}
	return sp
}

func fuzzPolicy(f *fuzzBytes, i int) *meshstate.TrafficPolicy {
	d := func() *time.Duration {
		if f.bool() {
			return nil
		}
		v := pick(f, fuzzDurations...)
		return &v
	}
	u := func() *uint32 {
		if f.bool() {
			return nil
		}
		v := uint32(f.intn(3))
		return &v
	}
	tp := &meshstate.TrafficPolicy{
		Key:          meshstate.Key{Namespace: pick(f, fuzzNamespaces...), Name: fmt.Sprintf("tp%d", i)},
		Created:      time.Unix(int64(f.intn(3)), 0),
		Target:       pick(f, fuzzNames...),
		LoadBalancer: pick(f, "", meshstate.LoadBalancerP2CEWMA, meshstate.LoadBalancerRoundRobin, meshstate.LoadBalancerLeastRequest, "Bogus"),
	}
	if f.bool() {
		tp.Retries = &meshstate.Retries{
			Attempts:      uint32(f.intn(3)),
			PerTryTimeout: d(),
			RetryOn:       pick(f, []string(nil), []string{"5xx"}),
			Budget:        meshstate.RetryBudget{Percent: uint32(f.intn(101)), MinPerSecond: uint32(f.intn(20)), Window: pick(f, fuzzDurations...)},
		}
	}
	if f.bool() {
		tp.Timeouts = &meshstate.Timeouts{Request: d(), Idle: d()}
	}
	if f.bool() {
		tp.ConnectionPool = &meshstate.ConnectionPool{MaxConnections: u(), MaxPendingRequests: u(), MaxRequests: u(), MaxRequestsPerConnection: u()}
	}
	if f.bool() {
		tp.OutlierDetection = &meshstate.OutlierDetection{
			Consecutive5xxErrors:       uint32(f.intn(3)),
			ConsecutiveConnectFailures: uint32(f.intn(3)),
			Interval:                   pick(f, fuzzDurations...),
			BaseEjectionTime:           pick(f, fuzzDurations...),
			MaxEjectionPercent:         uint32(f.intn(256)),
		}
	}
	return tp
}

func fuzzAuthz(f *fuzzBytes, i int) *meshstate.AuthorizationPolicy {
	ap := &meshstate.AuthorizationPolicy{Key: meshstate.Key{Namespace: pick(f, fuzzNamespaces...), Name: fmt.Sprintf("authz%d", i)}}
	switch f.intn(3) {
	case 0:
		ap.Selector.MatchLabels = map[string]string{"app": pick(f, fuzzLabels...)}
	case 1:
		ap.Selector.MatchExpressions = []meshstate.LabelRequirement{{Key: "app", Operator: pick(f, "In", "NotIn", "Exists", "Bogus"), Values: []string{pick(f, fuzzLabels...)}}}
	}
	for range f.intn(3) {
		var rule meshstate.AuthzRule
		for range f.intn(3) {
			switch f.intn(4) {
			case 0:
				rule.From = append(rule.From, meshstate.Principal{ServiceAccount: &meshstate.Key{Namespace: pick(f, "", "a"), Name: "sa0"}})
			case 1:
				rule.From = append(rule.From, meshstate.Principal{Namespace: pick(f, fuzzNamespaces...)})
			case 2:
				rule.From = append(rule.From, meshstate.Principal{Identity: "spiffe://cluster.local/ns/a/sa/sa1"})
			default:
				rule.From = append(rule.From, meshstate.Principal{})
			}
		}
		for range f.intn(3) {
			rule.Ports = append(rule.Ports, pick(f, fuzzPorts...))
		}
		ap.Rules = append(ap.Rules, rule)
	}
	return ap
}
