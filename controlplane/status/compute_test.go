package status

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

func k(ns, name string) meshstate.Key { return meshstate.Key{Namespace: ns, Name: name} }

func svc(name string, ports ...uint32) *meshstate.Service {
	s := &meshstate.Service{Key: k("shop", name)}
	for _, p := range ports {
		s.Ports = append(s.Ports, meshstate.ServicePort{Port: p})
	}
	return s
}

func find(conds []metav1.Condition, typ string) metav1.Condition {
	for _, c := range conds {
		if c.Type == typ {
			return c
		}
	}
	return metav1.Condition{}
}

func TestSplitConditions(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	split := func(name string, created time.Time, matches []string, backends ...string) *meshstate.Split {
		sp := &meshstate.Split{Key: k("shop", name), Service: "web", Created: created, Generation: 2, Matches: matches}
		for _, b := range backends {
			sp.Backends = append(sp.Backends, meshstate.Backend{Service: b, Weight: 50})
		}
		return sp
	}
	for _, tc := range []struct {
		name                 string
		services             []*meshstate.Service
		splits               []*meshstate.Split
		check                string
		wantAccepted         metav1.ConditionStatus
		wantReason, wantText string
	}{
		{
			name:     "a split whose services all exist is accepted",
			services: []*meshstate.Service{svc("web", 80), svc("web-v1", 80), svc("web-v2", 80)},
			splits:   []*meshstate.Split{split("canary", t0, nil, "web-v1", "web-v2")},
			check:    "canary", wantAccepted: metav1.ConditionTrue, wantReason: "Accepted", wantText: "across 2 backends",
		},
		{
			name:     "a missing backend is named in ResolvedRefs",
			services: []*meshstate.Service{svc("web", 80), svc("web-v1", 80)},
			splits:   []*meshstate.Split{split("canary", t0, nil, "web-v1", "web-v3")},
			check:    "canary", wantAccepted: metav1.ConditionTrue, wantReason: "BackendNotFound", wantText: "backend service shop/web-v3 not found",
		},
		{
			name:     "a backend without the root's port is reported",
			services: []*meshstate.Service{svc("web", 80), svc("web-v1", 80), svc("web-v2", 8080)},
			splits:   []*meshstate.Split{split("canary", t0, nil, "web-v1", "web-v2")},
			check:    "canary", wantAccepted: metav1.ConditionTrue, wantReason: "BackendNotFound", wantText: "has none of the ports of shop/web",
		},
		{
			name:     "a missing root service is not accepted",
			services: []*meshstate.Service{svc("web-v1", 80)},
			splits:   []*meshstate.Split{split("canary", t0, nil, "web-v1")},
			check:    "canary", wantAccepted: metav1.ConditionFalse, wantReason: "ServiceNotFound", wantText: "root service shop/web not found",
		},
		{
			name:     "the younger of two splits of one service is conflicted",
			services: []*meshstate.Service{svc("web", 80), svc("web-v1", 80), svc("web-v2", 80)},
			splits:   []*meshstate.Split{split("old", t0, nil, "web-v1"), split("young", t0.Add(time.Minute), nil, "web-v2")},
			check:    "young", wantAccepted: metav1.ConditionFalse, wantReason: "Conflicted", wantText: "TrafficSplit shop/old, created earlier",
		},
		{
			name:     "a split with matches is not applied yet, and says so",
			services: []*meshstate.Service{svc("web", 80), svc("web-v1", 80)},
			splits:   []*meshstate.Split{split("ab", t0, []string{"beta"}, "web-v1")},
			check:    "ab", wantAccepted: metav1.ConditionFalse, wantReason: "UnsupportedMatches", wantText: "not supported yet",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := meshstate.NewState()
			for _, s := range tc.services {
				st.Services[s.Key] = s
			}
			for _, sp := range tc.splits {
				st.Splits[sp.Key] = sp
			}
			rep := Compute(meshstate.NewIndex(st))[Ref{KindTrafficSplit, k("shop", tc.check)}]
			acc, refs := find(rep.Conditions, Accepted), find(rep.Conditions, ResolvedRefs)
			if acc.Status != tc.wantAccepted {
				t.Errorf("Accepted = %s (%s: %s), want %s", acc.Status, acc.Reason, acc.Message, tc.wantAccepted)
			}
			if acc.Reason != tc.wantReason && refs.Reason != tc.wantReason {
				t.Errorf("no condition has reason %s: %+v", tc.wantReason, rep.Conditions)
			}
			if !strings.Contains(acc.Message+refs.Message, tc.wantText) {
				t.Errorf("messages do not say %q: %q / %q", tc.wantText, acc.Message, refs.Message)
			}
			if rep.ObservedGeneration != 2 {
				t.Errorf("ObservedGeneration = %d, want 2", rep.ObservedGeneration)
			}
		})
	}
}

func TestPolicyAndAuthzConditions(t *testing.T) {
	st := meshstate.NewState()
	st.Services[k("shop", "web")] = svc("web", 80)
	st.TrafficPolicies[k("shop", "p")] = &meshstate.TrafficPolicy{Key: k("shop", "p"), Target: "gone"}
	st.AuthorizationPolicies[k("shop", "a")] = &meshstate.AuthorizationPolicy{Key: k("shop", "a"), Selector: meshstate.Selector{MatchLabels: map[string]string{"app": "web"}}}
	reps := Compute(meshstate.NewIndex(st))

	refs := find(reps[Ref{KindTrafficPolicy, k("shop", "p")}].Conditions, ResolvedRefs)
	if refs.Status != metav1.ConditionFalse || refs.Reason != "TargetNotFound" || !strings.Contains(refs.Message, "service shop/gone not found") {
		t.Errorf("a policy on a missing service: %+v", refs)
	}
	authz := reps[Ref{KindAuthorizationPolicy, k("shop", "a")}].Conditions
	if c := find(authz, ResolvedRefs); c.Reason != "NoMatchingPods" {
		t.Errorf("a policy selecting no pod: %+v", c)
	}
	if c := find(authz, Accepted); !strings.Contains(c.Message, "every call to the selected pods is denied") {
		t.Errorf("a policy without rules must say it denies everything: %+v", c)
	}
}
