package identity_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/trellis-mesh/trellis/controlplane/identity"
	"github.com/trellis-mesh/trellis/internal/kubetest"
)

const caNamespace = "trellis-system"

func TestLoadOrCreate(t *testing.T) {
	env := kubetest.Start(t)
	c := env.Client
	createNamespace(t, c, caNamespace, nil)

	t.Run("a missing Secret gets a new root, which is reloaded the next time", func(t *testing.T) {
		first, err := identity.LoadOrCreate(testContext(t), c, caNamespace, "generated", td, false)
		if err != nil {
			t.Fatalf("first LoadOrCreate: %v", err)
		}
		var s corev1.Secret
		if err := c.Get(testContext(t), client.ObjectKey{Namespace: caNamespace, Name: "generated"}, &s); err != nil {
			t.Fatalf("the Secret was not created: %v", err)
		}
		if len(s.Data[identity.SecretCertKey]) == 0 || len(s.Data[identity.SecretKeyKey]) == 0 {
			t.Errorf("the Secret has keys %v, want %s and %s", keys(s.Data), identity.SecretCertKey, identity.SecretKeyKey)
		}
		if s.Labels[identity.ManagedByLabel] != identity.ManagedByValue {
			t.Errorf("the Secret is not labelled as Trellis's: %v", s.Labels)
		}
		second, err := identity.LoadOrCreate(testContext(t), c, caNamespace, "generated", td, false)
		if err != nil {
			t.Fatalf("second LoadOrCreate: %v", err)
		}
		if !second.Certificate().Equal(first.Certificate()) {
			t.Fatalf("the second load made a different root")
		}
		signsTheSame(t, first, second)
	})

	t.Run("when another replica creates the Secret first, its root is used", func(t *testing.T) {
		winner, err := identity.LoadOrCreate(testContext(t), c, caNamespace, "raced", td, false)
		if err != nil {
			t.Fatal(err)
		}
		// This replica's first read happened before the winner's create.
		direct, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
		if err != nil {
			t.Fatal(err)
		}
		reads := 0
		late := interceptor.NewClient(direct, interceptor.Funcs{
			Get: func(ctx context.Context, cl client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
				reads++
				if reads == 1 {
					return apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, key.Name)
				}
				return cl.Get(ctx, key, obj, opts...)
			},
		})
		loser, err := identity.LoadOrCreate(testContext(t), late, caNamespace, "raced", td, false)
		if err != nil {
			t.Fatalf("LoadOrCreate after losing the race: %v", err)
		}
		if !loser.Certificate().Equal(winner.Certificate()) {
			t.Fatalf("the replica that lost the race uses its own root, not the stored one")
		}
	})

	t.Run("a user-supplied CA whose Secret is missing is an error saying what to create", func(t *testing.T) {
		_, err := identity.LoadOrCreate(testContext(t), c, caNamespace, "absent", td, true)
		if err == nil {
			t.Fatal("LoadOrCreate succeeded without the user's Secret")
		}
		for _, want := range []string{"trellis-system/absent does not exist", "ca.crt", "ca.key", "kubectl -n trellis-system create secret generic absent"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
		var s corev1.Secret
		if err := c.Get(testContext(t), client.ObjectKey{Namespace: caNamespace, Name: "absent"}, &s); !apierrors.IsNotFound(err) {
			t.Errorf("a Secret was created for a user-supplied CA: %v", err)
		}
	})

	t.Run("a cert-manager Secret with an intermediate and its root is used", func(t *testing.T) {
		rootKey, interKey := newKey(t), newKey(t)
		root := caCert(t, rootKey, nil, nil, nil)
		inter := caCert(t, interKey, root, rootKey, nil)
		sec1, err := x509.MarshalECPrivateKey(interKey.(*ecdsa.PrivateKey))
		if err != nil {
			t.Fatal(err)
		}
		createSecret(t, c, "cert-manager", map[string][]byte{
			identity.SecretTLSCertKey: identity.EncodeCertificates([]*x509.Certificate{inter}),
			identity.SecretTLSKeyKey:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}),
			identity.SecretCertKey:    identity.EncodeCertificates([]*x509.Certificate{root}),
		})
		ca, err := identity.LoadOrCreate(testContext(t), c, caNamespace, "cert-manager", td, true)
		if err != nil {
			t.Fatalf("LoadOrCreate: %v", err)
		}
		if !ca.Certificate().Equal(inter) {
			t.Errorf("the CA does not sign with tls.crt")
		}
		if roots := ca.Roots(); len(roots) != 1 || !roots[0].Equal(root) {
			t.Errorf("the trust bundle is not ca.crt")
		}
		id := idFor(t, "shop", "cart")
		chain, err := ca.Sign(parseCSR(t, csrDER(t, newKey(t), []string{id.String()}, nil)), id, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: pool([]*x509.Certificate{root}), Intermediates: pool(chain[1:])}); err != nil {
			t.Errorf("a certificate it signs does not verify against the user's root: %v", err)
		}
	})

	t.Run("a cert-manager Secret of a self-signed CA is used", func(t *testing.T) {
		key := newKey(t)
		root := caCert(t, key, nil, nil, nil)
		pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		rootPEM := identity.EncodeCertificates([]*x509.Certificate{root})
		createSecret(t, c, "cert-manager-root", map[string][]byte{
			identity.SecretTLSCertKey: rootPEM,
			identity.SecretTLSKeyKey:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}),
			identity.SecretCertKey:    rootPEM,
		})
		ca, err := identity.LoadOrCreate(testContext(t), c, caNamespace, "cert-manager-root", td, true)
		if err != nil {
			t.Fatalf("LoadOrCreate: %v", err)
		}
		if !ca.Certificate().Equal(root) || len(ca.Roots()) != 1 {
			t.Errorf("the CA does not sign with the user's root, or the root is in the bundle twice")
		}
	})

	t.Run("ca-bundle.crt adds roots to the trust bundle", func(t *testing.T) {
		key, oldKey := newKey(t), newKey(t)
		current := caCert(t, key, nil, nil, nil)
		old := caCert(t, oldKey, nil, nil, nil)
		pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		createSecret(t, c, "rotating", map[string][]byte{
			identity.SecretCertKey:   identity.EncodeCertificates([]*x509.Certificate{current}),
			identity.SecretKeyKey:    pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}),
			identity.SecretBundleKey: identity.EncodeCertificates([]*x509.Certificate{old}),
		})
		ca, err := identity.LoadOrCreate(testContext(t), c, caNamespace, "rotating", td, true)
		if err != nil {
			t.Fatalf("LoadOrCreate: %v", err)
		}
		if roots := ca.Roots(); len(roots) != 2 || !roots[0].Equal(current) || !roots[1].Equal(old) {
			t.Errorf("trust bundle has %d roots, want the current and the old one", len(roots))
		}
	})

	t.Run("an unusable Secret is reported and left as it was", func(t *testing.T) {
		broken := map[string][]byte{identity.SecretCertKey: []byte("not a certificate"), identity.SecretKeyKey: []byte("nor a key")}
		createSecret(t, c, "broken", broken)
		_, err := identity.LoadOrCreate(testContext(t), c, caNamespace, "broken", td, false)
		if err == nil || !strings.Contains(err.Error(), `CA Secret trellis-system/broken, key "ca.crt"`) {
			t.Fatalf("LoadOrCreate error = %v, want one naming the Secret and key", err)
		}
		var s corev1.Secret
		if err := c.Get(testContext(t), client.ObjectKey{Namespace: caNamespace, Name: "broken"}, &s); err != nil {
			t.Fatal(err)
		}
		if string(s.Data[identity.SecretCertKey]) != "not a certificate" {
			t.Errorf("the broken Secret was overwritten")
		}
	})

	t.Run("a Secret without a known pair of keys is reported", func(t *testing.T) {
		createSecret(t, c, "empty", map[string][]byte{"other": []byte("x")})
		_, err := identity.LoadOrCreate(testContext(t), c, caNamespace, "empty", td, false)
		if err == nil || !strings.Contains(err.Error(), `has neither "ca.crt"+"ca.key" nor "tls.crt"+"tls.key"`) {
			t.Fatalf("LoadOrCreate error = %v", err)
		}
	})
}

func createSecret(t *testing.T, c client.Client, name string, data map[string][]byte) {
	t.Helper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: caNamespace, Name: name}, Data: data}
	if err := c.Create(testContext(t), s); err != nil {
		t.Fatalf("create Secret %s: %v", name, err)
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// signsTheSame checks that a certificate signed by a verifies against b's roots, so both
// hold the same key.
func signsTheSame(t *testing.T, a, b *identity.Authority) {
	t.Helper()
	id := idFor(t, "shop", "cart")
	chain, err := a.Sign(parseCSR(t, csrDER(t, newKey(t), []string{id.String()}, nil)), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: pool(b.Roots())}); err != nil {
		t.Errorf("a certificate from one does not verify against the other: %v", err)
	}
	chain, err = b.Sign(parseCSR(t, csrDER(t, newKey(t), []string{id.String()}, nil)), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: pool(a.Roots())}); err != nil {
		t.Errorf("a certificate from the other does not verify against the first: %v", err)
	}
}
