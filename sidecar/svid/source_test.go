package svid

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trellis-mesh/trellis/controlplane/identity"
)

func TestFirstSVID(t *testing.T) {
	ca := newCA(t)
	addr, _ := realCA(t, ca)

	tests := []struct {
		name string
		ttl  time.Duration
		life time.Duration // NotAfter - NotBefore - identity.ClockSkew
	}{
		{"with no TTL the CA's default lifetime is granted", 0, identity.DefaultTTL},
		{"a requested TTL is granted", time.Hour, time.Hour},
		{"a TTL with a fraction of a second is rounded up to whole seconds", 1500 * time.Millisecond, 2 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := testOptions(t, addr, ca)
			opts.TTL = tt.ttl
			s := newSource(t, opts)
			if s.Ready() {
				t.Fatal("Ready before Start")
			}
			if _, err := s.GetX509SVID(); err == nil {
				t.Fatal("GetX509SVID succeeded before the first SVID")
			}
			start(t, s)
			waitReady(t, s)

			sv, err := s.GetX509SVID()
			if err != nil {
				t.Fatalf("GetX509SVID: %v", err)
			}
			leaf := sv.Certificates[0]
			if sv.ID != cartID {
				t.Errorf("ID = %s, want %s", sv.ID, cartID)
			}
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != cartID.String() || len(leaf.DNSNames) > 0 {
				t.Errorf("leaf SANs = URIs %v DNS %v, want only %s", leaf.URIs, leaf.DNSNames, cartID)
			}
			if k, ok := sv.PrivateKey.(*ecdsa.PrivateKey); !ok || k.Curve != elliptic.P256() {
				t.Errorf("key is %T, want ECDSA P-256", sv.PrivateKey)
			}
			if _, _, err := x509svid.Verify(sv.Certificates, ca.Bundle()); err != nil {
				t.Errorf("the SVID does not verify against the CA's bundle: %v", err)
			}
			if life := leaf.NotAfter.Sub(leaf.NotBefore) - identity.ClockSkew; life != tt.life {
				t.Errorf("lifetime = %s, want %s", life, tt.life)
			}
			b, err := s.GetX509BundleForTrustDomain(td)
			if err != nil {
				t.Fatalf("GetX509BundleForTrustDomain: %v", err)
			}
			if !b.Equal(ca.Bundle()) {
				t.Errorf("bundle is not the CA's")
			}

			st := s.Status()
			if !st.Ready || st.ID != cartID.String() || st.SerialNumber != leaf.SerialNumber.Text(16) ||
				!st.NotBefore.Equal(leaf.NotBefore) || !st.NotAfter.Equal(leaf.NotAfter) ||
				st.LastError != "" || st.BundleRoots != 1 {
				t.Errorf("Status = %+v, want ready, the leaf's serial and validity, no error, 1 root", st)
			}
			if !st.RenewAt.After(st.NotBefore) || !st.RenewAt.Before(st.NotAfter) {
				t.Errorf("RenewAt %s is not within the validity %s..%s", st.RenewAt, st.NotBefore, st.NotAfter)
			}
		})
	}
}

func TestEachRequestSendsANewKeyAndOnlyTheSPIFFEID(t *testing.T) {
	ca := newCA(t)
	fake := &fakeCA{answer: answerFrom(ca, cartID, ca.TrustBundlePEM())}
	s := newSource(t, testOptions(t, serveCA(t, ca, fake), ca))
	for range 2 {
		if err := s.refresh(context.Background()); err != nil {
			t.Fatalf("refresh: %v", err)
		}
	}

	fake.mu.Lock()
	defer fake.mu.Unlock()
	if len(fake.csrs) != 2 {
		t.Fatalf("%d requests, want 2", len(fake.csrs))
	}
	for i, csr := range fake.csrs {
		if len(csr.URIs) != 1 || csr.URIs[0].String() != cartID.String() ||
			len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) != 0 {
			t.Errorf("CSR %d has SANs URIs %v DNS %v IP %v email %v, want exactly %s",
				i, csr.URIs, csr.DNSNames, csr.IPAddresses, csr.EmailAddresses, cartID)
		}
		if k, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
			t.Errorf("CSR %d key is %T, want ECDSA P-256", i, csr.PublicKey)
		}
		if got := fake.auths[i]; len(got) != 1 || got[0] != "Bearer token-shop-cart" {
			t.Errorf("request %d authorization = %q, want [Bearer token-shop-cart]", i, got)
		}
	}
	if fake.csrs[0].PublicKey.(*ecdsa.PublicKey).Equal(fake.csrs[1].PublicKey) {
		t.Error("both requests used the same key; each must make a new one")
	}
}

func TestTheTokenFileIsReadAtEveryRequest(t *testing.T) {
	ca := newCA(t)
	addr, reviewer := realCA(t, ca)
	opts := testOptions(t, addr, ca)
	s := newSource(t, opts)

	steps := []struct {
		name      string
		token     *string // file content; nil removes the file
		wantToken string  // seen by the CA ("" when no request is made)
		wantErr   string
	}{
		{"the first token is sent", ptr("token-shop-cart-1\n"), "token-shop-cart-1", ""},
		{"a rotated token is sent at the next request", ptr("token-shop-cart-2"), "token-shop-cart-2", ""},
		{"a token of another ServiceAccount is refused by the CA", ptr("token-shop-payments"), "token-shop-payments", "refused to sign"},
		{"an unknown token is refused by the CA", ptr("bogus"), "bogus", "refused the ServiceAccount token"},
		{"an empty token file is an error before asking the CA", ptr(" \n"), "", "is empty"},
		{"a missing token file is an error before asking the CA", nil, "", "read the ServiceAccount token"},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if st.token == nil {
				if err := os.Remove(opts.TokenPath); err != nil {
					t.Fatal(err)
				}
			} else {
				writeFile(t, opts.TokenPath, *st.token)
			}
			before := reviewer.count()
			err := s.refresh(context.Background())
			switch {
			case st.wantErr == "" && err != nil:
				t.Fatalf("refresh: %v", err)
			case st.wantErr != "" && (err == nil || !strings.Contains(err.Error(), st.wantErr)):
				t.Fatalf("refresh error = %v, want one containing %q", err, st.wantErr)
			}
			if st.wantToken == "" {
				if reviewer.count() != before {
					t.Errorf("the CA was asked with %q", reviewer.last())
				}
			} else if got := reviewer.last(); got != st.wantToken {
				t.Errorf("the CA saw token %q, want %q", got, st.wantToken)
			}
			if st.wantErr != "" {
				if got := s.Status().LastError; !strings.Contains(got, st.wantErr) {
					t.Errorf("Status().LastError = %q, want it to contain %q", got, st.wantErr)
				}
				if !s.Ready() || currentSerial(t, s) == "" {
					t.Error("a failed request lost the SVID already held")
				}
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestStartRetriesUntilTheCAIsUp(t *testing.T) {
	ca := newCA(t)
	addr, _ := realCA(t, ca)
	g := &gate{}
	g.down.Store(true)
	opts := testOptions(t, addr, ca)
	opts.DialOptions = append(opts.DialOptions, g.option())
	s := newSource(t, opts)
	start(t, s)

	eventually(t, "Start has tried three times", func() bool { return g.dials.Load() >= 3 })
	if s.Ready() {
		t.Fatal("ready while the CA is down")
	}
	if got := s.Status().LastError; !strings.Contains(got, "unreachable") {
		t.Errorf("LastError = %q, want the CA unreachable", got)
	}
	g.down.Store(false)
	waitReady(t, s)
	if got := s.Status().LastError; got != "" {
		t.Errorf("LastError = %q after success, want none", got)
	}
}

func TestStartEndsWithItsContext(t *testing.T) {
	ca := newCA(t)
	addr, _ := realCA(t, ca)
	tests := []struct {
		name   string
		caDown bool
		want   error
	}{
		{"before the first SVID Start returns the context's error", true, context.Canceled},
		{"once an SVID is held Start returns nil", false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &gate{}
			g.down.Store(tt.caDown)
			opts := testOptions(t, addr, ca)
			opts.DialOptions = append(opts.DialOptions, g.option())
			s := newSource(t, opts)

			cancel, result := start(t, s)
			if tt.caDown {
				eventually(t, "Start has tried", func() bool { return s.Status().LastError != "" })
			} else {
				waitReady(t, s)
			}
			cancel()
			if err := result(); !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Errorf("Start = %v, want %v", err, tt.want)
			}
			ctx, cancelWait := context.WithTimeout(context.Background(), 10*time.Millisecond)
			defer cancelWait()
			err := s.WaitReady(ctx)
			if tt.caDown && (!errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "unreachable")) {
				t.Errorf("WaitReady = %v, want a deadline error naming the last failure", err)
			}
			if !tt.caDown && err != nil {
				t.Errorf("WaitReady = %v, want nil", err)
			}
			if err := s.Start(context.Background()); err == nil {
				t.Error("a second Start succeeded")
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	s := &Source{opts: Options{InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}}
	tests := []struct {
		name     string
		failures int
		ceiling  time.Duration
	}{
		{"the first retry waits about the initial backoff", 1, 100 * time.Millisecond},
		{"each failure doubles the wait", 3, 400 * time.Millisecond},
		{"the wait is capped", 10, time.Second},
		{"the wait stays capped after many failures", 1000, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for range 100 {
				if d := s.backoff(tt.failures); d < tt.ceiling/2 || d > tt.ceiling {
					t.Fatalf("backoff(%d) = %s, want within [%s, %s]", tt.failures, d, tt.ceiling/2, tt.ceiling)
				}
			}
		})
	}
}

func TestRenewAt(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	leaf := &x509.Certificate{NotBefore: t0.Add(-time.Minute), NotAfter: t0.Add(24 * time.Hour)}
	tests := []struct {
		name     string
		obtained time.Time
		fraction float64
		want     time.Time
	}{
		{"half the life counted from when it was obtained", t0, 0.5, t0.Add(12 * time.Hour)},
		{"another fraction", t0, 0.75, t0.Add(18 * time.Hour)},
		{"a clock behind NotBefore counts from NotBefore", t0.Add(-time.Hour), 0.5, t0.Add(-time.Minute).Add(24*time.Hour/2 + 30*time.Second)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := renewAt(leaf, tt.obtained, tt.fraction); !got.Equal(tt.want) {
				t.Errorf("renewAt = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestNewChecksItsOptions(t *testing.T) {
	ca := newCA(t)
	tests := []struct {
		name    string
		edit    func(*Options)
		wantErr string
	}{
		{"complete options are accepted", func(*Options) {}, ""},
		{"no CA address is refused", func(o *Options) { o.CAAddr = "" }, "no CA address"},
		{"no CA server name is refused", func(o *Options) { o.CAServerName = "" }, "no CA server name"},
		{"no token path is refused", func(o *Options) { o.TokenPath = "" }, "no ServiceAccount token path"},
		{"no root path is refused", func(o *Options) { o.RootCertPath = "" }, "no root certificate path"},
		{"no SPIFFE ID is refused", func(o *Options) { o.ID = spiffeid.ID{} }, "no SPIFFE ID"},
		{"a renew fraction of 1 is refused", func(o *Options) { o.RenewFraction = 1 }, "out of range"},
		{"a negative renew fraction is refused", func(o *Options) { o.RenewFraction = -0.1 }, "out of range"},
		{"a negative TTL is refused", func(o *Options) { o.TTL = -time.Second }, "negative"},
		{"a missing root file is refused", func(o *Options) { o.RootCertPath += ".missing" }, "trellis-ca-root-cert"},
		{"a root file without certificates is refused", func(o *Options) { writeFile(t, o.RootCertPath, "hello") }, "no PEM CERTIFICATE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := testOptions(t, "127.0.0.1:1", ca)
			tt.edit(&opts)
			s, err := New(opts)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("New error = %v, want one containing %q", err, tt.wantErr)
			}
			if err == nil && s.opts.RenewFraction != DefaultRenewFraction {
				t.Errorf("RenewFraction = %v, want the default %v", s.opts.RenewFraction, DefaultRenewFraction)
			}
		})
	}
}
