// Package svid is the sidecar's certificate source: it obtains the sidecar's X.509-SVID
// from the control plane's CertificateService (api/ca/v1alpha1) and renews it before it
// expires.
//
// Each request makes a new ECDSA P-256 key, sends a CSR whose only SAN is the sidecar's
// SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>) and authenticates
// with the pod's projected ServiceAccount token (audience trellis-ca), read from its file at
// every request because the kubelet rotates it. The answer is never trusted blindly: the
// chain must verify against the trust bundle in the answer, its leaf must name exactly the
// requested ID and carry the new key, and it must be valid now. Only then does it replace
// the current SVID.
//
// A [Source] is a go-spiffe x509svid.Source and x509bundle.Source. TLS configurations built
// on it (sidecar/mtls, through go-spiffe's tlsconfig) read the current SVID and bundle at
// every handshake, so a renewal never touches an established connection (it keeps the keys
// it negotiated) while the next handshake presents the new certificate.
//
// The connection to the CA is TLS 1.3, verified against the roots in RootCertPath (the
// ConfigMap trellis-ca-root-cert, re-read at every request) and the trust bundle of the last
// answer (so a root rotation announced through the bundle is followed), for the server name
// CAServerName. A new gRPC connection is made for each request: requests are rare (one per
// half lifetime, 12 h by default) and a fresh connection reads the current roots.
package svid

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
)

// Defaults for the zero values of [Options].
const (
	DefaultRenewFraction  = 0.5
	DefaultInitialBackoff = 500 * time.Millisecond
	DefaultMaxBackoff     = 30 * time.Second
	DefaultRequestTimeout = 30 * time.Second
)

// Options configure a [Source]. The key type is fixed: ECDSA P-256.
type Options struct {
	// CAAddr is the control plane's gRPC address, e.g.
	// trellis-controlplane.trellis-system.svc:15012.
	CAAddr string
	// CAServerName is the name the CA's serving certificate must carry, e.g.
	// trellis-controlplane.trellis-system.svc.
	CAServerName string
	// TokenPath is the projected ServiceAccount token (audience trellis-ca); it is re-read at
	// every request.
	TokenPath string
	// RootCertPath is the PEM trust bundle (ConfigMap trellis-ca-root-cert, key
	// root-cert.pem) used to trust the CA's serving certificate, and the trust bundle until
	// the CA sends one. It is re-read at every request.
	RootCertPath string
	// ID is the sidecar's SPIFFE ID, spiffe://<td>/ns/<ns>/sa/<sa>.
	ID spiffeid.ID

	// RenewFraction is how much of a certificate's lifetime passes before it is renewed
	// (0 means [DefaultRenewFraction]); it must be below 1.
	RenewFraction float64
	// TTL is the lifetime to ask for; 0 lets the CA choose (24 h by default).
	TTL time.Duration
	// InitialBackoff and MaxBackoff bound the exponential backoff (with jitter) between
	// failed requests; 0 means [DefaultInitialBackoff] and [DefaultMaxBackoff].
	InitialBackoff, MaxBackoff time.Duration
	// RequestTimeout bounds one request to the CA; 0 means [DefaultRequestTimeout].
	RequestTimeout time.Duration

	// DialOptions are added to the options of every connection to the CA (tests use it to
	// dial through a hook).
	DialOptions []grpc.DialOption
	// Now is the clock (time.Now when nil); it schedules renewals and checks validity.
	Now func() time.Time
	// Logger receives the SVID's events (slog.Default() when nil).
	Logger *slog.Logger
}

// Source holds the sidecar's current X.509-SVID and trust bundle. Its methods are safe for
// concurrent use; the getters never block on the CA.
type Source struct {
	opts  Options
	td    spiffeid.TrustDomain
	now   func() time.Time
	log   *slog.Logger
	sleep func(ctx context.Context, d time.Duration) error // replaced by tests

	cur        atomic.Pointer[current]
	fileBundle atomic.Pointer[x509bundle.Bundle] // RootCertPath, last read successfully
	ready      chan struct{}
	readyOnce  sync.Once
	started    atomic.Bool

	mu          sync.Mutex
	lastErr     error
	lastErrTime time.Time
}

// current is an SVID with its bundle and schedule; never modified once stored.
type current struct {
	svid    *x509svid.SVID
	bundle  *x509bundle.Bundle // from the CA's answer
	renewAt time.Time
}

var (
	_ x509svid.Source   = (*Source)(nil)
	_ x509bundle.Source = (*Source)(nil)
)

// New checks the options and reads the root bundle at RootCertPath. It does not contact the
// CA: [Source.Start] does.
func New(opts Options) (*Source, error) {
	switch {
	case opts.CAAddr == "":
		return nil, errors.New("no CA address: set it to the control plane's gRPC address, e.g. trellis-controlplane.trellis-system.svc:15012")
	case opts.CAServerName == "":
		return nil, errors.New("no CA server name: set it to the name in the control plane's certificate, e.g. trellis-controlplane.trellis-system.svc")
	case opts.TokenPath == "":
		return nil, errors.New("no ServiceAccount token path: mount a projected token for the audience trellis-ca and pass its path")
	case opts.RootCertPath == "":
		return nil, errors.New("no root certificate path: mount the ConfigMap trellis-ca-root-cert and pass the path of root-cert.pem")
	case opts.ID.IsZero():
		return nil, errors.New("no SPIFFE ID: build spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount> from the pod's environment")
	case opts.RenewFraction < 0 || opts.RenewFraction >= 1:
		return nil, fmt.Errorf("renew fraction %v is out of range: use a value above 0 and below 1 (0.5 renews at half the lifetime)", opts.RenewFraction)
	case opts.TTL < 0:
		return nil, fmt.Errorf("TTL %s is negative: use 0 for the CA's default or a positive duration", opts.TTL)
	}
	if opts.RenewFraction == 0 {
		opts.RenewFraction = DefaultRenewFraction
	}
	if opts.InitialBackoff <= 0 {
		opts.InitialBackoff = DefaultInitialBackoff
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	opts.MaxBackoff = max(opts.MaxBackoff, opts.InitialBackoff)
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = DefaultRequestTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Source{
		opts:  opts,
		td:    opts.ID.TrustDomain(),
		now:   opts.Now,
		log:   opts.Logger.With("spiffe_id", opts.ID.String()),
		sleep: sleepCtx,
		ready: make(chan struct{}),
	}
	b, err := s.readRoots()
	if err != nil {
		return nil, err
	}
	s.fileBundle.Store(b)
	return s, nil
}

// Start obtains the first SVID, retrying with capped exponential backoff and jitter while
// the CA cannot be reached or refuses, then renews it when RenewFraction of its lifetime has
// passed. When a renewal fails the current SVID stays in use and the request is retried
// with backoff until it succeeds (past the SVID's expiry too: [Source.GetX509SVID] then
// fails). It blocks until ctx ends and returns nil then, or ctx's error if no SVID was ever
// obtained. It may be called once.
func (s *Source) Start(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("the SVID source is already started")
	}
	failures := 0
	for {
		var wait time.Duration
		if failures > 0 {
			wait = s.backoff(failures)
		} else if c := s.cur.Load(); c != nil {
			// Never sooner than InitialBackoff: a certificate whose life is nearly over
			// when issued (a CA close to its own expiry) must not make a busy loop.
			wait = max(c.renewAt.Sub(s.now()), s.opts.InitialBackoff)
		}
		if wait > 0 {
			if err := s.sleep(ctx, wait); err != nil {
				return s.stopped(ctx)
			}
		}
		if ctx.Err() != nil {
			return s.stopped(ctx)
		}
		err := s.refresh(ctx)
		if err == nil {
			failures = 0
			continue
		}
		if ctx.Err() != nil {
			return s.stopped(ctx)
		}
		failures++
		s.logFailure(err, failures)
	}
}

func (s *Source) stopped(ctx context.Context) error {
	if s.cur.Load() != nil {
		return nil
	}
	return ctx.Err()
}

func (s *Source) logFailure(err error, failures int) {
	c := s.cur.Load()
	switch {
	case c == nil:
		s.log.Warn("could not obtain the sidecar's first certificate; retrying", "attempt", failures, "err", err)
	case !s.now().Before(c.svid.Certificates[0].NotAfter):
		s.log.Error("the sidecar's certificate has expired and could not be renewed: mTLS handshakes fail until the CA answers; retrying",
			"not_after", c.svid.Certificates[0].NotAfter, "attempt", failures, "err", err)
	default:
		s.log.Warn("could not renew the sidecar's certificate; keeping the current one and retrying",
			"not_after", c.svid.Certificates[0].NotAfter, "attempt", failures, "err", err)
	}
}

// backoff is the wait before retry number n (n >= 1): InitialBackoff doubled per failure,
// capped at MaxBackoff, of which a random half is jitter.
func (s *Source) backoff(n int) time.Duration {
	d := s.opts.InitialBackoff
	for i := 1; i < n && d < s.opts.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, s.opts.MaxBackoff)
	half := d / 2
	return half + rand.N(half+1)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// refresh requests a new SVID and, once it is verified, makes it the current one. A failure
// is recorded as the last error and leaves the current SVID in place.
func (s *Source) refresh(ctx context.Context) error {
	got, err := s.request(ctx)
	if err != nil {
		s.setErr(err)
		return err
	}
	s.install(got)
	return nil
}

// install makes a verified SVID current.
func (s *Source) install(got *issued) {
	leaf := got.svid.Certificates[0]
	obtained := s.now()
	c := &current{svid: got.svid, bundle: got.bundle, renewAt: renewAt(leaf, obtained, s.opts.RenewFraction)}
	s.cur.Store(c)
	s.setErr(nil)
	s.readyOnce.Do(func() { close(s.ready) })
	s.log.Info("new certificate", "serial", serialHex(leaf), "not_before", leaf.NotBefore,
		"not_after", leaf.NotAfter, "renew_at", c.renewAt, "bundle_roots", len(got.bundle.X509Authorities()))
}

// renewAt is when RenewFraction of the certificate's life has passed. The life is counted
// from NotBefore, or from when it was obtained if that is later (the CA backdates NotBefore
// for clock skew, and a clock behind the CA's must not make renewal due at once).
func renewAt(leaf *x509.Certificate, obtained time.Time, fraction float64) time.Time {
	start := leaf.NotBefore
	if obtained.After(start) {
		start = obtained
	}
	life := leaf.NotAfter.Sub(start)
	return start.Add(time.Duration(float64(life) * fraction))
}

func (s *Source) setErr(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastErr = err
	if err != nil {
		s.lastErrTime = s.now()
	}
}

// WaitReady blocks until the first SVID is held, or ctx ends.
func (s *Source) WaitReady(ctx context.Context) error {
	select {
	case <-s.ready:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		last := s.lastErr
		s.mu.Unlock()
		if last != nil {
			return fmt.Errorf("no certificate yet for %s (last error: %v): %w", s.opts.ID, last, ctx.Err())
		}
		return fmt.Errorf("no certificate yet for %s: %w", s.opts.ID, ctx.Err())
	}
}

// Ready reports whether an SVID has been obtained (it may have expired since; see
// [Source.Status]).
func (s *Source) Ready() bool { return s.cur.Load() != nil }

// GetX509SVID returns the current SVID (go-spiffe's x509svid.Source; TLS configs call it at
// every handshake). It fails before the first SVID and once the current one has expired.
// The result is shared: do not modify it.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) {
	c := s.cur.Load()
	if c == nil {
		return nil, fmt.Errorf("no certificate for %s yet: the CA at %s has not issued one", s.opts.ID, s.opts.CAAddr)
	}
	if notAfter := c.svid.Certificates[0].NotAfter; !s.now().Before(notAfter) {
		return nil, fmt.Errorf("the certificate for %s expired at %s and could not be renewed: check that the CA at %s is reachable",
			s.opts.ID, notAfter.UTC().Format(time.RFC3339), s.opts.CAAddr)
	}
	return c.svid, nil
}

// GetX509BundleForTrustDomain returns the trust bundle of the sidecar's trust domain (go-spiffe's
// x509bundle.Source): the one in the CA's last answer, or before the first answer the roots
// read from RootCertPath. Any other trust domain is an error. The result is shared: do not
// modify it.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != s.td {
		return nil, fmt.Errorf("no trust bundle for trust domain %q: this sidecar only trusts %q", td, s.td)
	}
	return s.bundle(), nil
}

func (s *Source) bundle() *x509bundle.Bundle {
	if c := s.cur.Load(); c != nil {
		return c.bundle
	}
	return s.fileBundle.Load()
}

// Status describes the current SVID, for the admin /certs page.
type Status struct {
	ID           string    `json:"id"`
	Ready        bool      `json:"ready"`
	SerialNumber string    `json:"serialNumber,omitempty"` // hex
	NotBefore    time.Time `json:"notBefore,omitzero"`
	NotAfter     time.Time `json:"notAfter,omitzero"`
	RenewAt      time.Time `json:"renewAt,omitzero"`
	// LastError is the error of the last request when it failed; "" after a success.
	LastError     string    `json:"lastError,omitempty"`
	LastErrorTime time.Time `json:"lastErrorTime,omitzero"`
	// BundleRoots is how many roots the trust bundle in use holds.
	BundleRoots int `json:"bundleRoots"`
}

// Status returns the state of the SVID.
func (s *Source) Status() Status {
	st := Status{ID: s.opts.ID.String()}
	if b := s.bundle(); b != nil {
		st.BundleRoots = len(b.X509Authorities())
	}
	if c := s.cur.Load(); c != nil {
		leaf := c.svid.Certificates[0]
		st.Ready = true
		st.SerialNumber = serialHex(leaf)
		st.NotBefore, st.NotAfter, st.RenewAt = leaf.NotBefore, leaf.NotAfter, c.renewAt
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastErr != nil {
		st.LastError = s.lastErr.Error()
		st.LastErrorTime = s.lastErrTime
	}
	return st
}

func serialHex(c *x509.Certificate) string { return c.SerialNumber.Text(16) }

// readRoots reads the roots at RootCertPath as a bundle of the sidecar's trust domain.
func (s *Source) readRoots() (*x509bundle.Bundle, error) {
	data, err := os.ReadFile(s.opts.RootCertPath)
	if err != nil {
		return nil, fmt.Errorf("read the CA root certificates: %w: mount the ConfigMap trellis-ca-root-cert (key root-cert.pem) there", err)
	}
	certs, err := parseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("CA root certificates in %s: %w", s.opts.RootCertPath, err)
	}
	return x509bundle.FromX509Authorities(s.td, certs), nil
}
