package svid

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	cav1alpha1 "github.com/trellis-mesh/trellis/api/ca/v1alpha1"
	"github.com/trellis-mesh/trellis/controlplane/identity"
)

const caDNS = "trellis-controlplane.trellis-system.svc"

var (
	td         = spiffeid.RequireTrustDomainFromString("cluster.local")
	cartID     = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/cart")
	paymentsID = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/payments")
	cpID       = spiffeid.RequireFromString("spiffe://cluster.local/ns/trellis-system/sa/trellis-controlplane")
)

// stubReviewer accepts "token-<ns>-<sa>[-anything]" as that ServiceAccount's token and
// records every token it is asked about.
type stubReviewer struct {
	mu   sync.Mutex
	seen []string
}

func (r *stubReviewer) Review(_ context.Context, token string) (string, string, error) {
	r.mu.Lock()
	r.seen = append(r.seen, token)
	r.mu.Unlock()
	parts := strings.Split(token, "-")
	if len(parts) < 3 || parts[0] != "token" {
		return "", "", fmt.Errorf("%w: unknown token", identity.ErrInvalidToken)
	}
	return parts[1], parts[2], nil
}

func (r *stubReviewer) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

func (r *stubReviewer) last() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.seen) == 0 {
		return ""
	}
	return r.seen[len(r.seen)-1]
}

func newCA(t testing.TB, opts ...identity.Option) *identity.Authority {
	t.Helper()
	ca, err := identity.NewSelfSigned(td, opts...)
	if err != nil {
		t.Fatalf("new CA: %v", err)
	}
	return ca
}

// serveCA serves svc (the real CertificateService, or a fake) over TLS on 127.0.0.1 with
// the control plane's TLS config and a serving certificate from ca, and returns its address.
func serveCA(t testing.TB, ca *identity.Authority, svc cav1alpha1.CertificateServiceServer) string {
	t.Helper()
	rotator, err := identity.NewCertRotator(func() (*tls.Certificate, error) {
		return ca.ServingCertificate(cpID, []string{caDNS}, 24*time.Hour)
	})
	if err != nil {
		t.Fatalf("serving certificate: %v", err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(identity.ServerTLSConfig(ca, rotator))))
	cav1alpha1.RegisterCertificateServiceServer(srv, svc)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// realCA runs the real CertificateService of ca with a stub reviewer.
func realCA(t testing.TB, ca *identity.Authority) (addr string, reviewer *stubReviewer) {
	t.Helper()
	reviewer = &stubReviewer{}
	return serveCA(t, ca, identity.NewServer(ca, reviewer, identity.NopObserver{})), reviewer
}

// fakeCA answers with whatever answer returns for the CSR, and records the requests.
type fakeCA struct {
	cav1alpha1.UnimplementedCertificateServiceServer
	answer func(csr *x509.CertificateRequest) (*cav1alpha1.CreateCertificateResponse, error)

	mu    sync.Mutex
	csrs  []*x509.CertificateRequest
	auths [][]string
}

func (f *fakeCA) CreateCertificate(ctx context.Context, req *cav1alpha1.CreateCertificateRequest) (*cav1alpha1.CreateCertificateResponse, error) {
	der, err := identity.DecodeCSRPEM([]byte(req.GetCsrPem()))
	if err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, err
	}
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.csrs = append(f.csrs, csr)
	f.auths = append(f.auths, md.Get("authorization"))
	f.mu.Unlock()
	return f.answer(csr)
}

// answerFrom signs every CSR with ca for id, and sends bundle as the trust bundle.
func answerFrom(ca *identity.Authority, id spiffeid.ID, bundle []byte) func(*x509.CertificateRequest) (*cav1alpha1.CreateCertificateResponse, error) {
	return func(csr *x509.CertificateRequest) (*cav1alpha1.CreateCertificateResponse, error) {
		chain, err := ca.Sign(csr, id, time.Hour)
		if err != nil {
			return nil, err
		}
		return response(chain, bundle), nil
	}
}

func response(chain []*x509.Certificate, bundle []byte) *cav1alpha1.CreateCertificateResponse {
	resp := &cav1alpha1.CreateCertificateResponse{TrustBundlePem: string(bundle)}
	for _, c := range chain {
		resp.CertChainPem = append(resp.CertChainPem, string(identity.EncodeCertificates([]*x509.Certificate{c})))
	}
	return resp
}

// gate is a dial hook: while down, the CA cannot be reached; redirect, when set, replaces
// the address dialled.
type gate struct {
	down     atomic.Bool
	dials    atomic.Int32
	redirect atomic.Pointer[string]
}

func (g *gate) option() grpc.DialOption {
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		g.dials.Add(1)
		if g.down.Load() {
			return nil, errors.New("connection refused (the test CA is down)")
		}
		if r := g.redirect.Load(); r != nil {
			addr = *r
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	})
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// fakeSleep replaces Source.sleep: each wait is handed to the test, which ends it.
type fakeSleep struct{ reqs chan sleepReq }

type sleepReq struct {
	d    time.Duration
	wake chan struct{}
}

func newFakeSleep() *fakeSleep { return &fakeSleep{reqs: make(chan sleepReq)} }

func (f *fakeSleep) sleep(ctx context.Context, d time.Duration) error {
	r := sleepReq{d: d, wake: make(chan struct{})}
	select {
	case f.reqs <- r:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-r.wake:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// next is the wait Start asks for next.
func (f *fakeSleep) next(t testing.TB) sleepReq {
	t.Helper()
	select {
	case r := <-f.reqs:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("Start did not wait for a renewal or a retry")
		return sleepReq{}
	}
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// testOptions are options for cart against the CA at addr that trusts ca's roots, with
// short backoff, and files in a temporary directory.
func testOptions(t testing.TB, addr string, ca *identity.Authority) Options {
	t.Helper()
	dir := t.TempDir()
	opts := Options{
		CAAddr:         addr,
		CAServerName:   caDNS,
		TokenPath:      filepath.Join(dir, "token"),
		RootCertPath:   filepath.Join(dir, "root-cert.pem"),
		ID:             cartID,
		TTL:            time.Hour,
		InitialBackoff: 5 * time.Millisecond,
		MaxBackoff:     20 * time.Millisecond,
		RequestTimeout: 10 * time.Second,
		Logger:         slog.New(slog.DiscardHandler),
	}
	writeFile(t, opts.TokenPath, "token-shop-cart\n")
	writeFile(t, opts.RootCertPath, string(ca.TrustBundlePEM()))
	return opts
}

func newSource(t testing.TB, opts Options) *Source {
	t.Helper()
	s, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

// start runs s.Start until the test ends. result waits for Start to return and gives its
// error.
func start(t testing.TB, s *Source) (cancel context.CancelFunc, result func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var err error
	go func() {
		defer close(done)
		err = s.Start(ctx)
	}()
	wait := func() bool {
		select {
		case <-done:
			return true
		case <-time.After(10 * time.Second):
			return false
		}
	}
	t.Cleanup(func() {
		cancel()
		if !wait() {
			t.Error("Start did not return after its context ended")
		}
	})
	return cancel, func() error {
		if !wait() {
			t.Fatal("Start did not return after its context ended")
		}
		return err
	}
}

func waitReady(t testing.TB, s *Source) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitReady(ctx); err != nil {
		t.Fatalf("WaitReady: %v", err)
	}
}

// eventually polls cond for up to 10 s.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func currentSerial(t testing.TB, s *Source) string {
	t.Helper()
	sv, err := s.GetX509SVID()
	if err != nil {
		t.Fatalf("GetX509SVID: %v", err)
	}
	return sv.Certificates[0].SerialNumber.Text(16)
}
