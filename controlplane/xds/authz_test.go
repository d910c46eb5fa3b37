package xds

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

func TestAuthorizeNode(t *testing.T) {
	st := meshstate.NewState()
	add := func(ns, name, sa string, injected bool) {
		k := meshstate.Key{Namespace: ns, Name: name}
		st.Pods[k] = &meshstate.Pod{Key: k, ServiceAccount: sa, Injected: injected}
	}
	add("shop", "frontend-1", "frontend", true)
	add("shop", "backend-1", "backend", true)
	add("shop", "legacy-1", "frontend", false)
	add("pay", "frontend-1", "frontend", true)

	for _, tc := range []struct {
		name, id, node string
		want           codes.Code
	}{
		{"a proxy gets its own pod's configuration", "spiffe://cluster.local/ns/shop/sa/frontend", "shop/frontend-1", codes.OK},
		{"a proxy cannot get a pod that runs as another service account", "spiffe://cluster.local/ns/shop/sa/frontend", "shop/backend-1", codes.PermissionDenied},
		{"a proxy cannot get a pod with the same service account name in another namespace", "spiffe://cluster.local/ns/shop/sa/frontend", "pay/frontend-1", codes.PermissionDenied},
		{"a certificate from another trust domain is refused", "spiffe://evil.org/ns/shop/sa/frontend", "shop/frontend-1", codes.PermissionDenied},
		{"an identity that is not a workload's is refused", "spiffe://cluster.local/ns/shop/sa/frontend/extra", "shop/frontend-1", codes.PermissionDenied},
		{"a pod not known yet is retried later", "spiffe://cluster.local/ns/shop/sa/frontend", "shop/frontend-2", codes.Unavailable},
		{"a pod without a sidecar gets nothing", "spiffe://cluster.local/ns/shop/sa/frontend", "shop/legacy-1", codes.FailedPrecondition},
		{"a malformed node ID is refused", "spiffe://cluster.local/ns/shop/sa/frontend", "frontend-1.shop", codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := spiffeid.RequireFromString(tc.id)
			err := authorizeNode(st, id, tc.node)
			if got := status.Code(err); got != tc.want {
				t.Errorf("authorizeNode(%s, %s) = %v (%v), want %v", tc.id, tc.node, got, err, tc.want)
			}
		})
	}
}
