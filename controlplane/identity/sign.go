package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Sign issues an X.509-SVID for id to the key in csr: exactly one URI SAN (id) and no other
// SAN, key usage DigitalSignature, KeyEncipherment and KeyAgreement, extended key usage
// ServerAuth and ClientAuth, a random 128-bit serial, NotBefore now-[ClockSkew] and
// NotAfter now+ttl, capped by the CA's own expiry. ttl <= 0 means the default TTL; a ttl
// above the maximum is lowered to it.
//
// Sign does not check that the caller may have id: call [CheckCSR] first. It returns the
// chain leaf first, followed by the CA's intermediates (none when it signs with a root).
func (a *Authority) Sign(csr *x509.CertificateRequest, id spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error) {
	if csr == nil {
		return nil, errors.New("no certificate signing request")
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, err
	}
	return a.issue(csr.PublicKey, id, nil, ttl)
}

// ServingCertificate issues a certificate and a new ECDSA P-256 key for a server of the
// mesh itself, such as the control plane's gRPC port: URI SAN id plus dnsNames (e.g.
// trellis-controlplane.trellis-system.svc), usable for server and client authentication.
// The returned certificate carries the chain and the parsed leaf.
func (a *Authority) ServingCertificate(id spiffeid.ID, dnsNames []string, ttl time.Duration) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate serving key: %w", err)
	}
	chain, err := a.issue(key.Public(), id, dnsNames, ttl)
	if err != nil {
		return nil, err
	}
	cert := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert, nil
}

func (a *Authority) issue(pub crypto.PublicKey, id spiffeid.ID, dnsNames []string, ttl time.Duration) ([]*x509.Certificate, error) {
	if id.IsZero() {
		return nil, errors.New("no SPIFFE ID to certify")
	}
	if !id.MemberOf(a.trustDomain) {
		return nil, fmt.Errorf("SPIFFE ID %s is outside the mesh's trust domain %s", id, a.trustDomain)
	}
	now := a.cfg.now()
	notAfter := now.Add(a.clampTTL(ttl))
	if notAfter.After(a.notAfter) {
		notAfter = a.notAfter
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("the CA certificate expired on %s: rotate the CA", a.notAfter.UTC().Format(time.RFC3339))
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Trellis"}},
		NotBefore:             now.Add(-ClockSkew),
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		IsCA:                  false,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:                  []*url.URL{id.URL()},
		DNSNames:              dnsNames,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, pub, a.key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse the certificate just signed for %s: %w", id, err)
	}
	return append([]*x509.Certificate{leaf}, a.intermediates...), nil
}

// clampTTL applies the default and the maximum.
func (a *Authority) clampTTL(ttl time.Duration) time.Duration {
	switch {
	case ttl <= 0:
		return a.cfg.defaultTTL
	case ttl > a.cfg.maxTTL:
		return a.cfg.maxTTL
	}
	return ttl
}
