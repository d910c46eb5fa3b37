package xdsclient

import (
	"errors"
	"fmt"
	"net/netip"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// transportSocketMatchKey is the endpoint metadata Envoy matches transport_socket_matches
// against.
const transportSocketMatchKey = "envoy.transport_socket_match"

// endpointInfo is one parsed endpoint; whether it is reached over mTLS depends on its
// cluster's transport_socket_matches, resolved when linking.
type endpointInfo struct {
	addr        netip.AddrPort
	socketMatch *structpb.Struct
	identity    string
	pod         string
}

// parseLoadAssignment reads the endpoints of a ClusterLoadAssignment. Endpoints Envoy would
// not send traffic to (unhealthy, draining, timed out) are left out.
func parseLoadAssignment(cla *endpointv3.ClusterLoadAssignment) ([]endpointInfo, error) {
	if len(cla.GetNamedEndpoints()) > 0 {
		return nil, errors.New("named_endpoints are not supported")
	}
	var out []endpointInfo
	for i, loc := range cla.GetEndpoints() {
		if loc.GetPriority() != 0 {
			return nil, fmt.Errorf("endpoints[%d]: priority %d is not supported (all endpoints have priority 0)", i, loc.GetPriority())
		}
		if loc.GetLedsClusterLocalityConfig() != nil {
			return nil, fmt.Errorf("endpoints[%d]: LEDS is not supported", i)
		}
		for j, lb := range loc.GetLbEndpoints() {
			e, ok, err := parseEndpoint(lb)
			if err != nil {
				return nil, fmt.Errorf("endpoints[%d].lb_endpoints[%d]: %w", i, j, err)
			}
			if ok {
				out = append(out, e)
			}
		}
	}
	return out, nil
}

func parseEndpoint(lb *endpointv3.LbEndpoint) (endpointInfo, bool, error) {
	if lb.GetEndpoint() == nil {
		return endpointInfo{}, false, errors.New("no endpoint (named endpoints are not supported)")
	}
	addr, err := socketAddress(lb.GetEndpoint().GetAddress())
	if err != nil {
		return endpointInfo{}, false, err
	}
	switch lb.GetHealthStatus() {
	case corev3.HealthStatus_UNHEALTHY, corev3.HealthStatus_DRAINING, corev3.HealthStatus_TIMEOUT:
		return endpointInfo{}, false, nil
	}
	md := lb.GetMetadata().GetFilterMetadata()
	e := endpointInfo{addr: addr, socketMatch: md[transportSocketMatchKey]}
	trellis := md[trellisMetadataKey].GetFields()
	for _, f := range []struct {
		key string
		dst *string
	}{{"identity", &e.identity}, {"pod", &e.pod}} {
		key, dst := f.key, f.dst
		v, ok := trellis[key]
		if !ok {
			continue
		}
		s, isString := v.GetKind().(*structpb.Value_StringValue)
		if !isString {
			return endpointInfo{}, false, fmt.Errorf("metadata trellis.%s must be a string, not %v", key, v.AsInterface())
		}
		*dst = s.StringValue
	}
	return e, true, nil
}
