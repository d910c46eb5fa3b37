package identity_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/trellis-mesh/trellis/internal/kubetest"
)

// testIssuer is the ServiceAccount token issuer of the apiservers startWithSAKey starts.
const testIssuer = "https://trellis.test/issuer"

// saSigner is the key the apiserver signs ServiceAccount tokens with, so a test can mint
// tokens the apiserver cannot tell from its own (an expired one, say).
type saSigner struct {
	key *ecdsa.PrivateKey
}

// startWithSAKey starts an apiserver whose ServiceAccount tokens are signed with a key the
// test holds, under issuer testIssuer.
func startWithSAKey(t *testing.T) (*kubetest.Env, *saSigner) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "sa-signer.key")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	env := kubetest.StartWith(t, func(e *envtest.Environment) {
		e.ControlPlane.GetAPIServer().Configure().
			Set("service-account-issuer", testIssuer).
			Set("service-account-key-file", path). // a private key file serves as the public key too
			Set("service-account-signing-key-file", path)
	})
	return env, &saSigner{key: key}
}

// mint signs a ServiceAccount token for sa as the apiserver would, valid from nbf to exp.
func (s *saSigner) mint(t *testing.T, sa *corev1.ServiceAccount, audience string, nbf, exp time.Time) string {
	t.Helper()
	return mintJWT(t, s.key, sa, audience, nbf, exp)
}

func mintJWT(t *testing.T, key *ecdsa.PrivateKey, sa *corev1.ServiceAccount, audience string, nbf, exp time.Time) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	claims := map[string]any{
		"iss": testIssuer,
		"sub": "system:serviceaccount:" + sa.Namespace + ":" + sa.Name,
		"aud": []string{audience},
		"iat": nbf.Unix(),
		"nbf": nbf.Unix(),
		"exp": exp.Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      sa.Namespace,
			"serviceaccount": map[string]any{"name": sa.Name, "uid": string(sa.UID)},
		},
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := signer.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func createNamespace(t *testing.T, c client.Client, name string, labels map[string]string) *corev1.Namespace {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if err := c.Create(testContext(t), ns); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	return ns
}

func createServiceAccount(t *testing.T, c client.Client, ns, name string) *corev1.ServiceAccount {
	t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := c.Create(testContext(t), sa); err != nil {
		t.Fatalf("create ServiceAccount %s/%s: %v", ns, name, err)
	}
	return sa
}

// requestToken asks the apiserver for a token of sa for audience, as the kubelet does for a
// projected ServiceAccount token volume.
func requestToken(t *testing.T, c client.Client, sa *corev1.ServiceAccount, audience string) string {
	t.Helper()
	expiry := int64(600)
	tr := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: &expiry}}
	if err := c.SubResource("token").Create(testContext(t), sa, tr); err != nil {
		t.Fatalf("TokenRequest for %s/%s: %v", sa.Namespace, sa.Name, err)
	}
	return tr.Status.Token
}

// eventually polls cond until it returns "" (done) or a minute passes, then fails with its
// last complaint.
func eventually(t *testing.T, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still not true after a minute: %s", msg)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
