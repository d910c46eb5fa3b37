package translate

import (
	"maps"
	"path/filepath"
	"testing"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

// TestInboundIgnoresSplitsAndPolicies: for every golden input and every pod in it, removing
// the TrafficSplits and TrafficPolicies changes nothing on the inbound side. SameInbound
// relies on it: if Inbound ever reads them, this fails.
func TestInboundIgnoresSplitsAndPolicies(t *testing.T) {
	inputs, err := filepath.Glob(filepath.Join("testdata", "in", "*.yaml"))
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no golden inputs (err %v)", err)
	}
	checked := 0
	for _, in := range inputs {
		c := readGoldenInput(t, in)
		st := c.State
		bare := st
		bare.Splits, bare.TrafficPolicies = map[meshstate.Key]*meshstate.Split{}, map[meshstate.Key]*meshstate.TrafficPolicy{}
		if !SameInbound(&st, &bare) {
			t.Errorf("%s: SameInbound is false for states that differ only in splits and policies", in)
		}
		with, without := NewBuilder(meshstate.NewIndex(&st)), NewBuilder(meshstate.NewIndex(&bare))
		for pod := range st.Pods {
			a, errA := with.Inbound(Proxy{Pod: pod})
			b, errB := without.Inbound(Proxy{Pod: pod})
			if (errA == nil) != (errB == nil) || (errA == nil && !equalResources(a, b)) {
				t.Errorf("%s: pod %s: the inbound side depends on TrafficSplits or TrafficPolicies (errors %v, %v)", in, pod, errA, errB)
			}
			checked++
		}
	}
	if checked == 0 {
		t.Fatal("no pods in the golden inputs")
	}
}

// TestSameInboundSeesEveryInput: a changed object of any kind Inbound reads makes
// SameInbound false.
func TestSameInboundSeesEveryInput(t *testing.T) {
	c := readGoldenInput(t, filepath.Join("testdata", "in", "split-90-10.yaml"))
	base := c.State
	for name, change := range map[string]func(*meshstate.State){
		"mesh mode": func(s *meshstate.State) { s.Mesh.MTLSMode = meshstate.MTLSStrict },
		"pod": func(s *meshstate.State) {
			s.Pods = maps.Clone(s.Pods)
			for k, p := range s.Pods {
				cp := *p
				s.Pods[k] = &cp
				break
			}
		},
		"service removed": func(s *meshstate.State) {
			s.Services = maps.Clone(s.Services)
			for k := range s.Services {
				delete(s.Services, k)
				break
			}
		},
		"endpoint slice": func(s *meshstate.State) {
			s.EndpointSlices = maps.Clone(s.EndpointSlices)
			for k, e := range s.EndpointSlices {
				cp := *e
				s.EndpointSlices[k] = &cp
				break
			}
		},
		"authorization policy added": func(s *meshstate.State) {
			s.AuthorizationPolicies = maps.Clone(s.AuthorizationPolicies)
			if s.AuthorizationPolicies == nil {
				s.AuthorizationPolicies = map[meshstate.Key]*meshstate.AuthorizationPolicy{}
			}
			s.AuthorizationPolicies[meshstate.Key{Namespace: "shop", Name: "new"}] = &meshstate.AuthorizationPolicy{}
		},
		"namespace added": func(s *meshstate.State) {
			s.Namespaces = maps.Clone(s.Namespaces)
			if s.Namespaces == nil {
				s.Namespaces = map[string]*meshstate.Namespace{}
			}
			s.Namespaces["other"] = &meshstate.Namespace{Name: "other"}
		},
	} {
		next := base
		change(&next)
		if SameInbound(&base, &next) {
			t.Errorf("%s: SameInbound is true", name)
		}
	}
	same := base
	if !SameInbound(&base, &same) {
		t.Error("SameInbound is false for the same state")
	}
}
