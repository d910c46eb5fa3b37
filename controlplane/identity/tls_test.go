package identity_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/trellis-mesh/trellis/controlplane/identity"
)

var controlPlaneID = spiffeid.RequireFromString("spiffe://cluster.local/ns/trellis-system/sa/trellis-controlplane")

const controlPlaneDNS = "trellis-controlplane.trellis-system.svc"

func TestServingCertificate(t *testing.T) {
	ca := newCA(t)
	cert, err := ca.ServingCertificate(controlPlaneID, []string{controlPlaneDNS}, time.Hour)
	if err != nil {
		t.Fatalf("ServingCertificate: %v", err)
	}
	leaf := cert.Leaf
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != controlPlaneID.String() {
		t.Errorf("URI SANs = %v, want [%s]", leaf.URIs, controlPlaneID)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: controlPlaneDNS, Roots: pool(ca.Roots())}); err != nil {
		t.Errorf("a client dialling %s does not accept the certificate: %v", controlPlaneDNS, err)
	}
	if len(cert.Certificate) != 1 || cert.PrivateKey == nil {
		t.Errorf("tls.Certificate has %d certificates and key %T", len(cert.Certificate), cert.PrivateKey)
	}
}

func pool(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func TestCertRotatorRenewsAtTwoThirdsOfTheLife(t *testing.T) {
	clock := newFakeClock()
	ca := newCA(t, identity.WithClock(clock.Now))
	issued := 0
	r, err := identity.NewCertRotator(func() (*tls.Certificate, error) {
		issued++
		return ca.ServingCertificate(controlPlaneID, []string{controlPlaneDNS}, 3*time.Hour)
	}, identity.RotatorClock(clock.Now))
	if err != nil {
		t.Fatalf("NewCertRotator: %v", err)
	}
	first := r.Current()
	if want := clock.Now().Add(2 * time.Hour); !r.RenewAt().Equal(want) {
		t.Errorf("RenewAt = %v, want %v (2/3 of 3h)", r.RenewAt(), want)
	}

	steps := []struct {
		name        string
		advance     time.Duration
		wantRenewed bool
	}{
		{"an hour in, the certificate is kept", time.Hour, false},
		{"just before 2/3 of its life, it is kept", time.Hour - time.Second, false},
		{"at 2/3 of its life, it is renewed", time.Second, true},
		{"right after renewal, the new one is kept", time.Minute, false},
	}
	for _, s := range steps {
		clock.Advance(s.advance)
		before := r.Current()
		got, err := r.GetCertificate(&tls.ClientHelloInfo{})
		if err != nil {
			t.Fatalf("%s: GetCertificate: %v", s.name, err)
		}
		if renewed := got != before; renewed != s.wantRenewed {
			t.Errorf("%s: renewed = %v, want %v", s.name, renewed, s.wantRenewed)
		}
	}
	if issued != 2 || r.Current() == first {
		t.Errorf("issued %d certificates, want 2", issued)
	}
}

func TestCertRotatorKeepsServingWhileRenewalFails(t *testing.T) {
	clock := newFakeClock()
	ca := newCA(t, identity.WithClock(clock.Now))
	fail := false
	r, err := identity.NewCertRotator(func() (*tls.Certificate, error) {
		if fail {
			return nil, errors.New("CA unavailable")
		}
		return ca.ServingCertificate(controlPlaneID, nil, 3*time.Hour)
	}, identity.RotatorClock(clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	fail = true
	clock.Advance(150 * time.Minute) // due, still valid
	if got, err := r.GetCertificate(nil); err != nil || got != r.Current() {
		t.Fatalf("GetCertificate while renewal fails = %v, %v; want the current certificate", got, err)
	}
	if _, err := r.RenewIfDue(); err == nil || !strings.Contains(err.Error(), "CA unavailable") {
		t.Errorf("RenewIfDue error = %v, want the issuer's error", err)
	}
	clock.Advance(time.Hour) // expired
	if _, err := r.GetCertificate(nil); err == nil {
		t.Fatalf("GetCertificate served an expired certificate")
	}
}

func TestCertRotatorRenewsInTheBackground(t *testing.T) {
	ca := newCA(t)
	var mu sync.Mutex
	issued := 0
	r, err := identity.NewCertRotator(func() (*tls.Certificate, error) {
		mu.Lock()
		issued++
		mu.Unlock()
		return ca.ServingCertificate(controlPlaneID, nil, 3*time.Second)
	})
	if err != nil {
		t.Fatal(err)
	}
	first := r.Current()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Start(ctx) }()
	deadline := time.Now().Add(15 * time.Second)
	for r.Current() == first {
		if time.Now().After(deadline) {
			t.Fatal("the certificate was not renewed in the background")
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Start returned %v", err)
	}
	if r.NeedLeaderElection() {
		t.Errorf("the rotator would run only on the leader; every replica serves")
	}
}

func TestPeerIdentity(t *testing.T) {
	ca := newCA(t)
	id := idFor(t, "shop", "cart")
	chain, err := ca.Sign(parseCSR(t, csrDER(t, newKey(t), []string{id.String()}, nil)), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
	withPeer := func(auth credentials.AuthInfo) context.Context {
		return peer.NewContext(context.Background(), &peer.Peer{Addr: addr, AuthInfo: auth})
	}
	tests := []struct {
		name string
		ctx  context.Context
		want spiffeid.ID // zero: an error wrapping ErrNoPeerCertificate
	}{
		{"a verified client certificate names its SPIFFE ID",
			withPeer(credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{chain[0], ca.Certificate()}}}}), id},
		{"a context without a peer has no identity", context.Background(), spiffeid.ID{}},
		{"a connection without TLS has no identity", withPeer(nil), spiffeid.ID{}},
		{"a TLS client without a certificate has no identity", withPeer(credentials.TLSInfo{}), spiffeid.ID{}},
		{"an unverified certificate is not an identity",
			withPeer(credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: chain}}), spiffeid.ID{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := identity.PeerIdentity(tt.ctx)
			if tt.want.IsZero() {
				if !errors.Is(err, identity.ErrNoPeerCertificate) {
					t.Fatalf("PeerIdentity = %v, %v; want ErrNoPeerCertificate", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("PeerIdentity = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestParseWorkloadID(t *testing.T) {
	tests := []struct {
		name, id, ns, sa string
	}{
		{"a workload ID gives namespace and ServiceAccount", "spiffe://cluster.local/ns/shop/sa/cart", "shop", "cart"},
		{"a path of another shape is refused", "spiffe://cluster.local/ns/shop", "", ""},
		{"the trust domain alone is refused", "spiffe://cluster.local", "", ""},
		{"a path with the segments swapped is refused", "spiffe://cluster.local/sa/cart/ns/shop", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns, sa, err := identity.ParseWorkloadID(spiffeid.RequireFromString(tt.id))
			if tt.ns == "" {
				if err == nil {
					t.Fatalf("ParseWorkloadID(%s) = %s, %s; want an error", tt.id, ns, sa)
				}
				return
			}
			if err != nil || ns != tt.ns || sa != tt.sa {
				t.Fatalf("ParseWorkloadID(%s) = %q, %q, %v", tt.id, ns, sa, err)
			}
		})
	}
}
