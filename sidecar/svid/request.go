package svid

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	cav1alpha1 "github.com/trellis-mesh/trellis/api/ca/v1alpha1"
)

// maxTokenBytes bounds the token file; a projected token is about 1 KiB.
const maxTokenBytes = 64 << 10

// issued is a verified answer of the CA.
type issued struct {
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

// request asks the CA for a new SVID and verifies the answer.
func (s *Source) request(ctx context.Context) (*issued, error) {
	token, err := s.readToken()
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate the certificate key: %w", err)
	}
	csr, err := makeCSR(key, s.opts.ID)
	if err != nil {
		return nil, err
	}

	conn, err := grpc.NewClient(s.opts.CAAddr, append([]grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(s.caTLSConfig())),
	}, s.opts.DialOptions...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to the CA at %s: %w", s.opts.CAAddr, err)
	}
	defer func() { _ = conn.Close() }()

	ctx, cancel := context.WithTimeout(ctx, s.opts.RequestTimeout)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	resp, err := cav1alpha1.NewCertificateServiceClient(conn).CreateCertificate(ctx, &cav1alpha1.CreateCertificateRequest{
		CsrPem:          string(csr),
		ValiditySeconds: ttlSeconds(s.opts.TTL),
	})
	if err != nil {
		return nil, s.explain(err)
	}
	return s.verify(resp, key)
}

// ttlSeconds is ttl in whole seconds, rounded up; 0 asks for the CA's default.
func ttlSeconds(ttl time.Duration) int64 {
	secs := int64(ttl / time.Second)
	if ttl%time.Second != 0 {
		secs++
	}
	return secs
}

// readToken reads the projected ServiceAccount token; the kubelet rewrites the file when it
// rotates the token, so it is read at every request.
func (s *Source) readToken() (string, error) {
	f, err := os.Open(s.opts.TokenPath)
	if err != nil {
		return "", fmt.Errorf("read the ServiceAccount token: %w: mount a projected token for the audience trellis-ca there", err)
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, maxTokenBytes+1))
	if err != nil {
		return "", fmt.Errorf("read the ServiceAccount token %s: %w", s.opts.TokenPath, err)
	}
	if len(data) > maxTokenBytes {
		return "", fmt.Errorf("the ServiceAccount token file %s is larger than %d bytes: it is not a token", s.opts.TokenPath, maxTokenBytes)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("the ServiceAccount token file %s is empty: mount a projected token for the audience trellis-ca there", s.opts.TokenPath)
	}
	return token, nil
}

// caTLSConfig trusts the roots at RootCertPath (re-read now; the last good read if it
// fails) and the trust bundle of the CA's last answer, for the name CAServerName.
func (s *Source) caTLSConfig() *tls.Config {
	pool := x509.NewCertPool()
	if b, err := s.readRoots(); err == nil {
		s.fileBundle.Store(b)
	} else {
		s.log.Warn("could not re-read the CA roots; using the last ones read", "err", err)
	}
	for _, c := range s.fileBundle.Load().X509Authorities() {
		pool.AddCert(c)
	}
	if c := s.cur.Load(); c != nil {
		for _, r := range c.bundle.X509Authorities() {
			pool.AddCert(r)
		}
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    pool,
		ServerName: s.opts.CAServerName,
	}
}

// explain turns a failed call into an error that says what to do.
func (s *Source) explain(err error) error {
	switch status.Code(err) {
	case codes.Unauthenticated:
		return fmt.Errorf("the CA at %s refused the ServiceAccount token in %s: %w: mount a projected token for the audience trellis-ca",
			s.opts.CAAddr, s.opts.TokenPath, err)
	case codes.PermissionDenied:
		return fmt.Errorf("the CA at %s refused to sign %s: %w: the SPIFFE ID must name the pod's own namespace and ServiceAccount",
			s.opts.CAAddr, s.opts.ID, err)
	case codes.Unavailable, codes.DeadlineExceeded:
		return fmt.Errorf("the CA at %s is unreachable: %w", s.opts.CAAddr, err)
	default:
		return fmt.Errorf("request a certificate from the CA at %s: %w", s.opts.CAAddr, err)
	}
}

// verify accepts the CA's answer only if it is an X.509-SVID for exactly the requested ID
// and the key just generated, that chains to the trust bundle of the answer and is valid
// now.
func (s *Source) verify(resp *cav1alpha1.CreateCertificateResponse, key *ecdsa.PrivateKey) (*issued, error) {
	refuse := func(format string, args ...any) error {
		return fmt.Errorf("refusing the CA's answer: "+format, args...)
	}
	entries := resp.GetCertChainPem()
	if len(entries) == 0 {
		return nil, refuse("it holds no certificate")
	}
	var chain []*x509.Certificate
	var der []byte
	for i, p := range entries {
		certs, err := parseCertificates([]byte(p))
		if err != nil {
			return nil, refuse("chain entry %d: %v", i+1, err)
		}
		if len(certs) != 1 {
			return nil, refuse("chain entry %d holds %d certificates; each entry must hold one", i+1, len(certs))
		}
		chain = append(chain, certs[0])
		der = append(der, certs[0].Raw...)
	}
	id, err := x509svid.IDFromCert(chain[0])
	if err != nil {
		return nil, refuse("the certificate has no single SPIFFE ID: %v", err)
	}
	if id != s.opts.ID {
		return nil, refuse("the certificate is for %s but this sidecar is %s", id, s.opts.ID)
	}
	if !publicKeysEqual(chain[0].PublicKey, key.Public()) {
		return nil, refuse("the certificate is not for the key this sidecar sent")
	}
	roots, err := parseCertificates([]byte(resp.GetTrustBundlePem()))
	if err != nil {
		return nil, refuse("trust bundle: %v", err)
	}
	bundle := x509bundle.FromX509Authorities(s.td, roots)

	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode the certificate key: %w", err)
	}
	sv, err := x509svid.ParseRaw(der, pkcs8)
	if err != nil {
		return nil, refuse("not a valid X.509-SVID: %v", err)
	}
	if _, _, err := x509svid.Verify(sv.Certificates, bundle, x509svid.WithTime(s.now())); err != nil {
		return nil, refuse("the certificate does not verify against the trust bundle sent with it, now: %v", err)
	}
	return &issued{svid: sv, bundle: bundle}, nil
}

// makeCSR is a PEM PKCS#10 request whose only SAN is id.
func makeCSR(key crypto.Signer, id spiffeid.ID) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		URIs: []*url.URL{id.URL()},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("create the certificate signing request for %s: %w", id, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// parseCertificates reads every CERTIFICATE block of a PEM document; it refuses a document
// with none, other kinds of blocks, and text after the last block.
func parseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("found a PEM block of type %q where certificates were expected", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, errors.New("text that is not a PEM certificate follows the certificates")
	}
	return certs, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}
