package svid

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cav1alpha1 "github.com/trellis-mesh/trellis/api/ca/v1alpha1"
	"github.com/trellis-mesh/trellis/controlplane/identity"
)

type answerFunc = func(*x509.CertificateRequest) (*cav1alpha1.CreateCertificateResponse, error)

func TestAnswersOfTheCAAreVerified(t *testing.T) {
	ca, other := newCA(t), newCA(t)
	past := newFakeClock()
	past.Advance(-48 * time.Hour)
	oldCA := newCA(t, identity.WithClock(past.Now))
	bundle := ca.TrustBundlePEM()

	modify := func(f func(*cav1alpha1.CreateCertificateResponse)) answerFunc {
		return func(csr *x509.CertificateRequest) (*cav1alpha1.CreateCertificateResponse, error) {
			resp, err := answerFrom(ca, cartID, bundle)(csr)
			if err == nil {
				f(resp)
			}
			return resp, err
		}
	}
	tests := []struct {
		name    string
		answer  answerFunc
		wantErr string
	}{
		{"a correct answer is accepted", answerFrom(ca, cartID, bundle), ""},
		{"a certificate for another identity is refused", answerFrom(ca, paymentsID, bundle),
			"the certificate is for spiffe://cluster.local/ns/shop/sa/payments but this sidecar is spiffe://cluster.local/ns/shop/sa/cart"},
		{"a certificate for another key is refused", func(*x509.CertificateRequest) (*cav1alpha1.CreateCertificateResponse, error) {
			chain, err := ca.Sign(otherKeyCSR(t, cartID), cartID, time.Hour)
			return response(chain, bundle), err
		}, "not for the key this sidecar sent"},
		{"a certificate from a CA outside the trust bundle is refused", answerFrom(other, cartID, bundle), "does not verify"},
		{"a trust bundle without the issuer is refused", answerFrom(ca, cartID, other.TrustBundlePEM()), "does not verify"},
		{"an expired certificate is refused", answerFrom(oldCA, cartID, oldCA.TrustBundlePEM()), "does not verify"},
		{"a CA certificate in place of the leaf is refused", modify(func(r *cav1alpha1.CreateCertificateResponse) {
			r.CertChainPem = []string{string(identity.EncodeCertificates([]*x509.Certificate{ca.Certificate()}))}
		}), "the certificate is for spiffe://cluster.local but this sidecar is"},
		{"an answer without a certificate is refused", modify(func(r *cav1alpha1.CreateCertificateResponse) { r.CertChainPem = nil }),
			"holds no certificate"},
		{"an answer without a trust bundle is refused", modify(func(r *cav1alpha1.CreateCertificateResponse) { r.TrustBundlePem = "" }),
			"trust bundle: no PEM CERTIFICATE"},
		{"a chain entry holding two certificates is refused", modify(func(r *cav1alpha1.CreateCertificateResponse) {
			r.CertChainPem = []string{r.CertChainPem[0] + string(bundle)}
		}), "chain entry 1 holds 2 certificates"},
		{"a chain entry that is not PEM is refused", modify(func(r *cav1alpha1.CreateCertificateResponse) { r.CertChainPem = []string{"garbage"} }),
			"chain entry 1"},
		{"an error of the CA is reported", func(*x509.CertificateRequest) (*cav1alpha1.CreateCertificateResponse, error) {
			return nil, status.Error(codes.Internal, "signing failed")
		}, "signing failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSource(t, testOptions(t, serveCA(t, ca, &fakeCA{answer: tt.answer}), ca))
			err := s.refresh(context.Background())
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("refresh: %v", err)
				}
				if !s.Ready() {
					t.Fatal("not ready after a correct answer")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("refresh error = %v, want one containing %q", err, tt.wantErr)
			}
			if _, err := s.GetX509SVID(); err == nil || s.Ready() {
				t.Error("a refused answer was installed")
			}
			if got := s.Status().LastError; got != err.Error() {
				t.Errorf("LastError = %q, want %q", got, err)
			}
		})
	}
}

func otherKeyCSR(t testing.TB, id spiffeid.ID) *x509.CertificateRequest {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func TestTheTrustBundleIsTheCAsOnceItAnswered(t *testing.T) {
	ca, next := newCA(t), newCA(t)
	both := identity.EncodeCertificates(append(ca.Roots(), next.Roots()...))
	s := newSource(t, testOptions(t, serveCA(t, ca, &fakeCA{answer: answerFrom(ca, cartID, both)}), ca))

	tests := []struct {
		name      string
		refresh   bool
		td        spiffeid.TrustDomain
		wantRoots int
		wantErr   string
	}{
		{"before the first answer the roots of RootCertPath are the bundle", false, td, 1, ""},
		{"after an answer its trust bundle is the bundle", true, td, 2, ""},
		{"another trust domain has no bundle", false, spiffeid.RequireTrustDomainFromString("example.org"), 0, `only trusts "cluster.local"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.refresh {
				if err := s.refresh(context.Background()); err != nil {
					t.Fatalf("refresh: %v", err)
				}
			}
			b, err := s.GetX509BundleForTrustDomain(tt.td)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := len(b.X509Authorities()); got != tt.wantRoots {
				t.Errorf("bundle has %d roots, want %d", got, tt.wantRoots)
			}
			if got := s.Status().BundleRoots; got != tt.wantRoots {
				t.Errorf("Status().BundleRoots = %d, want %d", got, tt.wantRoots)
			}
		})
	}
}

// A root rotation: the CA first announces the next root in its trust bundle, then serves
// (and signs) with it. A sidecar that renewed in between follows; one that did not, trusts
// the next root once the root file (the ConfigMap) holds it.
func TestTheCAIsTrustedThroughTheRootFileAndTheLastBundle(t *testing.T) {
	caOld, caNew := newCA(t), newCA(t)
	both := identity.EncodeCertificates(append(caOld.Roots(), caNew.Roots()...))
	oldAddr := serveCA(t, caOld, &fakeCA{answer: answerFrom(caOld, cartID, both)})
	newAddr := serveCA(t, caNew, &fakeCA{answer: answerFrom(caNew, cartID, both)})

	renewed := &gate{}
	optsRenewed := testOptions(t, oldAddr, caOld)
	optsRenewed.DialOptions = append(optsRenewed.DialOptions, renewed.option())
	sRenewed := newSource(t, optsRenewed)

	fresh := &gate{}
	fresh.redirect.Store(&newAddr)
	optsFresh := testOptions(t, oldAddr, caOld)
	optsFresh.DialOptions = append(optsFresh.DialOptions, fresh.option())
	sFresh := newSource(t, optsFresh)

	steps := []struct {
		name    string
		do      func()
		s       *Source
		wantErr string
	}{
		{"the old CA is trusted through the root file", func() {}, sRenewed, ""},
		{"the new CA is trusted through the bundle of the last answer", func() { renewed.redirect.Store(&newAddr) }, sRenewed, ""},
		{"without that bundle the new CA is not trusted", func() {}, sFresh, "certificate signed by unknown authority"},
		{"the root file is re-read at every request", func() { writeFile(t, optsFresh.RootCertPath, string(both)) }, sFresh, ""},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.do()
			err := st.s.refresh(context.Background())
			switch {
			case st.wantErr == "" && err != nil:
				t.Fatalf("refresh: %v", err)
			case st.wantErr != "" && (err == nil || !strings.Contains(err.Error(), st.wantErr)):
				t.Fatalf("refresh error = %v, want one containing %q", err, st.wantErr)
			}
		})
	}
	sv, err := sRenewed.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if err := sv.Certificates[0].CheckSignatureFrom(caNew.Certificate()); err != nil {
		t.Errorf("the renewed SVID is not from the new CA: %v", err)
	}
}
