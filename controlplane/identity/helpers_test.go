package identity_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/trellis-mesh/trellis/controlplane/identity"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

// idFor is the workload SPIFFE ID of namespace/sa.
func idFor(t testing.TB, ns, sa string) spiffeid.ID {
	t.Helper()
	id, err := identity.WorkloadID(td, ns, sa)
	if err != nil {
		t.Fatalf("workload ID: %v", err)
	}
	return id
}

// fakeClock is a settable clock; times are whole seconds, as certificates store them.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

func (c *fakeClock) Advance(d time.Duration) { c.Set(c.Now().Add(d)) }

func newCA(t testing.TB, opts ...identity.Option) *identity.Authority {
	t.Helper()
	ca, err := identity.NewSelfSigned(td, opts...)
	if err != nil {
		t.Fatalf("new CA: %v", err)
	}
	return ca
}

func newKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// csrDER makes a CSR signed by key with the given URI SANs and whatever edit adds.
func csrDER(t testing.TB, key crypto.Signer, uris []string, edit func(*x509.CertificateRequest)) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{}
	for _, u := range uris {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatalf("create CSR: %v", err)
	}
	return der
}

func csrPEM(t testing.TB, key crypto.Signer, uris []string, edit func(*x509.CertificateRequest)) string {
	t.Helper()
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER(t, key, uris, edit)}))
}

func parseCSR(t testing.TB, der []byte) *x509.CertificateRequest {
	t.Helper()
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func bundleOf(roots []*x509.Certificate) *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(td, roots)
}
