package translate

import (
	"reflect"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

// SameInbound says whether Inbound gives every proxy the same resources for next as for
// prev. Inbound reads the mesh settings, Namespaces, Services, EndpointSlices, Pods and
// AuthorizationPolicies, never TrafficSplits or TrafficPolicies (those shape the outbound
// side only); TestInboundIgnoresSplitsAndPolicies holds it to that. Objects in a State are
// never modified once stored (a change stores a new one), so equal pointers are equal objects.
func SameInbound(prev, next *meshstate.State) bool {
	return prev != nil && next != nil &&
		reflect.DeepEqual(prev.Mesh, next.Mesh) &&
		samePointers(prev.Namespaces, next.Namespaces) &&
		samePointers(prev.Services, next.Services) &&
		samePointers(prev.EndpointSlices, next.EndpointSlices) &&
		samePointers(prev.Pods, next.Pods) &&
		samePointers(prev.AuthorizationPolicies, next.AuthorizationPolicies)
}

func samePointers[K comparable, V any](a, b map[K]*V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
