package config

import "testing"

func TestRBACAllow(t *testing.T) {
	policy := &RBAC{Policies: []Policy{
		{Name: "shop/p/rules[0]", Ports: []uint32{8080}, Principals: []Principal{{Exact: "spiffe://cluster.local/ns/shop/sa/frontend"}}},
		{Name: "shop/p/rules[1]", Principals: []Principal{{Prefix: "spiffe://cluster.local/ns/monitoring/sa/"}}},
	}}
	for _, tc := range []struct {
		name   string
		rbac   *RBAC
		peer   string
		port   uint32
		want   bool
		policy string
	}{
		{"no policy selects the pod: everyone is allowed", nil, "", 8080, true, ""},
		{"the named service account on its port is allowed", policy, "spiffe://cluster.local/ns/shop/sa/frontend", 8080, true, "shop/p/rules[0]"},
		{"the named service account on another port is denied", policy, "spiffe://cluster.local/ns/shop/sa/frontend", 9090, false, ""},
		{"any service account of an allowed namespace is allowed on any port", policy, "spiffe://cluster.local/ns/monitoring/sa/prometheus", 9090, true, "shop/p/rules[1]"},
		{"a namespace prefix does not match a longer namespace name", policy, "spiffe://cluster.local/ns/monitoring-x/sa/a", 9090, false, ""},
		{"the bare prefix is not an identity", policy, "spiffe://cluster.local/ns/monitoring/sa/", 9090, false, ""},
		{"a plaintext caller is denied when a policy exists", policy, "", 8080, false, ""},
		{"a policy with no rules denies everything", &RBAC{}, "spiffe://cluster.local/ns/shop/sa/frontend", 8080, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, pol := tc.rbac.Allow(tc.peer, tc.port)
			if got != tc.want || pol != tc.policy {
				t.Errorf("Allow(%q, %d) = %v, %q; want %v, %q", tc.peer, tc.port, got, pol, tc.want, tc.policy)
			}
		})
	}
}
