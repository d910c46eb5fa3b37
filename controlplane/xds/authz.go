package xds

import (
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

// ParseNodeID reads a node ID, which is the proxy's pod as "namespace/name".
func ParseNodeID(id string) (meshstate.Key, error) {
	var k meshstate.Key
	if err := k.UnmarshalText([]byte(id)); err != nil {
		return k, fmt.Errorf("node ID %q: want <pod namespace>/<pod name>", id)
	}
	return k, nil
}

// NodeID is the node ID of a pod's proxy.
func NodeID(pod meshstate.Key) string { return pod.String() }

// authorizeNode decides whether the holder of a certificate for id may receive the
// configuration of node. It may if the node is a meshed pod that runs as the certificate's
// ServiceAccount in the certificate's namespace, in this mesh's trust domain. Pods with the
// same ServiceAccount share an identity, so they are the same workload to the mesh.
func authorizeNode(st *meshstate.State, id spiffeid.ID, node string) error {
	pod, err := ParseNodeID(node)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if id.TrustDomain().Name() != st.Mesh.TrustDomain {
		return status.Errorf(codes.PermissionDenied, "certificate %s is not in trust domain %s", id, st.Mesh.TrustDomain)
	}
	segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(segs) != 4 || segs[0] != "ns" || segs[2] != "sa" {
		return status.Errorf(codes.PermissionDenied, "certificate %s is not a workload identity (spiffe://<td>/ns/<ns>/sa/<sa>)", id)
	}
	ns, sa := segs[1], segs[3]
	if pod.Namespace != ns {
		return status.Errorf(codes.PermissionDenied, "certificate %s may not fetch the configuration of node %s in another namespace", id, node)
	}
	p, ok := st.Pods[pod]
	if !ok {
		return status.Errorf(codes.Unavailable, "pod %s is not known to the control plane yet; retry", node)
	}
	if p.ServiceAccount != sa {
		return status.Errorf(codes.PermissionDenied, "certificate %s may not fetch the configuration of node %s, which runs as service account %s", id, node, p.ServiceAccount)
	}
	if !p.Injected {
		return status.Errorf(codes.FailedPrecondition, "pod %s has no Trellis sidecar", node)
	}
	return nil
}
