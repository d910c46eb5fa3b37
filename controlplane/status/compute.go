// Package status tells users what the control plane made of their TrafficSplits and
// policies, as status conditions with reasons a person can act on. Compute is pure (model
// in, conditions out); Writer applies them, on the leader only.
package status

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

// Condition types.
const (
	Accepted     = "Accepted"
	ResolvedRefs = "ResolvedRefs"
)

// Kind names the kind of object a report is about.
type Kind string

// The kinds that get status.
const (
	KindTrafficSplit        Kind = "TrafficSplit"
	KindTrafficPolicy       Kind = "TrafficPolicy"
	KindAuthorizationPolicy Kind = "AuthorizationPolicy"
)

// Ref names one object.
type Ref struct {
	Kind Kind
	Key  meshstate.Key
}

// Report is the status an object should have. Conditions carry no transition time: the
// writer keeps the old one when the status is unchanged.
type Report struct {
	ObservedGeneration int64
	Conditions         []metav1.Condition
}

func cond(typ string, ok bool, reason, msg string) metav1.Condition {
	s := metav1.ConditionFalse
	if ok {
		s = metav1.ConditionTrue
	}
	return metav1.Condition{Type: typ, Status: s, Reason: reason, Message: msg}
}

// Compute derives every object's status from the model.
func Compute(ix *meshstate.Index) map[Ref]Report {
	st := ix.State()
	out := map[Ref]Report{}
	for k, sp := range st.Splits {
		out[Ref{KindTrafficSplit, k}] = Report{ObservedGeneration: sp.Generation, Conditions: splitConditions(ix, sp)}
	}
	for k, tp := range st.TrafficPolicies {
		out[Ref{KindTrafficPolicy, k}] = Report{ObservedGeneration: tp.Generation, Conditions: policyConditions(ix, tp)}
	}
	for k, ap := range st.AuthorizationPolicies {
		out[Ref{KindAuthorizationPolicy, k}] = Report{ObservedGeneration: ap.Generation, Conditions: authzConditions(ix, ap)}
	}
	return out
}

func splitConditions(ix *meshstate.Index, sp *meshstate.Split) []metav1.Condition {
	st := ix.State()
	ns := sp.Key.Namespace
	root, rootFound := st.Services[meshstate.Key{Namespace: ns, Name: sp.Service}]
	var problems []string
	usable := 0
	if !rootFound {
		problems = append(problems, fmt.Sprintf("root service %s/%s not found", ns, sp.Service))
	}
	for _, b := range sp.Backends {
		svc, ok := st.Services[meshstate.Key{Namespace: ns, Name: b.Service}]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("backend service %s/%s not found", ns, b.Service))
		case rootFound && !sharesPorts(root, svc):
			problems = append(problems, fmt.Sprintf("backend service %s/%s has none of the ports of %s/%s, so it gets no traffic (SMI sends a backend the root's port number)", ns, b.Service, ns, sp.Service))
		default:
			if b.Weight > 0 {
				usable++
			}
		}
	}
	refs := cond(ResolvedRefs, len(problems) == 0, "ResolvedRefs", "every referenced service exists")
	if len(problems) > 0 {
		reason := "BackendNotFound"
		if !rootFound {
			reason = "ServiceNotFound"
		}
		refs = cond(ResolvedRefs, false, reason, strings.Join(problems, "; "))
	}

	accepted := cond(Accepted, true, "Accepted", fmt.Sprintf("splitting %s/%s across %d backends", ns, sp.Service, usable))
	switch winner, conflicted := ix.Conflicts[sp.Key]; {
	case conflicted:
		accepted = cond(Accepted, false, "Conflicted", fmt.Sprintf("TrafficSplit %s, created earlier, already splits service %s; the oldest split wins. Delete one of them", winner, sp.Service))
	case len(sp.Matches) > 0:
		accepted = cond(Accepted, false, "UnsupportedMatches", "matches (HTTPRouteGroup) are not supported yet, so this split is not applied and calls go to the root service unsplit. Remove matches to split all traffic")
	case !rootFound:
		accepted = cond(Accepted, false, "ServiceNotFound", fmt.Sprintf("root service %s/%s not found: create it, clients call it", ns, sp.Service))
	case usable == 0:
		accepted = cond(Accepted, false, "NoUsableBackend", fmt.Sprintf("no backend with a weight above 0 exists with a port of %s/%s, so calls go to the root service unsplit", ns, sp.Service))
	}
	return []metav1.Condition{accepted, refs}
}

func sharesPorts(root, backend *meshstate.Service) bool {
	for _, rp := range root.Ports {
		for _, bp := range backend.Ports {
			if rp.Port == bp.Port {
				return true
			}
		}
	}
	return false
}

func policyConditions(ix *meshstate.Index, tp *meshstate.TrafficPolicy) []metav1.Condition {
	target := meshstate.Key{Namespace: tp.Key.Namespace, Name: tp.Target}
	refs := cond(ResolvedRefs, true, "ResolvedRefs", fmt.Sprintf("service %s found", target))
	if _, ok := ix.State().Services[target]; !ok {
		refs = cond(ResolvedRefs, false, "TargetNotFound", fmt.Sprintf("service %s not found; the policy applies once it exists", target))
	}
	accepted := cond(Accepted, true, "Accepted", fmt.Sprintf("applied to the clients of service %s", target))
	if winner, ok := ix.Conflicts[tp.Key]; ok {
		accepted = cond(Accepted, false, "Conflicted", fmt.Sprintf("TrafficPolicy %s, created earlier, already targets service %s; the oldest policy wins. Merge them into one", winner, tp.Target))
	}
	return []metav1.Condition{accepted, refs}
}

func authzConditions(ix *meshstate.Index, ap *meshstate.AuthorizationPolicy) []metav1.Condition {
	var pods []string
	for _, p := range ix.State().Pods {
		if p.Key.Namespace == ap.Key.Namespace && ap.Selector.Matches(p.Labels) {
			pods = append(pods, p.Key.Name)
		}
	}
	slices.SortFunc(pods, cmp.Compare)
	accepted := cond(Accepted, true, "Accepted", fmt.Sprintf("%d rules enforced by the selected pods' sidecars", len(ap.Rules)))
	if len(ap.Rules) == 0 {
		accepted.Message = "no rules: every call to the selected pods is denied"
	}
	refs := cond(ResolvedRefs, true, "ResolvedRefs", fmt.Sprintf("selects %d pods", len(pods)))
	if len(pods) == 0 {
		refs = cond(ResolvedRefs, false, "NoMatchingPods", fmt.Sprintf("the selector matches no pod in namespace %s yet", ap.Key.Namespace))
	}
	return []metav1.Condition{accepted, refs}
}
