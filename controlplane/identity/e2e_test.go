package identity_test

import (
	"crypto/x509"
	"net"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cav1alpha1 "github.com/trellis-mesh/trellis/api/ca/v1alpha1"
	"github.com/trellis-mesh/trellis/controlplane/identity"
	"github.com/trellis-mesh/trellis/internal/kubetest"
)

// TestCertificateServiceWithKubernetes runs the CA as the control plane does: root from a
// Secret, tokens checked by a real kube-apiserver, gRPC over TLS on 127.0.0.1.
func TestCertificateServiceWithKubernetes(t *testing.T) {
	env := kubetest.Start(t)
	c := env.Client
	createNamespace(t, c, caNamespace, nil)
	createNamespace(t, c, "shop", nil)
	cart := createServiceAccount(t, c, "shop", "cart")
	createServiceAccount(t, c, "shop", "payments")
	ca, err := identity.LoadOrCreate(testContext(t), c, caNamespace, "trellis-ca", td, false)
	if err != nil {
		t.Fatal(err)
	}
	h := startCAServer(t, ca, identity.NewKubeTokenReviewer(c))
	client := h.client(t, nil)

	cartID, paymentsID := idFor(t, "shop", "cart"), idFor(t, "shop", "payments")
	cartToken := requestToken(t, c, cart, identity.Audience)
	key := newKey(t)

	tests := []struct {
		name  string
		token string
		csr   string
		code  codes.Code
	}{
		{"a token for cart and a CSR for cart get an SVID for cart", cartToken,
			csrPEM(t, key, []string{cartID.String()}, nil), codes.OK},
		{"a token for cart and a CSR for payments are refused", cartToken,
			csrPEM(t, key, []string{paymentsID.String()}, nil), codes.PermissionDenied},
		{"a CSR for cart with an extra URI SAN is refused", cartToken,
			csrPEM(t, key, []string{cartID.String(), paymentsID.String()}, nil), codes.PermissionDenied},
		{"a CSR for cart with extra DNS and IP SANs is refused", cartToken,
			csrPEM(t, key, []string{cartID.String()}, func(r *x509.CertificateRequest) {
				r.DNSNames = []string{"payments.shop.svc"}
				r.IPAddresses = []net.IP{net.IPv4(10, 0, 0, 9)}
			}), codes.InvalidArgument},
		{"no token is unauthenticated", "",
			csrPEM(t, key, []string{cartID.String()}, nil), codes.Unauthenticated},
		{"cart's token for the apiserver's audience is unauthenticated", requestToken(t, c, cart, "https://kubernetes.default.svc"),
			csrPEM(t, key, []string{cartID.String()}, nil), codes.Unauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := client.CreateCertificate(withToken(t, tt.token), &cav1alpha1.CreateCertificateRequest{CsrPem: tt.csr})
			if got := status.Code(err); got != tt.code {
				t.Fatalf("code = %v (%v), want %v", got, err, tt.code)
			}
			if tt.code == codes.OK {
				verifyResponse(t, resp, cartID)
				if resp.GetTrustBundlePem() != string(ca.TrustBundlePEM()) {
					t.Errorf("trust bundle is not the CA's")
				}
			}
		})
	}
}
