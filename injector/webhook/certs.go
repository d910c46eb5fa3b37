package webhook

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"time"
)

// The keys of the certificate Secret (type kubernetes.io/tls).
const (
	keyTLSCert = "tls.crt" // the serving certificate
	keyTLSKey  = "tls.key" // its key
	keyCACert  = "ca.crt"  // the CAs the apiserver trusts (the caBundle): the signer first
	keyCAKey   = "ca.key"  // the signer's key
)

// backdate covers clocks that lag behind the one that issued a certificate.
const backdate = 5 * time.Minute

// material is the webhook's CA and serving certificate.
type material struct {
	cas     []*x509.Certificate // cas[0] signs, the others are still trusted
	caKey   crypto.Signer
	leaf    *x509.Certificate
	leafKey crypto.Signer
}

// certParams say what the certificates must be.
type certParams struct {
	caTTL, certTTL time.Duration
	dnsNames       []string
	ips            []net.IP
}

// renewal is the plan for the material at a point in time.
type renewal struct {
	next *material
	// what was renewed, for the log; empty when nothing needs to change.
	what string
}

// plan returns what the material must become at now. A new CA is issued when a third of
// the signer's lifetime is left and is trusted at once (the old one stays in the bundle
// until it expires); the serving certificate moves to it on the following plan, after the
// new caBundle has been written, so that the apiserver never meets a certificate it does
// not trust yet. The serving certificate is renewed when a third of its lifetime is left,
// when it is not signed by the signer, or when its names change.
func plan(cur *material, now time.Time, p certParams) (renewal, error) {
	if cur == nil || len(cur.cas) == 0 || cur.caKey == nil {
		ca, key, err := newCA(now, p.caTTL)
		if err != nil {
			return renewal{}, err
		}
		next := &material{cas: []*x509.Certificate{ca}, caKey: key}
		if err := next.issueLeaf(now, p); err != nil {
			return renewal{}, err
		}
		return renewal{next: next, what: "created the webhook CA and serving certificate"}, nil
	}
	next := &material{caKey: cur.caKey, leaf: cur.leaf, leafKey: cur.leafKey}
	for _, ca := range cur.cas {
		if now.Before(ca.NotAfter) {
			next.cas = append(next.cas, ca)
		}
	}
	var what []string
	if len(next.cas) < len(cur.cas) {
		what = append(what, "dropped expired CAs from the bundle")
	}
	if len(next.cas) == 0 || next.cas[0] != cur.cas[0] || cur.cas[0].NotAfter.Sub(now) < p.caTTL/3 {
		ca, key, err := newCA(now, p.caTTL)
		if err != nil {
			return renewal{}, err
		}
		next.cas = append([]*x509.Certificate{ca}, next.cas...)
		next.caKey = key
		what = append(what, "issued a new webhook CA (the old one stays trusted until it expires)")
		if !next.leafUsable(now, p) {
			if err := next.issueLeaf(now, p); err != nil {
				return renewal{}, err
			}
			what = append(what, "issued a serving certificate from it")
		}
		return renewal{next: next, what: joinWhat(what)}, nil
	}
	if !next.leafUsable(now, p) || next.leaf.CheckSignatureFrom(next.cas[0]) != nil || next.leaf.NotAfter.Sub(now) < p.certTTL/3 {
		if err := next.issueLeaf(now, p); err != nil {
			return renewal{}, err
		}
		what = append(what, "renewed the serving certificate")
	}
	return renewal{next: next, what: joinWhat(what)}, nil
}

func joinWhat(what []string) string {
	var b bytes.Buffer
	for i, w := range what {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(w)
	}
	return b.String()
}

// leafUsable: present, valid now, for the wanted names, and trusted by one of the CAs.
func (m *material) leafUsable(now time.Time, p certParams) bool {
	if m.leaf == nil || m.leafKey == nil || now.After(m.leaf.NotAfter) || now.Before(m.leaf.NotBefore) {
		return false
	}
	if !slices.Equal(m.leaf.DNSNames, p.dnsNames) || !slices.EqualFunc(m.leaf.IPAddresses, p.ips, func(a, b net.IP) bool { return a.Equal(b) }) {
		return false
	}
	return slices.ContainsFunc(m.cas, func(ca *x509.Certificate) bool { return m.leaf.CheckSignatureFrom(ca) == nil })
}

func newCA(now time.Time, ttl time.Duration) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate the webhook CA key: %w", err)
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Trellis"}, CommonName: "trellis-injector-ca " + now.UTC().Format(time.RFC3339)},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign the webhook CA: %w", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse the webhook CA: %w", err)
	}
	return ca, key, nil
}

// issueLeaf signs a new serving certificate with cas[0]; it never outlives its CA.
func (m *material) issueLeaf(now time.Time, p certParams) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate the webhook's serving key: %w", err)
	}
	serial, err := serialNumber()
	if err != nil {
		return err
	}
	ca := m.cas[0]
	notAfter := now.Add(p.certTTL)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	cn := "trellis-injector"
	if len(p.dnsNames) > 0 {
		cn = p.dnsNames[0]
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{Organization: []string{"Trellis"}, CommonName: cn},
		NotBefore:    now.Add(-backdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     slices.Clone(p.dnsNames),
		IPAddresses:  slices.Clone(p.ips),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), m.caKey)
	if err != nil {
		return fmt.Errorf("sign the webhook's serving certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("parse the webhook's serving certificate: %w", err)
	}
	m.leaf, m.leafKey = leaf, key
	return nil
}

func serialNumber() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generate a serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// bundlePEM is the caBundle: every trusted CA, the signer first.
func (m *material) bundlePEM() []byte {
	var b bytes.Buffer
	for _, ca := range m.cas {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})
	}
	return b.Bytes()
}

// encode is the Secret's data.
func (m *material) encode() (map[string][]byte, error) {
	caKey, err := keyPEM(m.caKey)
	if err != nil {
		return nil, err
	}
	leafKey, err := keyPEM(m.leafKey)
	if err != nil {
		return nil, err
	}
	return map[string][]byte{
		keyCACert:  m.bundlePEM(),
		keyCAKey:   caKey,
		keyTLSCert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m.leaf.Raw}),
		keyTLSKey:  leafKey,
	}, nil
}

func keyPEM(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("encode a private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// decode reads the Secret's data. A serving certificate that cannot be read is left out
// (plan issues a new one); a CA that cannot be read is an error.
func decode(data map[string][]byte) (*material, error) {
	m := &material{}
	rest := data[keyCACert]
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		ca, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", keyCACert, err)
		}
		m.cas = append(m.cas, ca)
	}
	if len(m.cas) == 0 {
		return nil, fmt.Errorf("%s holds no certificate", keyCACert)
	}
	key, err := parseKey(data[keyCAKey])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyCAKey, err)
	}
	if !publicKeysEqual(m.cas[0].PublicKey, key.Public()) {
		return nil, fmt.Errorf("%s is not the key of the first certificate of %s", keyCAKey, keyCACert)
	}
	m.caKey = key
	if pair, err := tls.X509KeyPair(data[keyTLSCert], data[keyTLSKey]); err == nil {
		if leaf, err := x509.ParseCertificate(pair.Certificate[0]); err == nil {
			if signer, ok := pair.PrivateKey.(crypto.Signer); ok {
				m.leaf, m.leafKey = leaf, signer
			}
		}
	}
	return m, nil
}

func parseKey(b []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("a %T cannot sign", k)
	}
	return s, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

// tlsCertificate is the serving certificate for a tls.Config.
func (m *material) tlsCertificate() *tls.Certificate {
	return &tls.Certificate{Certificate: [][]byte{m.leaf.Raw}, PrivateKey: m.leafKey, Leaf: m.leaf}
}
