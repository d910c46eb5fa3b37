package translate

import (
	"strconv"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

const (
	filterHTTPRBAC    = "envoy.filters.http.rbac"
	filterNetworkRBAC = "envoy.filters.network.rbac"
)

// rbacRules turns the AuthorizationPolicies that select a pod into one ALLOW RBAC: a call
// is allowed when any rule of any policy allows it, and denied otherwise. Nil when no policy
// selects the pod, which means no RBAC filter at all (allow everyone). Policies without
// rules give an ALLOW RBAC with no policies, which denies every call.
//
// A rule that cannot be expressed (no valid port, no usable caller) is left out rather than
// widened: a bad rule must never open access.
func rbacRules(mesh meshstate.Mesh, policies []*meshstate.AuthorizationPolicy) *rbacv3.RBAC {
	if len(policies) == 0 {
		return nil
	}
	out := &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW, Policies: map[string]*rbacv3.Policy{}}
	for _, ap := range policies {
		for i, rule := range ap.Rules {
			if p := rbacPolicy(mesh, ap.Key.Namespace, rule); p != nil {
				out.Policies[ap.Key.String()+"/rules["+strconv.Itoa(i)+"]"] = p
			}
		}
	}
	return out
}

// rbacPolicy is one rule: any of its ports, from any of its callers.
func rbacPolicy(mesh meshstate.Mesh, policyNamespace string, rule meshstate.AuthzRule) *rbacv3.Policy {
	p := &rbacv3.Policy{}
	if len(rule.Ports) == 0 {
		p.Permissions = []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}}
	}
	for _, port := range rule.Ports {
		if validPort(port) {
			p.Permissions = append(p.Permissions, &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: port}})
		}
	}
	for _, from := range rule.From {
		if pr := rbacPrincipal(mesh, policyNamespace, from); pr != nil {
			p.Principals = append(p.Principals, pr)
		}
	}
	if len(p.Permissions) == 0 || len(p.Principals) == 0 {
		return nil
	}
	return p
}

// rbacPrincipal matches the SPIFFE ID in the caller's client certificate. Plaintext callers
// have none, so no principal ever matches them.
func rbacPrincipal(mesh meshstate.Mesh, policyNamespace string, from meshstate.Principal) *rbacv3.Principal {
	switch {
	case from.ServiceAccount != nil && from.ServiceAccount.Name != "":
		ns := from.ServiceAccount.Namespace
		if ns == "" { // the API's default; the controllers normally fill it in
			ns = policyNamespace
		}
		return authenticated(exact(mesh.SPIFFEID(ns, from.ServiceAccount.Name)))
	case from.Namespace != "":
		// Every ServiceAccount of the namespace: spiffe://<td>/ns/<ns>/sa/ as a prefix.
		return authenticated(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: mesh.SPIFFEID(from.Namespace, "")}})
	case from.Identity != "":
		return authenticated(exact(from.Identity))
	default:
		return nil
	}
}

func authenticated(m *matcherv3.StringMatcher) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{
		PrincipalName: m,
	}}}
}

// networkRBAC checks the caller once per connection, for TCP and passthrough chains.
func networkRBAC(c *collector, statPrefix string, rules *rbacv3.RBAC) *listenerv3.Filter {
	return networkFilter(c, filterNetworkRBAC, &rbacnetv3.RBAC{StatPrefix: statPrefix, Rules: rules})
}

// httpRBAC checks the caller on each request, for HTTP chains.
func httpRBAC(c *collector, rules *rbacv3.RBAC) *hcmv3.HttpFilter {
	return httpFilter(c, filterHTTPRBAC, &rbachttpv3.RBAC{Rules: rules})
}

func exact(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}
}
