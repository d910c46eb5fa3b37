package identity

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Errors CheckCSR wraps, so that callers can tell a malformed request from one for
// somebody else's identity.
var (
	// ErrInvalidCSR: the CSR is malformed, badly signed, has a refused key or SANs other
	// than one URI.
	ErrInvalidCSR = errors.New("invalid certificate signing request")
	// ErrIdentityMismatch: the CSR asks for an identity the caller does not have.
	ErrIdentityMismatch = errors.New("certificate signing request for another identity")
)

// Key sizes CheckCSR accepts for RSA.
const (
	MinRSABits = 2048
	MaxRSABits = 8192
)

// maxCSRPEM bounds the CSR a caller may send; a real one is well under 2 KiB.
const maxCSRPEM = 64 << 10

// DecodeCSRPEM returns the DER of the single CERTIFICATE REQUEST block in data.
func DecodeCSRPEM(data []byte) ([]byte, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: no CSR: send a PEM \"CERTIFICATE REQUEST\" block", ErrInvalidCSR)
	}
	if len(data) > maxCSRPEM {
		return nil, fmt.Errorf("%w: the CSR is %d bytes, more than the %d allowed", ErrInvalidCSR, len(data), maxCSRPEM)
	}
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%w: the CSR is not PEM: send a PEM \"CERTIFICATE REQUEST\" block", ErrInvalidCSR)
	}
	if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("%w: the PEM block is a %q, not a \"CERTIFICATE REQUEST\"", ErrInvalidCSR, block.Type)
	}
	if len(strings.TrimSpace(string(rest))) > 0 {
		return nil, fmt.Errorf("%w: more follows the CSR's PEM block: send exactly one CSR", ErrInvalidCSR)
	}
	return block.Bytes, nil
}

// CheckCSR parses a DER PKCS#10 request and applies the CA's policy: the signature verifies
// with the request's own key; the key is ECDSA P-256 or P-384, Ed25519, or RSA of 2048 to
// 8192 bits; there is exactly one URI SAN and it is want; there are no DNS, IP or email
// SANs. A refusal wraps [ErrIdentityMismatch] when the request names an identity other than
// want, and [ErrInvalidCSR] otherwise, and says exactly what was wrong.
func CheckCSR(der []byte, want spiffeid.ID) (*x509.CertificateRequest, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: not a PKCS#10 request: %w", ErrInvalidCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: its signature does not verify with its own public key (was it altered after signing?): %w", ErrInvalidCSR, err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, err
	}
	switch {
	case len(csr.DNSNames) > 0:
		return nil, fmt.Errorf("%w: it has DNS SANs %q; a workload certificate carries only its SPIFFE ID: remove them", ErrInvalidCSR, csr.DNSNames)
	case len(csr.IPAddresses) > 0:
		return nil, fmt.Errorf("%w: it has IP SANs %v; a workload certificate carries only its SPIFFE ID: remove them", ErrInvalidCSR, csr.IPAddresses)
	case len(csr.EmailAddresses) > 0:
		return nil, fmt.Errorf("%w: it has email SANs %q; a workload certificate carries only its SPIFFE ID: remove them", ErrInvalidCSR, csr.EmailAddresses)
	case len(csr.URIs) == 0:
		return nil, fmt.Errorf("%w: it has no URI SAN; it must have exactly one, the caller's SPIFFE ID %s", ErrInvalidCSR, want)
	}
	for _, u := range csr.URIs {
		got, err := spiffeid.FromURI(u)
		if err != nil {
			return nil, fmt.Errorf("%w: URI SAN %q is not a SPIFFE ID: %w", ErrInvalidCSR, u, err)
		}
		if got != want {
			return nil, fmt.Errorf("%w: it asks for %s but the caller is %s", ErrIdentityMismatch, got, want)
		}
	}
	if len(csr.URIs) > 1 {
		return nil, fmt.Errorf("%w: it has %d URI SANs; it must have exactly one, %s", ErrInvalidCSR, len(csr.URIs), want)
	}
	return csr, nil
}

// checkPublicKey refuses keys too weak, or of kinds the mesh does not use.
func checkPublicKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("%w: its ECDSA key is on curve %s; use P-256 or P-384", ErrInvalidCSR, k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < MinRSABits || bits > MaxRSABits {
			return fmt.Errorf("%w: its RSA key has %d bits; use %d to %d bits, or an ECDSA P-256 key", ErrInvalidCSR, bits, MinRSABits, MaxRSABits)
		}
	default:
		return fmt.Errorf("%w: its public key type %T is not allowed; use ECDSA P-256 or P-384, Ed25519, or RSA of at least %d bits", ErrInvalidCSR, pub, MinRSABits)
	}
	return nil
}
