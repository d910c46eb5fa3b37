package translate

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// transportSocketMatches lets each endpoint pick its transport: mTLS when its metadata says
// its pod runs a sidecar ({mtls: true} under envoy.transport_socket_match), plaintext for
// every other endpoint (the empty match matches all). The mTLS side only accepts a peer
// presenting one of the Service's identities; with no identity (no meshed endpoint) no
// endpoint carries the mtls marker, so the list being empty never means "accept anyone".
func transportSocketMatches(c *collector, sni string, identities, alpn []string) []*clusterv3.Cluster_TransportSocketMatch {
	mtls := &structpb.Struct{Fields: map[string]*structpb.Value{"mtls": structpb.NewBoolValue(true)}}
	return []*clusterv3.Cluster_TransportSocketMatch{
		{Name: "mtls", Match: mtls, TransportSocket: upstreamTLS(c, sni, identities, alpn)},
		{Name: "plaintext", Match: &structpb.Struct{}, TransportSocket: rawBuffer(c)},
	}
}

// upstreamTLS is the client side of sidecar-to-sidecar mTLS.
func upstreamTLS(c *collector, sni string, identities, alpn []string) *corev3.TransportSocket {
	validation := &tlsv3.CertificateValidationContext{}
	for _, id := range identities {
		validation.MatchTypedSubjectAltNames = append(validation.MatchTypedSubjectAltNames, &tlsv3.SubjectAltNameMatcher{
			SanType: tlsv3.SubjectAltNameMatcher_URI,
			Matcher: exact(id),
		})
	}
	common := &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret(secretSVID)},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         validation,
				ValidationContextSdsSecretConfig: sdsSecret(secretRootCA),
			},
		},
		AlpnProtocols: alpn,
	}
	return transportSocket(c, transportSocketTLS, &tlsv3.UpstreamTlsContext{CommonTlsContext: common, Sni: sni})
}

// downstreamTLS is the server side: a client certificate from the mesh CA is required; who
// may call is RBAC's business, not the handshake's.
func downstreamTLS(c *collector, alpn []string) *corev3.TransportSocket {
	ctx := &tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret(secretSVID)},
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
				ValidationContextSdsSecretConfig: sdsSecret(secretRootCA),
			},
			AlpnProtocols: alpn,
		},
	}
	return transportSocket(c, transportSocketTLS, ctx)
}

// sdsSecret names a secret the sidecar supplies itself (see secretSVID, secretRootCA). The
// ADS source is what a stock Envoy would ask; the Trellis sidecar never does.
func sdsSecret(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: ads()}
}
