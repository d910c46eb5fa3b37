package identity_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/controlplane/identity"
)

func TestKubeTokenReviewer(t *testing.T) {
	env, signer := startWithSAKey(t)
	createNamespace(t, env.Client, "shop", nil)
	cart := createServiceAccount(t, env.Client, "shop", "cart")
	randomKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	reviewer := identity.NewKubeTokenReviewer(env.Client)

	tests := []struct {
		name    string
		token   string
		wantErr string // "" accepted as shop/cart
	}{
		{"a TokenRequest token for the CA's audience names its ServiceAccount",
			requestToken(t, env.Client, cart, identity.Audience), ""},
		{"a token the test minted with the apiserver's key is accepted (the control for the expired one)",
			signer.mint(t, cart, identity.Audience, now.Add(-time.Minute), now.Add(time.Hour)), ""},
		{"the same ServiceAccount's token for another audience is refused",
			requestToken(t, env.Client, cart, "https://kubernetes.default.svc"), "token audiences"},
		{"a token signed with a random key is refused",
			mintJWT(t, randomKey, cart, identity.Audience, now.Add(-time.Minute), now.Add(time.Hour)), "ServiceAccount token refused"},
		{"an expired token signed with the apiserver's key is refused",
			signer.mint(t, cart, identity.Audience, now.Add(-2*time.Hour), now.Add(-time.Hour)), "has expired"},
		{"an empty token is refused", "", "empty"},
		{"a string that is not a token is refused", "not-a-jwt", "ServiceAccount token refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns, sa, err := reviewer.Review(testContext(t), tt.token)
			if tt.wantErr == "" {
				if err != nil || ns != "shop" || sa != "cart" {
					t.Fatalf("Review = %q, %q, %v; want shop, cart", ns, sa, err)
				}
				return
			}
			if !errors.Is(err, identity.ErrInvalidToken) {
				t.Fatalf("Review = %q, %q, %v; want an error wrapping ErrInvalidToken", ns, sa, err)
			}
			t.Logf("refused: %v", err)
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not say %q", err, tt.wantErr)
			}
			if tt.token != "" && strings.Contains(err.Error(), tt.token) {
				t.Errorf("error echoes the token: %q", err)
			}
		})
	}
}
