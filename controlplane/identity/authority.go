package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const (
	// DefaultTTL is the lifetime of a workload certificate when the caller asks for none.
	DefaultTTL = 24 * time.Hour
	// DefaultMaxTTL is the longest workload certificate the CA signs unless configured
	// otherwise with [WithMaxTTL].
	DefaultMaxTTL = 7 * 24 * time.Hour
	// RootValidity is the lifetime of a root the CA generates for itself.
	RootValidity = 10 * 365 * 24 * time.Hour
	// ClockSkew is how far before "now" a certificate's NotBefore is set, so that peers whose
	// clocks are slightly behind accept it at once.
	ClockSkew = time.Minute
)

// Authority is the mesh CA: the certificate that signs workload certificates (a
// self-signed root, or an intermediate chained to a root), its key, the roots the mesh
// trusts and the trust domain. It is safe for concurrent use; it never changes after
// construction (a new root takes a control-plane restart).
type Authority struct {
	trustDomain   spiffeid.TrustDomain
	cert          *x509.Certificate   // signs workload certificates
	key           crypto.Signer       // cert's key
	intermediates []*x509.Certificate // sent after the leaf: cert itself when not a root, then the rest of its chain
	roots         []*x509.Certificate // the trust bundle
	notAfter      time.Time           // no issued certificate outlives the chain up to its root
	cfg           config
}

// Option configures an [Authority].
type Option func(*config)

type config struct {
	now        func() time.Time
	defaultTTL time.Duration
	maxTTL     time.Duration
}

func newConfig(opts []Option) config {
	c := config{now: time.Now, defaultTTL: DefaultTTL, maxTTL: DefaultMaxTTL}
	for _, o := range opts {
		o(&c)
	}
	if c.maxTTL < c.defaultTTL {
		c.defaultTTL = c.maxTTL
	}
	return c
}

// WithClock makes the Authority read the time from now (for tests).
func WithClock(now func() time.Time) Option {
	return func(c *config) {
		if now != nil {
			c.now = now
		}
	}
}

// WithDefaultTTL sets the lifetime of a certificate when the caller asks for none
// ([DefaultTTL] unless set). It is capped by the maximum.
func WithDefaultTTL(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.defaultTTL = d
		}
	}
}

// WithMaxTTL sets the longest lifetime the CA grants ([DefaultMaxTTL] unless set).
func WithMaxTTL(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.maxTTL = d
		}
	}
}

// NewAuthority builds a CA from a signing chain (chain[0] is the signing certificate, the
// rest its issuers, leaf-most first), the signing certificate's key, and extra trusted
// roots (for example the old or the next root during a rotation). Self-signed certificates
// in chain become roots; the others are sent with every certificate issued.
//
// It refuses a key that does not match the certificate, a certificate that is not a CA or
// is outside its validity period, and a signing certificate that does not chain to a root.
func NewAuthority(td spiffeid.TrustDomain, chain []*x509.Certificate, key crypto.Signer, extraRoots []*x509.Certificate, opts ...Option) (*Authority, error) {
	if td.IsZero() {
		return nil, errors.New("no trust domain: configure one such as cluster.local")
	}
	if len(chain) == 0 {
		return nil, errors.New("no CA certificate")
	}
	if key == nil {
		return nil, errors.New("no CA private key")
	}
	cfg := newConfig(opts)
	cert := chain[0]
	if err := checkCACert(cert, cfg.now()); err != nil {
		return nil, err
	}
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, fmt.Errorf("the CA private key does not belong to the CA certificate (subject %q): supply the key that was used to create it", cert.Subject)
	}
	if err := checkTrustDomain(cert, td); err != nil {
		return nil, err
	}

	a := &Authority{trustDomain: td, cert: cert, key: key, cfg: cfg, notAfter: cert.NotAfter}
	for _, c := range chain {
		if isSelfSigned(c) {
			a.roots = appendUnique(a.roots, c)
			continue
		}
		a.intermediates = append(a.intermediates, c)
	}
	for _, r := range extraRoots {
		a.roots = appendUnique(a.roots, r)
	}
	if len(a.roots) == 0 {
		return nil, fmt.Errorf("the CA certificate (subject %q) is not self-signed and no root was given: add the root that issued it to the trust bundle", cert.Subject)
	}
	chains, err := cert.Verify(x509.VerifyOptions{
		Roots:         certPool(a.roots),
		Intermediates: certPool(a.intermediates),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		CurrentTime:   cfg.now(),
	})
	if err != nil {
		return nil, fmt.Errorf("the CA certificate (subject %q) does not chain to a trusted root: %w", cert.Subject, err)
	}
	for _, c := range chains[0] { // an issued certificate is no good once its root expires
		if c.NotAfter.Before(a.notAfter) {
			a.notAfter = c.NotAfter
		}
	}
	return a, nil
}

// NewSelfSigned generates a CA with a new self-signed ECDSA P-256 root valid for
// [RootValidity]: CA:TRUE, key usage CertSign and CRLSign, URI SAN spiffe://<td>,
// subject O=Trellis, CN=Trellis Root CA.
func NewSelfSigned(td spiffeid.TrustDomain, opts ...Option) (*Authority, error) {
	if td.IsZero() {
		return nil, errors.New("no trust domain: configure one such as cluster.local")
	}
	cfg := newConfig(opts)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate root key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := cfg.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Trellis"}, CommonName: "Trellis Root CA"},
		NotBefore:             now.Add(-ClockSkew),
		NotAfter:              now.Add(RootValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create root certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse the new root certificate: %w", err)
	}
	return NewAuthority(td, []*x509.Certificate{cert}, key, nil, opts...)
}

// TrustDomain is the trust domain whose identities the CA signs.
func (a *Authority) TrustDomain() spiffeid.TrustDomain { return a.trustDomain }

// Certificate is the certificate that signs workload certificates.
func (a *Authority) Certificate() *x509.Certificate { return a.cert }

// Roots are the certificates the mesh trusts: the current root and any extra ones.
func (a *Authority) Roots() []*x509.Certificate { return append([]*x509.Certificate(nil), a.roots...) }

// Bundle is the trust bundle as a go-spiffe X.509 bundle (an x509bundle.Source).
func (a *Authority) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(a.trustDomain, a.roots)
}

// TrustBundlePEM is every root, PEM-encoded and concatenated.
func (a *Authority) TrustBundlePEM() []byte { return EncodeCertificates(a.roots) }

// MaxTTL is the longest lifetime the CA grants.
func (a *Authority) MaxTTL() time.Duration { return a.cfg.maxTTL }

// NotAfter is when the signing chain expires; no certificate is issued beyond it.
func (a *Authority) NotAfter() time.Time { return a.notAfter }

// EncodeCertificates PEM-encodes certs, one CERTIFICATE block each.
func EncodeCertificates(certs []*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes()
}

// ParseCertificates reads every CERTIFICATE block of a PEM document. It refuses a document
// with none, and any other kind of block.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			if len(bytes.TrimSpace(rest)) > 0 {
				return nil, errors.New("text that is not PEM follows the certificates")
			}
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("found a PEM block of type %q where certificates were expected", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	return certs, nil
}

// ParsePrivateKey reads a PEM private key: PKCS#8 ("PRIVATE KEY"), SEC 1 ("EC PRIVATE KEY")
// or PKCS#1 ("RSA PRIVATE KEY"). Encrypted keys are refused.
func ParsePrivateKey(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "ENCRYPTED PRIVATE KEY":
		return nil, errors.New("the private key is encrypted: store it unencrypted in the Secret")
	default:
		return nil, fmt.Errorf("PEM block of type %q is not a private key", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", block.Type, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported private key type %T", key)
	}
	return signer, nil
}

// encodePrivateKey PEM-encodes key as PKCS#8.
func encodePrivateKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode CA private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func checkCACert(cert *x509.Certificate, now time.Time) error {
	switch {
	case !cert.BasicConstraintsValid || !cert.IsCA:
		return fmt.Errorf("the CA certificate (subject %q) is not a CA (basic constraints CA:TRUE missing): use a certificate made for signing", cert.Subject)
	case cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0:
		return fmt.Errorf("the CA certificate (subject %q) may not sign certificates (key usage keyCertSign missing)", cert.Subject)
	case now.Before(cert.NotBefore):
		return fmt.Errorf("the CA certificate (subject %q) is not valid until %s: check the clock, or use a certificate valid now", cert.Subject, cert.NotBefore.UTC().Format(time.RFC3339))
	case now.After(cert.NotAfter):
		return fmt.Errorf("the CA certificate (subject %q) expired on %s: rotate the CA", cert.Subject, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// checkTrustDomain refuses a CA certificate that names a SPIFFE trust domain other than td.
// A certificate with no SPIFFE URI SAN (typical for user-supplied CAs) is accepted.
func checkTrustDomain(cert *x509.Certificate, td spiffeid.TrustDomain) error {
	for _, u := range cert.URIs {
		if u.Scheme != "spiffe" {
			continue
		}
		other, err := spiffeid.TrustDomainFromURI(u)
		if err != nil {
			continue
		}
		if other != td {
			return fmt.Errorf("the CA certificate was made for trust domain %q but the mesh is configured for %q: use the same trust domain, or a CA for this one", other, td)
		}
	}
	return nil
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil
}

func appendUnique(certs []*x509.Certificate, c *x509.Certificate) []*x509.Certificate {
	for _, have := range certs {
		if have.Equal(c) {
			return certs
		}
	}
	return append(certs, c)
}

func certPool(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}

// randomSerial is a random, positive 128-bit serial number.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("generate serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}
