package translate

import (
	"strconv"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

// Resource names. They are part of the xDS contract with the sidecar (docs/xds.md): the
// sidecar finds the listener for a destination VIP:port by address, but operators and the
// status reporter read these names in config dumps, so they follow Istio's well-known shapes.
const (
	// InboundListenerName is the one listener that receives all redirected inbound traffic.
	InboundListenerName = "inbound|15006"
	// InboundPassthroughCluster carries inbound connections to ports no Service or container
	// port declares, to their original destination.
	InboundPassthroughCluster = "inbound|passthrough"
	// OutboundListenerName is the virtual listener that receives all redirected outbound
	// traffic and hands each connection to the listener of its original destination.
	OutboundListenerName = "outbound|15001"
	// OutboundPassthroughCluster carries outbound connections to destinations the mesh does
	// not know (no Service VIP matches) to their original destination, untouched.
	OutboundPassthroughCluster = "outbound|passthrough"

	// InboundPort and OutboundPort are the capture ports the redirect rules send traffic to.
	InboundPort  = 15006
	OutboundPort = 15001

	// clusterDomain is the Kubernetes DNS domain used in cluster names. It is not the SPIFFE
	// trust domain, which is configurable; Kubernetes' own domain is what people recognise.
	clusterDomain = "svc.cluster.local"
)

// Metadata keys (docs/xds.md, "Metadata").
const (
	// transportSocketMatchKey is the endpoint metadata namespace Envoy reads to pick one of a
	// cluster's transport_socket_matches.
	transportSocketMatchKey = "envoy.transport_socket_match"
	// trellisMetadataKey holds Trellis's own metadata on endpoints and routes.
	trellisMetadataKey = "trellis"
)

// SDS secret names. The sidecar supplies both locally from its CA-issued certificate; they
// are never sent over xDS.
const (
	secretSVID   = "default" // the proxy's own X.509 SVID and key
	secretRootCA = "ROOTCA"  // the mesh trust bundle
)

// outboundName names the outbound listener and route configuration of a Service port:
// outbound|<svc>.<ns>|<port>.
func outboundName(svc meshstate.Key, port uint32) string {
	return "outbound|" + svc.Name + "." + svc.Namespace + "|" + strconv.FormatUint(uint64(port), 10)
}

// virtualHostName names the one virtual host of an outbound route: <svc>.<ns>:<port>.
func virtualHostName(svc meshstate.Key, port uint32) string {
	return svc.Name + "." + svc.Namespace + ":" + strconv.FormatUint(uint64(port), 10)
}

// outboundClusterName names the cluster (and its ClusterLoadAssignment) of a Service port:
// outbound|<port>||<svc>.<ns>.svc.cluster.local.
func outboundClusterName(svc meshstate.Key, port uint32) string {
	return "outbound|" + strconv.FormatUint(uint64(port), 10) + "||" + svc.Name + "." + svc.Namespace + "." + clusterDomain
}

// inboundClusterName names the cluster that delivers a pod port to the app: inbound|<port>||.
func inboundClusterName(port uint32) string {
	return "inbound|" + strconv.FormatUint(uint64(port), 10) + "||"
}

// inboundChainName names an inbound filter chain: inbound|<port>|<transport>.
func inboundChainName(port uint32, transport string) string {
	return "inbound|" + strconv.FormatUint(uint64(port), 10) + "|" + transport
}
