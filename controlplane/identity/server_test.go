package identity_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cav1alpha1 "github.com/trellis-mesh/trellis/api/ca/v1alpha1"
	"github.com/trellis-mesh/trellis/controlplane/identity"
)

// stubReviewer knows tokens by name: "token-<ns>-<sa>" is that ServiceAccount's, "broken"
// makes the review itself fail, anything else is refused.
type stubReviewer struct{}

func (stubReviewer) Review(_ context.Context, token string) (string, string, error) {
	var ns, sa string
	if n, _ := fmt.Sscanf(strings.ReplaceAll(token, "-", " "), "token %s %s", &ns, &sa); n == 2 {
		return ns, sa, nil
	}
	if token == "broken" {
		return "", "", errors.New("connection refused")
	}
	return "", "", fmt.Errorf("%w: unknown token %s", identity.ErrInvalidToken, token)
}

func TestCertificateService(t *testing.T) {
	ca := newCA(t, identity.WithMaxTTL(48*time.Hour))
	h := startCAServer(t, ca, stubReviewer{})
	client := h.client(t, nil)
	cart := idFor(t, "shop", "cart")
	key := newKey(t)
	cartCSR := csrPEM(t, key, []string{cart.String()}, nil)

	tests := []struct {
		name     string
		token    string
		req      *cav1alpha1.CreateCertificateRequest
		code     codes.Code
		msg      string        // in the status message
		validity time.Duration // of the issued certificate, when code is OK
		reason   string        // passed to Observer.Refused
	}{
		{"the caller's own identity is signed with the default TTL", "token-shop-cart",
			&cav1alpha1.CreateCertificateRequest{CsrPem: cartCSR}, codes.OK, "", 24 * time.Hour, ""},
		{"a requested validity is honoured", "token-shop-cart",
			&cav1alpha1.CreateCertificateRequest{CsrPem: cartCSR, ValiditySeconds: 3600}, codes.OK, "", time.Hour, ""},
		{"a validity above the maximum is capped", "token-shop-cart",
			&cav1alpha1.CreateCertificateRequest{CsrPem: cartCSR, ValiditySeconds: 1 << 62}, codes.OK, "", 48 * time.Hour, ""},
		{"no token is unauthenticated", "",
			&cav1alpha1.CreateCertificateRequest{CsrPem: cartCSR}, codes.Unauthenticated, "authorization: Bearer", 0, identity.ReasonMissingToken},
		{"a refused token is unauthenticated", "stolen",
			&cav1alpha1.CreateCertificateRequest{CsrPem: cartCSR}, codes.Unauthenticated, "token refused", 0, identity.ReasonInvalidToken},
		{"a failed token review is unavailable", "broken",
			&cav1alpha1.CreateCertificateRequest{CsrPem: cartCSR}, codes.Unavailable, "retry later", 0, identity.ReasonReviewFailed},
		{"a CSR for another identity is permission denied", "token-shop-payments",
			&cav1alpha1.CreateCertificateRequest{CsrPem: cartCSR}, codes.PermissionDenied,
			"asks for spiffe://cluster.local/ns/shop/sa/cart but the caller is spiffe://cluster.local/ns/shop/sa/payments", 0, identity.ReasonIdentityMismatch},
		{"a CSR with a DNS SAN is an invalid argument", "token-shop-cart",
			&cav1alpha1.CreateCertificateRequest{CsrPem: csrPEM(t, key, []string{cart.String()}, func(r *x509.CertificateRequest) { r.DNSNames = []string{"evil.com"} })},
			codes.InvalidArgument, "DNS SANs", 0, identity.ReasonInvalidCSR},
		{"a CSR that is not PEM is an invalid argument", "token-shop-cart",
			&cav1alpha1.CreateCertificateRequest{CsrPem: "garbage"}, codes.InvalidArgument, "not PEM", 0, identity.ReasonInvalidCSR},
		{"a negative validity is an invalid argument", "token-shop-cart",
			&cav1alpha1.CreateCertificateRequest{CsrPem: cartCSR, ValiditySeconds: -1}, codes.InvalidArgument, "validity_seconds", 0, identity.ReasonInvalidCSR},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, refusedBefore := h.observed.snapshot()
			resp, err := client.CreateCertificate(withToken(t, tt.token), tt.req)
			if got := status.Code(err); got != tt.code {
				t.Fatalf("code = %v (%v), want %v", got, err, tt.code)
			}
			_, refused := h.observed.snapshot()
			if tt.code != codes.OK {
				if !strings.Contains(status.Convert(err).Message(), tt.msg) {
					t.Errorf("message %q does not say %q", status.Convert(err).Message(), tt.msg)
				}
				if len(refused) != len(refusedBefore)+1 || refused[len(refused)-1] != tt.reason {
					t.Errorf("observer refusals = %v, want %q added", refused, tt.reason)
				}
				return
			}
			chain := verifyResponse(t, resp, cart)
			if got := chain[0].NotAfter.Sub(chain[0].NotBefore) - time.Minute; got < tt.validity-5*time.Second || got > tt.validity+5*time.Second {
				t.Errorf("validity = %v, want %v", got, tt.validity)
			}
		})
	}
	signed, _ := h.observed.snapshot()
	if len(signed) != 3 || signed[0] != cart.String() {
		t.Errorf("observer saw signed %v, want %s three times", signed, cart)
	}
}

// verifyResponse checks that resp holds an X.509-SVID for want that verifies against the
// trust bundle in resp, and returns the chain.
func verifyResponse(t *testing.T, resp *cav1alpha1.CreateCertificateResponse, want spiffeid.ID) []*x509.Certificate {
	t.Helper()
	var chain []*x509.Certificate
	for _, p := range resp.GetCertChainPem() {
		certs, err := identity.ParseCertificates([]byte(p))
		if err != nil || len(certs) != 1 {
			t.Fatalf("cert_chain_pem entry holds %d certificates: %v", len(certs), err)
		}
		chain = append(chain, certs...)
	}
	roots, err := identity.ParseCertificates([]byte(resp.GetTrustBundlePem()))
	if err != nil {
		t.Fatalf("trust bundle: %v", err)
	}
	id, _, err := x509svid.Verify(chain, bundleOf(roots))
	if err != nil {
		t.Fatalf("the SVID does not verify against the returned trust bundle: %v", err)
	}
	if id != want {
		t.Fatalf("SVID is for %s, want %s", id, want)
	}
	checkSVIDShape(t, chain[0], want)
	return chain
}

func TestControlPlaneTLS(t *testing.T) {
	ca := newCA(t)
	h := startCAServer(t, ca, stubReviewer{})
	cart := idFor(t, "shop", "cart")
	key := newKey(t)

	// First call: no client certificate yet. It works, and the server sees no identity.
	resp, err := h.client(t, nil).CreateCertificate(withToken(t, "token-shop-cart"),
		&cav1alpha1.CreateCertificateRequest{CsrPem: csrPEM(t, key, []string{cart.String()}, nil)})
	if err != nil {
		t.Fatalf("CreateCertificate without a client certificate: %v", err)
	}
	if _, err := h.lastPeer(); !errors.Is(err, identity.ErrNoPeerCertificate) {
		t.Errorf("PeerIdentity without a client certificate: err = %v, want ErrNoPeerCertificate", err)
	}

	// With the SVID just issued, the server knows who calls.
	chain := verifyResponse(t, resp, cart)
	svid := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		svid.Certificate = append(svid.Certificate, c.Raw)
	}
	if _, err := h.client(t, svid).CreateCertificate(withToken(t, "token-shop-cart"),
		&cav1alpha1.CreateCertificateRequest{CsrPem: csrPEM(t, key, []string{cart.String()}, nil)}); err != nil {
		t.Fatalf("CreateCertificate with the SVID: %v", err)
	}
	if id, err := h.lastPeer(); err != nil || id != cart {
		t.Errorf("PeerIdentity = %v, %v; want %v", id, err, cart)
	}

	// A certificate from another CA is refused at the handshake.
	foreign := newCA(t)
	forged, err := foreign.ServingCertificate(cart, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.client(t, forged).CreateCertificate(withToken(t, "token-shop-cart"),
		&cav1alpha1.CreateCertificateRequest{CsrPem: csrPEM(t, key, []string{cart.String()}, nil)})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("a client certificate from another CA: %v, want the handshake refused (Unavailable)", err)
	}
}
