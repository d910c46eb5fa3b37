// Package identity is the mesh's certificate authority.
//
// The control plane holds the CA (an [Authority]: a root, or an intermediate chained to a
// root, and its key, kept in a Secret or supplied by the user, see [LoadOrCreate]). A sidecar
// makes its own key pair and sends a CSR plus its projected ServiceAccount token (audience
// [Audience]) to the CertificateService ([Server], api/ca/v1alpha1). The server checks the
// token with a Kubernetes TokenReview ([KubeTokenReviewer]), derives the SPIFFE ID
// spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>, checks that the CSR asks for
// exactly that identity ([CheckCSR]) and signs a short-lived X.509-SVID ([Authority.Sign]).
//
// The control plane's own gRPC port (15012) serves a certificate from the same root
// ([Authority.ServingCertificate], renewed by a [CertRotator]) with a TLS config that verifies
// a client certificate when one is given ([ServerTLSConfig]): the CA call comes before the
// sidecar has a certificate, xDS streams must present one, and [PeerIdentity] tells the xDS
// server whose it is.
//
// [BundlePublisher] copies the trust bundle into the ConfigMap trellis-ca-root-cert of every
// namespace labelled trellis.dev/inject=enabled, where the injected sidecars mount it.
//
// # The CA Secret
//
// Trellis's own layout is ca.crt (the CA certificate, optionally followed by its issuers) and
// ca.key (PEM: PKCS#8, SEC 1 or PKCS#1). A cert-manager Certificate's Secret works as is:
// tls.crt and tls.key are the CA and its key, and ca.crt, when present, is the root that
// issued it. In both layouts ca-bundle.crt may add roots to the trust bundle.
//
// When Trellis generates the root it is ECDSA P-256, valid for ten years, and stored with
// label app.kubernetes.io/managed-by=trellis. A Secret that exists but cannot be used is
// reported and never overwritten.
//
// To rotate the root without dropping traffic: add the new root to ca-bundle.crt and restart
// the control plane, then wait until every sidecar has renewed its certificate and with it
// its trust bundle (one default TTL, 24h); then put the new certificate and key in
// ca.crt/ca.key and the old root in ca-bundle.crt, restart, and remove the old root once
// every certificate it signed has expired (the maximum TTL).
package identity
