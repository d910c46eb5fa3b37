package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/trellis-mesh/trellis/controlplane/identity"
)

// userCA is a mesh root made by the benchmark and handed to the control plane as a
// user-supplied CA (Secret trellis-ca, --ca-user-supplied). The benchmark signs the proxies'
// certificates with the same identity.Authority code the control plane's CA service uses,
// so they are the certificates the CSR path would issue, without 2000 TokenReviews in the
// setup. The control plane verifies them against the same root like any other.
type userCA struct {
	authority *identity.Authority
	certPEM   []byte
	keyPEM    []byte
	pool      *x509.CertPool
}

func newUserCA(td spiffeid.TrustDomain) (*userCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate root key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(now.UnixNano()),
		Subject:               pkix.Name{Organization: []string{"Trellis benchmark"}, CommonName: "Trellis benchmark root CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(48 * time.Hour),
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
		return nil, err
	}
	a, err := identity.NewAuthority(td, []*x509.Certificate{cert}, key, nil)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &userCA{
		authority: a,
		certPEM:   identity.EncodeCertificates([]*x509.Certificate{cert}),
		keyPEM:    pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		pool:      pool,
	}, nil
}

// install writes the CA Secret the control plane loads at start.
func (ca *userCA) install(ctx context.Context, c client.Client, namespace, name string) error {
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{identity.SecretCertKey: ca.certPEM, identity.SecretKeyKey: ca.keyPEM},
	}
	if err := c.Create(ctx, s); err != nil {
		return fmt.Errorf("create CA Secret %s/%s: %w", namespace, name, err)
	}
	return nil
}

// workloadCerts issues one key and X.509-SVID per proxy, as each sidecar would obtain its
// own: spiffe://<td>/ns/<namespace>/sa/<serviceaccount>.
func (ca *userCA) workloadCerts(ids []spiffeid.ID, workers int) ([]tls.Certificate, error) {
	out := make([]tls.Certificate, len(ids))
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	work := make(chan int)
	for range max(workers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				out[i], errs[i] = ca.workloadCert(ids[i])
			}
		}()
	}
	for i := range ids {
		work <- i
	}
	close(work)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("certificate for %s: %w", ids[i], err)
		}
	}
	return out, nil
}

func (ca *userCA) workloadCert(id spiffeid.ID) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return tls.Certificate{}, err
	}
	chain, err := ca.authority.Sign(csr, id, 0)
	if err != nil {
		return tls.Certificate{}, err
	}
	cert := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert, nil
}
