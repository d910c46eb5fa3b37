package identity_test

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trellis-mesh/trellis/controlplane/identity"
)

func TestSelfSignedRoot(t *testing.T) {
	clock := newFakeClock()
	ca := newCA(t, identity.WithClock(clock.Now))
	root := ca.Certificate()
	if !root.IsCA || !root.BasicConstraintsValid {
		t.Errorf("root is not a CA")
	}
	if root.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("root key usage = %v, want CertSign|CRLSign", root.KeyUsage)
	}
	if len(root.URIs) != 1 || root.URIs[0].String() != "spiffe://cluster.local" {
		t.Errorf("root URI SANs = %v, want [spiffe://cluster.local]", root.URIs)
	}
	if got := root.Subject.String(); got != "CN=Trellis Root CA,O=Trellis" {
		t.Errorf("root subject = %q", got)
	}
	if got, want := root.NotAfter, clock.Now().Add(identity.RootValidity); !got.Equal(want) {
		t.Errorf("root NotAfter = %v, want %v (10 years)", got, want)
	}
	if got := ca.Roots(); len(got) != 1 || !got[0].Equal(root) {
		t.Errorf("Roots() = %d certificates, want just the root", len(got))
	}
}

func TestSign(t *testing.T) {
	clock := newFakeClock()
	ca := newCA(t, identity.WithClock(clock.Now), identity.WithMaxTTL(48*time.Hour))
	id := idFor(t, "shop", "cart")
	key := newKey(t)
	csr := parseCSR(t, csrDER(t, key, []string{id.String()}, nil))
	rootNotAfter := ca.Certificate().NotAfter

	tests := []struct {
		name         string
		at           time.Time // clock when signing
		ttl          time.Duration
		wantNotAfter func(now time.Time) time.Time
	}{
		{"no TTL gets the 24h default", clock.Now(), 0,
			func(now time.Time) time.Time { return now.Add(24 * time.Hour) }},
		{"a requested TTL is honoured", clock.Now(), time.Hour,
			func(now time.Time) time.Time { return now.Add(time.Hour) }},
		{"a TTL above the maximum is capped by it", clock.Now(), 1000 * time.Hour,
			func(now time.Time) time.Time { return now.Add(48 * time.Hour) }},
		{"a certificate never outlives the root", rootNotAfter.Add(-time.Hour), 24 * time.Hour,
			func(time.Time) time.Time { return rootNotAfter }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock.Set(tt.at)
			chain, err := ca.Sign(csr, id, tt.ttl)
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			if len(chain) != 1 {
				t.Fatalf("chain has %d certificates, want the leaf only (the root is in the bundle)", len(chain))
			}
			leaf := chain[0]
			gotID, _, err := x509svid.Verify(chain, ca.Bundle(), x509svid.WithTime(tt.at))
			if err != nil {
				t.Fatalf("x509svid.Verify: %v", err)
			}
			if gotID != id {
				t.Errorf("SVID ID = %s, want %s", gotID, id)
			}
			if want := tt.wantNotAfter(tt.at); !leaf.NotAfter.Equal(want) {
				t.Errorf("NotAfter = %v, want %v", leaf.NotAfter, want)
			}
			if want := tt.at.Add(-time.Minute); !leaf.NotBefore.Equal(want) {
				t.Errorf("NotBefore = %v, want %v (now - 1m)", leaf.NotBefore, want)
			}
			checkSVIDShape(t, leaf, id)
			if !leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
				t.Errorf("leaf does not carry the CSR's public key")
			}
		})
	}
}

// checkSVIDShape checks the X.509-SVID profile the CA promises.
func checkSVIDShape(t *testing.T, leaf *x509.Certificate, id spiffeid.ID) {
	t.Helper()
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		t.Errorf("URI SANs = %v, want exactly [%s]", leaf.URIs, id)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("leaf has other SANs: DNS %v IP %v email %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if leaf.IsCA {
		t.Errorf("leaf is a CA")
	}
	if want := x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement; leaf.KeyUsage != want {
		t.Errorf("key usage = %v, want %v", leaf.KeyUsage, want)
	}
	if eku := leaf.ExtKeyUsage; len(eku) != 2 || eku[0] != x509.ExtKeyUsageServerAuth || eku[1] != x509.ExtKeyUsageClientAuth {
		t.Errorf("extended key usage = %v, want ServerAuth, ClientAuth", eku)
	}
	if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() > 128 {
		t.Errorf("serial %v is not a positive 128-bit number", leaf.SerialNumber)
	}
}

func TestSignGivesEachCertificateARandomSerial(t *testing.T) {
	ca := newCA(t)
	id := idFor(t, "shop", "cart")
	csr := parseCSR(t, csrDER(t, newKey(t), []string{id.String()}, nil))
	seen := map[string]bool{}
	for range 20 {
		chain, err := ca.Sign(csr, id, 0)
		if err != nil {
			t.Fatal(err)
		}
		s := chain[0].SerialNumber.String()
		if seen[s] {
			t.Fatalf("serial %s issued twice", s)
		}
		seen[s] = true
	}
}

func TestSignRefuses(t *testing.T) {
	ca := newCA(t)
	id := idFor(t, "shop", "cart")
	csr := parseCSR(t, csrDER(t, newKey(t), []string{id.String()}, nil))
	other := spiffeid.RequireFromString("spiffe://other.example/ns/shop/sa/cart")
	tests := []struct {
		name string
		csr  *x509.CertificateRequest
		id   spiffeid.ID
		msg  string
	}{
		{"an identity outside the trust domain", csr, other, "outside the mesh's trust domain"},
		{"no identity", csr, spiffeid.ID{}, "no SPIFFE ID"},
		{"no CSR", nil, id, "no certificate signing request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ca.Sign(tt.csr, tt.id, 0)
			if err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("Sign error = %v, want one saying %q", err, tt.msg)
			}
		})
	}
}

// caCert makes a CA certificate for key from tmpl's defaults and edit, signed by parent
// (self-signed when parent is nil).
func caCert(t *testing.T, key crypto.Signer, parent *x509.Certificate, parentKey crypto.Signer, edit func(*x509.Certificate)) *x509.Certificate {
	t.Helper()
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "Test CA " + serial.String()},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	if edit != nil {
		edit(tmpl)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatalf("create CA certificate: %v", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestIntermediateCA(t *testing.T) {
	rootKey, interKey := newKey(t), newKey(t)
	root := caCert(t, rootKey, nil, nil, nil)
	inter := caCert(t, interKey, root, rootKey, nil)

	ca, err := identity.NewAuthority(td, []*x509.Certificate{inter}, interKey, []*x509.Certificate{root})
	if err != nil {
		t.Fatalf("NewAuthority with an intermediate: %v", err)
	}
	id := idFor(t, "shop", "cart")
	chain, err := ca.Sign(parseCSR(t, csrDER(t, newKey(t), []string{id.String()}, nil)), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || !chain[1].Equal(inter) {
		t.Fatalf("chain has %d certificates, want leaf then intermediate", len(chain))
	}
	// A peer that trusts only the root verifies the chain.
	if _, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(td, []*x509.Certificate{root})); err != nil {
		t.Fatalf("verify against the root: %v", err)
	}
	if got, want := ca.Roots(), root; len(got) != 1 || !got[0].Equal(want) {
		t.Errorf("trust bundle has %d certificates, want just the root", len(got))
	}
	if !chain[0].NotAfter.After(time.Now()) || chain[0].NotAfter.After(inter.NotAfter) {
		t.Errorf("leaf NotAfter %v not within the intermediate's life", chain[0].NotAfter)
	}
}

func TestCertificatesNeverOutliveTheRootOfAnIntermediate(t *testing.T) {
	rootKey, interKey := newKey(t), newKey(t)
	root := caCert(t, rootKey, nil, nil, func(c *x509.Certificate) { c.NotAfter = time.Now().Add(2 * time.Hour) })
	inter := caCert(t, interKey, root, rootKey, nil) // valid for a year
	ca, err := identity.NewAuthority(td, []*x509.Certificate{inter}, interKey, []*x509.Certificate{root})
	if err != nil {
		t.Fatal(err)
	}
	id := idFor(t, "shop", "cart")
	chain, err := ca.Sign(parseCSR(t, csrDER(t, newKey(t), []string{id.String()}, nil)), id, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !chain[0].NotAfter.Equal(root.NotAfter) || !ca.NotAfter().Equal(root.NotAfter) {
		t.Errorf("leaf NotAfter = %v, CA NotAfter = %v; want the root's %v", chain[0].NotAfter, ca.NotAfter(), root.NotAfter)
	}
}

func TestExtraRootsJoinTheTrustBundle(t *testing.T) {
	oldKey, newRootKey := newKey(t), newKey(t)
	oldRoot := caCert(t, oldKey, nil, nil, nil)
	newRoot := caCert(t, newRootKey, nil, nil, nil)
	ca, err := identity.NewAuthority(td, []*x509.Certificate{newRoot}, newRootKey, []*x509.Certificate{oldRoot, newRoot})
	if err != nil {
		t.Fatal(err)
	}
	roots := ca.Roots()
	if len(roots) != 2 || !roots[0].Equal(newRoot) || !roots[1].Equal(oldRoot) {
		t.Fatalf("roots = %d certificates, want the new root then the old one, once each", len(roots))
	}
	parsed, err := identity.ParseCertificates(ca.TrustBundlePEM())
	if err != nil || len(parsed) != 2 {
		t.Fatalf("TrustBundlePEM holds %d certificates (%v), want 2", len(parsed), err)
	}
}

func TestNewAuthorityRefuses(t *testing.T) {
	key, otherKey := newKey(t), newKey(t)
	root := caCert(t, key, nil, nil, nil)
	otherRoot := caCert(t, otherKey, nil, nil, nil)
	interKey := newKey(t)
	inter := caCert(t, interKey, root, key, nil)

	tests := []struct {
		name  string
		td    spiffeid.TrustDomain
		chain []*x509.Certificate
		key   crypto.Signer
		extra []*x509.Certificate
		msg   string
	}{
		{"a key that does not match the certificate", td, []*x509.Certificate{root}, otherKey, nil, "private key does not belong to the CA certificate"},
		{"a certificate that is not a CA", td,
			[]*x509.Certificate{caCert(t, key, nil, nil, func(c *x509.Certificate) { c.IsCA = false; c.KeyUsage = x509.KeyUsageDigitalSignature })},
			key, nil, "is not a CA"},
		{"a CA certificate without keyCertSign", td,
			[]*x509.Certificate{caCert(t, key, nil, nil, func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageDigitalSignature })},
			key, nil, "may not sign certificates"},
		{"an expired CA certificate", td,
			[]*x509.Certificate{caCert(t, key, nil, nil, func(c *x509.Certificate) {
				c.NotBefore, c.NotAfter = time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour)
			})},
			key, nil, "expired on"},
		{"a CA certificate not valid yet", td,
			[]*x509.Certificate{caCert(t, key, nil, nil, func(c *x509.Certificate) { c.NotBefore = time.Now().Add(24 * time.Hour) })},
			key, nil, "is not valid until"},
		{"a CA made for another trust domain", td,
			[]*x509.Certificate{caCert(t, key, nil, nil, func(c *x509.Certificate) {
				c.URIs = []*url.URL{{Scheme: "spiffe", Host: "other.example"}}
			})},
			key, nil, `made for trust domain "other.example"`},
		{"an intermediate without its root", td, []*x509.Certificate{inter}, interKey, nil, "not self-signed and no root was given"},
		{"an intermediate with somebody else's root", td, []*x509.Certificate{inter}, interKey, []*x509.Certificate{otherRoot}, "does not chain to a trusted root"},
		{"no trust domain", spiffeid.TrustDomain{}, []*x509.Certificate{root}, key, nil, "no trust domain"},
		{"no certificate", td, nil, key, nil, "no CA certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := identity.NewAuthority(tt.td, tt.chain, tt.key, tt.extra)
			if err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("NewAuthority error = %v, want one saying %q", err, tt.msg)
			}
		})
	}
}
