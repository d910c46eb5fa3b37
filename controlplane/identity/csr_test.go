package identity_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/controlplane/identity"
)

func TestCheckCSR(t *testing.T) {
	want := idFor(t, "shop", "cart")
	p256 := newKey(t)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)

	// A CSR for the right identity whose URI was changed after signing.
	tampered := csrDER(t, p256, []string{"spiffe://cluster.local/ns/shop/sa/cart"}, nil)
	tampered = bytes.Replace(tampered, []byte("/sa/cart"), []byte("/sa/cars"), 1)

	tests := []struct {
		name    string
		der     []byte
		wantErr error  // nil: accepted
		msg     string // in the error
	}{
		{"a CSR for the caller's own identity with a P-256 key is accepted",
			csrDER(t, p256, []string{want.String()}, nil), nil, ""},
		{"a P-384 key is accepted", csrDER(t, p384, []string{want.String()}, nil), nil, ""},
		{"an Ed25519 key is accepted", csrDER(t, ed, []string{want.String()}, nil), nil, ""},
		{"an RSA 2048 key is accepted", csrDER(t, rsa2048, []string{want.String()}, nil), nil, ""},
		{"a CSR for another identity is refused as a mismatch",
			csrDER(t, p256, []string{"spiffe://cluster.local/ns/shop/sa/payments"}, nil),
			identity.ErrIdentityMismatch, "asks for spiffe://cluster.local/ns/shop/sa/payments but the caller is " + want.String()},
		{"a CSR for the same path in another trust domain is refused as a mismatch",
			csrDER(t, p256, []string{"spiffe://evil.example/ns/shop/sa/cart"}, nil),
			identity.ErrIdentityMismatch, "asks for spiffe://evil.example/ns/shop/sa/cart"},
		{"an extra URI SAN next to the caller's own is refused",
			csrDER(t, p256, []string{want.String(), "spiffe://cluster.local/ns/kube-system/sa/admin"}, nil),
			identity.ErrIdentityMismatch, "asks for spiffe://cluster.local/ns/kube-system/sa/admin"},
		{"the caller's own URI SAN twice is refused",
			csrDER(t, p256, []string{want.String(), want.String()}, nil),
			identity.ErrInvalidCSR, "has 2 URI SANs"},
		{"a URI SAN that is not a SPIFFE ID is refused",
			csrDER(t, p256, []string{"https://cart.shop.svc"}, nil),
			identity.ErrInvalidCSR, `URI SAN "https://cart.shop.svc" is not a SPIFFE ID`},
		{"a DNS SAN is refused",
			csrDER(t, p256, []string{want.String()}, func(r *x509.CertificateRequest) { r.DNSNames = []string{"cart.shop.svc"} }),
			identity.ErrInvalidCSR, `DNS SANs ["cart.shop.svc"]`},
		{"an IP SAN is refused",
			csrDER(t, p256, []string{want.String()}, func(r *x509.CertificateRequest) { r.IPAddresses = []net.IP{net.ParseIP("10.0.0.7")} }),
			identity.ErrInvalidCSR, "IP SANs [10.0.0.7]"},
		{"an email SAN is refused",
			csrDER(t, p256, []string{want.String()}, func(r *x509.CertificateRequest) { r.EmailAddresses = []string{"ops@example.com"} }),
			identity.ErrInvalidCSR, `email SANs ["ops@example.com"]`},
		{"a CSR without any SAN is refused",
			csrDER(t, p256, nil, nil), identity.ErrInvalidCSR, "no URI SAN"},
		{"a CSR altered after signing is refused for its bad signature",
			tampered, identity.ErrInvalidCSR, "signature does not verify"},
		{"an RSA 1024 key is refused as weak",
			csrDER(t, rsa1024, []string{want.String()}, nil), identity.ErrInvalidCSR, "RSA key has 1024 bits"},
		{"a P-224 key is refused",
			csrDER(t, p224, []string{want.String()}, nil), identity.ErrInvalidCSR, "curve P-224"},
		{"bytes that are not a CSR are refused",
			[]byte("hello"), identity.ErrInvalidCSR, "not a PKCS#10 request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			csr, err := identity.CheckCSR(tt.der, want)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("CheckCSR refused a good CSR: %v", err)
				}
				if csr == nil || len(csr.URIs) != 1 {
					t.Fatalf("CheckCSR returned %v", csr)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("CheckCSR error = %v, want one wrapping %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("CheckCSR error %q does not say %q", err, tt.msg)
			}
		})
	}
}

func TestDecodeCSRPEM(t *testing.T) {
	good := csrPEM(t, newKey(t), []string{"spiffe://cluster.local/ns/a/sa/b"}, nil)
	tests := []struct {
		name string
		in   string
		msg  string // "" accepted
	}{
		{"one CSR block is accepted", good, ""},
		{"an empty CSR is refused", "", "no CSR"},
		{"text that is not PEM is refused", "not pem", "not PEM"},
		{"a certificate block instead of a CSR is refused", strings.Replace(good, "CERTIFICATE REQUEST", "CERTIFICATE", 2), `is a "CERTIFICATE"`},
		{"two CSR blocks are refused", good + good, "more follows"},
		{"a huge CSR is refused", good + strings.Repeat(" ", 70000), "more than the"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := identity.DecodeCSRPEM([]byte(tt.in))
			switch {
			case tt.msg == "" && err != nil:
				t.Fatalf("DecodeCSRPEM: %v", err)
			case tt.msg != "" && (!errors.Is(err, identity.ErrInvalidCSR) || !strings.Contains(err.Error(), tt.msg)):
				t.Fatalf("DecodeCSRPEM error = %v, want ErrInvalidCSR saying %q", err, tt.msg)
			}
		})
	}
}
