package xdsclient

import (
	"errors"
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/trellis-mesh/trellis/sidecar/config"
)

// SDS secret names: the sidecar supplies both itself, they never come over xDS.
const (
	secretSVID   = "default" // its own X.509 SVID
	secretRootCA = "ROOTCA"  // the mesh trust bundle
)

var (
	typeUpstreamTLS   = fullName(&tlsv3.UpstreamTlsContext{})
	typeDownstreamTLS = fullName(&tlsv3.DownstreamTlsContext{})
	typeRawBuffer     = fullName(&rawbufferv3.RawBuffer{})
)

// parseUpstreamSocket reads a cluster's transport socket: a ClientTLS for mTLS, nil for
// plaintext.
func parseUpstreamSocket(ts *corev3.TransportSocket) (*config.ClientTLS, error) {
	if ts.GetConfigType() == nil && ts.GetName() == "envoy.transport_sockets.raw_buffer" {
		return nil, nil
	}
	switch t := ts.GetTypedConfig().MessageName(); t {
	case typeRawBuffer:
		return nil, nil
	case typeUpstreamTLS:
		ctx := &tlsv3.UpstreamTlsContext{}
		if err := unpack(ts.GetTypedConfig(), ctx); err != nil {
			return nil, err
		}
		ids, err := commonTLS(ctx.GetCommonTlsContext())
		if err != nil {
			return nil, err
		}
		return &config.ClientTLS{AllowedIdentities: ids, ALPN: ctx.GetCommonTlsContext().GetAlpnProtocols(), SNI: ctx.GetSni()}, nil
	default:
		return nil, fmt.Errorf("transport socket %q (%s) is not supported (tls UpstreamTlsContext or raw_buffer)", ts.GetName(), t)
	}
}

// parseDownstreamTLS checks an inbound chain's transport socket: mTLS with a client
// certificate from the mesh CA required. Who may call is RBAC's business, so it names no
// SANs.
func parseDownstreamTLS(ts *corev3.TransportSocket) error {
	if t := ts.GetTypedConfig().MessageName(); t != typeDownstreamTLS {
		return fmt.Errorf("%q (%s) is not supported: inbound chains terminate mTLS with a DownstreamTlsContext, or have no transport socket", ts.GetName(), t)
	}
	ctx := &tlsv3.DownstreamTlsContext{}
	if err := unpack(ts.GetTypedConfig(), ctx); err != nil {
		return err
	}
	if !ctx.GetRequireClientCertificate().GetValue() {
		return errors.New("require_client_certificate must be true: inbound TLS is mutual")
	}
	ids, err := commonTLS(ctx.GetCommonTlsContext())
	if err != nil {
		return err
	}
	if len(ids) > 0 {
		return errors.New("inbound TLS does not match subject alt names: RBAC decides who may call")
	}
	return nil
}

// commonTLS checks that a TLS context uses the sidecar's own certificate and the mesh root,
// and returns the SPIFFE IDs the peer must present (exact URI SANs).
func commonTLS(c *tlsv3.CommonTlsContext) ([]string, error) {
	if c == nil {
		return nil, errors.New("common_tls_context is missing")
	}
	if len(c.GetTlsCertificates()) > 0 || c.GetTlsCertificateProviderInstance() != nil || c.GetCustomHandshaker() != nil || c.GetCustomTlsCertificateSelector() != nil {
		return nil, errors.New("common_tls_context: the sidecar presents its own SVID (SDS secret \"default\"); inline certificates, providers and custom handshakers are not supported")
	}
	certs := c.GetTlsCertificateSdsSecretConfigs()
	if len(certs) == 0 {
		return nil, fmt.Errorf("common_tls_context.tls_certificate_sds_secret_configs must name %q, the sidecar's own SVID", secretSVID)
	}
	for _, s := range certs {
		if s.GetName() != secretSVID {
			return nil, fmt.Errorf("common_tls_context: certificate secret %q is not %q, the only certificate the sidecar has", s.GetName(), secretSVID)
		}
	}
	var root string
	var vc *tlsv3.CertificateValidationContext
	switch v := c.GetValidationContextType().(type) {
	case *tlsv3.CommonTlsContext_CombinedValidationContext:
		root = v.CombinedValidationContext.GetValidationContextSdsSecretConfig().GetName()
		vc = v.CombinedValidationContext.GetDefaultValidationContext()
	case *tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig:
		root = v.ValidationContextSdsSecretConfig.GetName()
	default:
		return nil, fmt.Errorf("common_tls_context: the peer is verified against the mesh root, SDS secret %q (validation_context_sds_secret_config or combined_validation_context)", secretRootCA)
	}
	if root != secretRootCA {
		return nil, fmt.Errorf("common_tls_context: validation secret %q is not %q, the only trust bundle the sidecar has", root, secretRootCA)
	}
	if vc.GetTrustedCa() != nil || vc.GetCaCertificateProviderInstance() != nil || vc.GetSystemRootCerts() != nil || vc.GetCustomValidatorConfig() != nil {
		return nil, errors.New("default_validation_context: trust comes from the mesh root only (no trusted_ca, providers or custom validators)")
	}
	//lint:ignore SA1019 the deprecated matcher is read only to refuse it: ignoring it would accept any mesh peer (fail open)
	if len(vc.GetMatchSubjectAltNames()) > 0 || len(vc.GetVerifyCertificateSpki()) > 0 || len(vc.GetVerifyCertificateHash()) > 0 {
		return nil, errors.New("default_validation_context: peers are matched by match_typed_subject_alt_names only (URI, exact)")
	}
	var ids []string
	for i, m := range vc.GetMatchTypedSubjectAltNames() {
		exact, ok := m.GetMatcher().GetMatchPattern().(*matcherv3.StringMatcher_Exact)
		if m.GetSanType() != tlsv3.SubjectAltNameMatcher_URI || !ok || m.GetMatcher().GetIgnoreCase() || exact.Exact == "" {
			return nil, fmt.Errorf("match_typed_subject_alt_names[%d]: only URI SANs matched exactly (a SPIFFE ID) are supported", i)
		}
		ids = append(ids, exact.Exact)
	}
	return ids, nil
}
