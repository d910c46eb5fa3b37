package identity

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// ErrNoPeerCertificate: the gRPC peer did not present a verified client certificate.
var ErrNoPeerCertificate = errors.New("no verified client certificate")

// WorkloadID is the SPIFFE ID of a ServiceAccount: spiffe://<td>/ns/<namespace>/sa/<name>.
func WorkloadID(td spiffeid.TrustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
}

// ParseWorkloadID returns the namespace and ServiceAccount of a workload SPIFFE ID
// (spiffe://<td>/ns/<namespace>/sa/<name>).
func ParseWorkloadID(id spiffeid.ID) (namespace, serviceAccount string, err error) {
	segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(segs) != 4 || segs[0] != "ns" || segs[2] != "sa" {
		return "", "", fmt.Errorf("SPIFFE ID %s is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>", id)
	}
	return segs[1], segs[3], nil
}

// PeerIdentity returns the SPIFFE ID in the verified client certificate of the gRPC call or
// stream whose context is ctx. It fails, wrapping [ErrNoPeerCertificate], when the
// connection is not TLS or the client presented no certificate (as a sidecar does on its
// first call, to the CertificateService). The xDS server uses it to decide which node a
// stream may ask for.
func PeerIdentity(ctx context.Context) (spiffeid.ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, fmt.Errorf("%w: no gRPC peer in the context", ErrNoPeerCertificate)
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return spiffeid.ID{}, fmt.Errorf("%w: the connection from %s is not TLS", ErrNoPeerCertificate, p.Addr)
	}
	chains := info.State.VerifiedChains
	if len(chains) == 0 || len(chains[0]) == 0 {
		return spiffeid.ID{}, fmt.Errorf("%w: %s presented none: connect with the sidecar's mesh certificate", ErrNoPeerCertificate, p.Addr)
	}
	id, err := x509svid.IDFromCert(chains[0][0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("client certificate from %s: %w", p.Addr, err)
	}
	return id, nil
}

// ServerTLSConfig is the TLS configuration of the control plane's gRPC port: it serves the
// rotator's current certificate, and verifies a client certificate IF one is given against
// the CA's roots, as an X.509-SVID of the mesh's trust domain. A client without a
// certificate may connect (it needs one from the CertificateService first); services that
// require one check [PeerIdentity].
func ServerTLSConfig(ca *Authority, rotator *CertRotator) *tls.Config {
	bundle := ca.Bundle()
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: rotator.GetCertificate,
		ClientAuth:     tls.VerifyClientCertIfGiven,
		ClientCAs:      certPool(ca.roots),
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return nil
			}
			if _, _, err := x509svid.Verify(cs.PeerCertificates, bundle); err != nil {
				return fmt.Errorf("client certificate is not an X.509-SVID of trust domain %s: %w", ca.TrustDomain(), err)
			}
			return nil
		},
	}
}

// CertRotator keeps a current certificate and replaces it when 2/3 of its life (from the
// moment it was obtained) has passed. [CertRotator.GetCertificate] plugs into tls.Config;
// [CertRotator.Start] renews in the background (it is a controller-runtime Runnable).
type CertRotator struct {
	issue   func() (*tls.Certificate, error)
	now     func() time.Time
	onError func(error)

	mu       sync.Mutex
	cert     *tls.Certificate
	obtained time.Time
}

// RotatorOption configures a [CertRotator].
type RotatorOption func(*CertRotator)

// RotatorClock makes the rotator read the time from now (for tests).
func RotatorClock(now func() time.Time) RotatorOption {
	return func(r *CertRotator) {
		if now != nil {
			r.now = now
		}
	}
}

// RotatorErrorHandler is called with each failed background renewal (the rotator keeps
// serving the current certificate and retries).
func RotatorErrorHandler(f func(error)) RotatorOption {
	return func(r *CertRotator) { r.onError = f }
}

// NewCertRotator obtains a first certificate from issue (which must set Leaf) and returns a
// rotator serving it. For the control plane's port:
//
//	identity.NewCertRotator(func() (*tls.Certificate, error) {
//		return ca.ServingCertificate(id, dnsNames, ttl)
//	})
func NewCertRotator(issue func() (*tls.Certificate, error), opts ...RotatorOption) (*CertRotator, error) {
	r := &CertRotator{issue: issue, now: time.Now, onError: func(error) {}}
	for _, o := range opts {
		o(r)
	}
	if err := r.renew(); err != nil {
		return nil, err
	}
	return r, nil
}

// Current is the certificate being served.
func (r *CertRotator) Current() *tls.Certificate {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cert
}

// RenewAt is when the current certificate is due for renewal.
func (r *CertRotator) RenewAt() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.renewAtLocked()
}

func (r *CertRotator) renewAtLocked() time.Time {
	life := r.cert.Leaf.NotAfter.Sub(r.obtained)
	return r.obtained.Add(life * 2 / 3)
}

// GetCertificate returns the current certificate, renewing it first when it is due. If
// renewal fails, the current certificate is served while it is still valid.
func (r *CertRotator) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if _, err := r.RenewIfDue(); err != nil {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.now().Before(r.cert.Leaf.NotAfter) {
			return r.cert, nil
		}
		return nil, err
	}
	return r.Current(), nil
}

// RenewIfDue renews the certificate when 2/3 of its life has passed, and says whether it did.
func (r *CertRotator) RenewIfDue() (bool, error) {
	r.mu.Lock()
	due := !r.now().Before(r.renewAtLocked())
	r.mu.Unlock()
	if !due {
		return false, nil
	}
	return true, r.renew()
}

func (r *CertRotator) renew() error {
	cert, err := r.issue()
	if err != nil {
		return fmt.Errorf("renew serving certificate: %w", err)
	}
	if cert == nil || cert.Leaf == nil {
		return errors.New("renew serving certificate: the issuer returned no parsed leaf certificate")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cert, r.obtained = cert, r.now()
	return nil
}

// NeedLeaderElection is false: every control-plane replica serves, so every replica renews
// its own certificate (controller-runtime's LeaderElectionRunnable).
func (r *CertRotator) NeedLeaderElection() bool { return false }

// Start renews the certificate in the background until ctx ends; failures go to the
// [RotatorErrorHandler] and are retried with backoff. It always returns nil.
func (r *CertRotator) Start(ctx context.Context) error {
	const minWait, maxRetry = time.Second, 30 * time.Second
	retry := time.Duration(0)
	for {
		wait := max(r.RenewAt().Sub(r.now()), minWait)
		if retry > 0 {
			wait = retry
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		if _, err := r.RenewIfDue(); err != nil {
			r.onError(err)
			retry = min(max(2*retry, minWait), maxRetry)
			continue
		}
		retry = 0
	}
}
