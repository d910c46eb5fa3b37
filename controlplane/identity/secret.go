package identity

import (
	"context"
	"crypto/x509"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Keys of the CA Secret.
const (
	// SecretCertKey holds the CA certificate, PEM. It may be followed by its issuers.
	SecretCertKey = "ca.crt"
	// SecretKeyKey holds the CA private key, PEM (PKCS#8, SEC 1 or PKCS#1).
	SecretKeyKey = "ca.key"
	// SecretBundleKey optionally holds extra trusted roots, PEM: the old or the next root
	// while rotating.
	SecretBundleKey = "ca-bundle.crt"
	// SecretTLSCertKey and SecretTLSKeyKey are cert-manager's names for a CA certificate and
	// its key, used when ca.key is absent. Then ca.crt, when present, is the root that issued
	// tls.crt (cert-manager's convention) and is trusted too.
	SecretTLSCertKey = "tls.crt"
	SecretTLSKeyKey  = "tls.key"
)

// The RBAC the control plane needs for LoadOrCreate, in the namespace it runs in.
// +kubebuilder:rbac:groups="",namespace=trellis-system,resources=secrets,verbs=get;create

// LoadOrCreate returns the CA kept in Secret namespace/secretName.
//
// When the Secret exists its certificate and key are loaded and checked. When it does not
// and userSupplied is false, a new self-signed root is generated and stored in the Secret;
// if another control-plane replica created the Secret first, that one is loaded instead, so
// every replica signs with the same root. When userSupplied is true a missing Secret is an
// error that says what to create. A Secret that exists but cannot be used is never
// overwritten.
//
// c must read from the API server directly (not from a manager's cache, which is not
// started yet and would need cluster-wide list and watch rights on Secrets).
func LoadOrCreate(ctx context.Context, c client.Client, namespace, secretName string, td spiffeid.TrustDomain, userSupplied bool, opts ...Option) (*Authority, error) {
	key := client.ObjectKey{Namespace: namespace, Name: secretName}
	var secret corev1.Secret
	err := c.Get(ctx, key, &secret)
	switch {
	case err == nil:
		return authorityFromSecret(&secret, td, opts)
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("read CA Secret %s: %w", key, err)
	case userSupplied:
		return nil, fmt.Errorf("the mesh CA is user-supplied but Secret %s does not exist: create it with the CA certificate in key %q and its private key in key %q "+
			"(or cert-manager's %q and %q), e.g. `kubectl -n %s create secret generic %s --from-file=%s=ca-cert.pem --from-file=%s=ca-key.pem`, "+
			"or let Trellis generate its own root by turning the user-supplied CA off",
			key, SecretCertKey, SecretKeyKey, SecretTLSCertKey, SecretTLSKeyKey, namespace, secretName, SecretCertKey, SecretKeyKey)
	}

	a, err := NewSelfSigned(td, opts...)
	if err != nil {
		return nil, err
	}
	keyPEM, err := encodePrivateKey(a.key)
	if err != nil {
		return nil, err
	}
	secret = corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: namespace,
			Name:      secretName,
			Labels:    map[string]string{ManagedByLabel: ManagedByValue},
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{
			SecretCertKey: EncodeCertificates([]*x509.Certificate{a.cert}),
			SecretKeyKey:  keyPEM,
		},
	}
	err = c.Create(ctx, &secret)
	switch {
	case err == nil:
		return a, nil
	case !apierrors.IsAlreadyExists(err):
		return nil, fmt.Errorf("store the new CA root in Secret %s: %w", key, err)
	}
	// Another replica created it between our Get and Create: use theirs.
	if err := c.Get(ctx, key, &secret); err != nil {
		return nil, fmt.Errorf("read CA Secret %s created by another replica: %w", key, err)
	}
	return authorityFromSecret(&secret, td, opts)
}

// authorityFromSecret loads the CA from a Secret in either layout: ca.crt+ca.key (Trellis)
// or tls.crt+tls.key with an optional ca.crt root (cert-manager). ca-bundle.crt adds roots.
func authorityFromSecret(s *corev1.Secret, td spiffeid.TrustDomain, opts []Option) (*Authority, error) {
	where := fmt.Sprintf("CA Secret %s/%s", s.Namespace, s.Name)
	certKey, keyKey := SecretCertKey, SecretKeyKey
	var rootKeys []string
	if _, ok := s.Data[SecretKeyKey]; !ok {
		if _, ok := s.Data[SecretTLSKeyKey]; !ok {
			return nil, fmt.Errorf("%s has neither %q+%q nor %q+%q: put the CA certificate and its private key under one of these pairs of keys",
				where, SecretCertKey, SecretKeyKey, SecretTLSCertKey, SecretTLSKeyKey)
		}
		certKey, keyKey = SecretTLSCertKey, SecretTLSKeyKey
		rootKeys = append(rootKeys, SecretCertKey)
	}
	rootKeys = append(rootKeys, SecretBundleKey)

	certPEM, ok := s.Data[certKey]
	if !ok {
		return nil, fmt.Errorf("%s has the private key %q but no certificate %q: add the CA certificate", where, keyKey, certKey)
	}
	chain, err := ParseCertificates(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s, key %q: %w", where, certKey, err)
	}
	key, err := ParsePrivateKey(s.Data[keyKey])
	if err != nil {
		return nil, fmt.Errorf("%s, key %q: %w", where, keyKey, err)
	}
	var roots []*x509.Certificate
	for _, k := range rootKeys {
		data, ok := s.Data[k]
		if !ok || len(data) == 0 {
			continue
		}
		certs, err := ParseCertificates(data)
		if err != nil {
			return nil, fmt.Errorf("%s, key %q: %w", where, k, err)
		}
		roots = append(roots, certs...)
	}
	a, err := NewAuthority(td, chain, key, roots, opts...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return a, nil
}
