package mtls

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trellis-mesh/trellis/controlplane/identity"
)

var (
	td        = spiffeid.RequireTrustDomainFromString("cluster.local")
	otherTD   = spiffeid.RequireTrustDomainFromString("other.example")
	cartID    = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/cart")
	backendID = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/backend")
	adminID   = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/admin")
	foreignID = spiffeid.RequireFromString("spiffe://other.example/ns/shop/sa/cart")
)

func newCA(t testing.TB, trust spiffeid.TrustDomain) *identity.Authority {
	t.Helper()
	ca, err := identity.NewSelfSigned(trust)
	if err != nil {
		t.Fatalf("new CA: %v", err)
	}
	return ca
}

// svidFrom is an X.509-SVID for id issued by ca (with a new key).
func svidFrom(t testing.TB, ca *identity.Authority, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	cert, err := ca.ServingCertificate(id, nil, time.Hour)
	if err != nil {
		t.Fatalf("issue %s: %v", id, err)
	}
	var chain []*x509.Certificate
	for _, raw := range cert.Certificate {
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: cert.PrivateKey.(crypto.Signer)}
}

// sources is a Sources whose SVID can be swapped, as svid.Source's is on renewal.
type sources struct {
	svid   atomic.Pointer[x509svid.SVID]
	bundle x509bundle.Source
}

func newSources(sv *x509svid.SVID, bundle x509bundle.Source) *sources {
	s := &sources{bundle: bundle}
	s.svid.Store(sv)
	return s
}

func (s *sources) GetX509SVID() (*x509svid.SVID, error) { return s.svid.Load(), nil }

func (s *sources) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.bundle.GetX509BundleForTrustDomain(td)
}

// result is the outcome of one handshake, seen from both ends.
type result struct {
	client, server       tls.ConnectionState
	clientErr, serverErr error
}

// handshake connects a client and a server over TCP on 127.0.0.1. On success the server
// sends "ok" and the client reads it (in TLS 1.3 the client's handshake ends before the
// server has checked the client's certificate: reading shows whether the server accepted).
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) result {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lis.Close() }()

	var res result
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := lis.Accept()
		if err != nil {
			res.serverErr = err
			return
		}
		defer func() { _ = c.Close() }()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Server(c, serverCfg)
		if res.serverErr = tc.Handshake(); res.serverErr != nil {
			return
		}
		res.server = tc.ConnectionState()
		_, res.serverErr = tc.Write([]byte("ok"))
	}()

	c, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, clientCfg)
	res.clientErr = tc.Handshake()
	if res.clientErr == nil {
		res.client = tc.ConnectionState()
		buf := make([]byte, 2)
		if _, err := io.ReadFull(tc, buf); err != nil {
			res.clientErr = err
		}
	} else {
		_ = c.Close() // let the server see the refusal
	}
	wg.Wait()
	return res
}
