package identity_test

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	cav1alpha1 "github.com/trellis-mesh/trellis/api/ca/v1alpha1"
	"github.com/trellis-mesh/trellis/controlplane/identity"
)

// caHarness is the CertificateService on a real TLS listener on 127.0.0.1, with the
// control plane's TLS config, recording the verified peer identity of each call.
type caHarness struct {
	ca   *identity.Authority
	addr string

	mu       sync.Mutex
	peerID   spiffeid.ID
	peerErr  error
	observed *recordingObserver
}

type recordingObserver struct {
	mu      sync.Mutex
	signed  []string
	refused []string
}

func (o *recordingObserver) Signed(id string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.signed = append(o.signed, id)
}

func (o *recordingObserver) Refused(reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.refused = append(o.refused, reason)
}

func (o *recordingObserver) snapshot() (signed, refused []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.signed...), append([]string(nil), o.refused...)
}

func startCAServer(t *testing.T, ca *identity.Authority, reviewer identity.TokenReviewer) *caHarness {
	t.Helper()
	h := &caHarness{ca: ca, observed: &recordingObserver{}}
	rotator, err := identity.NewCertRotator(func() (*tls.Certificate, error) {
		return ca.ServingCertificate(controlPlaneID, []string{controlPlaneDNS}, time.Hour)
	})
	if err != nil {
		t.Fatalf("serving certificate: %v", err)
	}
	record := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
		id, err := identity.PeerIdentity(ctx)
		h.mu.Lock()
		h.peerID, h.peerErr = id, err
		h.mu.Unlock()
		return next(ctx, req)
	}
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(identity.ServerTLSConfig(ca, rotator))),
		grpc.UnaryInterceptor(record),
	)
	identity.NewServer(ca, reviewer, h.observed).Register(srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	h.addr = lis.Addr().String()
	return h
}

// client dials the harness as a sidecar would: trusting the mesh roots, checking the control
// plane's SPIFFE ID, presenting cert when not nil.
func (h *caHarness) client(t *testing.T, cert *tls.Certificate) cav1alpha1.CertificateServiceClient {
	t.Helper()
	cfg := &tls.Config{
		RootCAs:    pool(h.ca.Roots()),
		ServerName: controlPlaneDNS,
		MinVersion: tls.VersionTLS13,
	}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return cav1alpha1.NewCertificateServiceClient(conn)
}

func (h *caHarness) lastPeer() (spiffeid.ID, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.peerID, h.peerErr
}

// withToken is a call context carrying `authorization: Bearer <token>`, or none if token is "".
func withToken(t *testing.T, token string) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	if token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}
