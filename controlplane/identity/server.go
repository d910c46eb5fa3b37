package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	cav1alpha1 "github.com/trellis-mesh/trellis/api/ca/v1alpha1"
)

// TokenReviewer tells which ServiceAccount a token belongs to. A refused token must yield an
// error wrapping [ErrInvalidToken]; other errors mean the check itself failed (and the caller
// should retry). [KubeTokenReviewer] is the implementation over the Kubernetes API.
type TokenReviewer interface {
	Review(ctx context.Context, token string) (namespace, serviceAccount string, err error)
}

// Observer is told the outcome of every certificate request, for metrics.
type Observer interface {
	// Signed is called after a certificate was issued for the SPIFFE ID id.
	Signed(id string)
	// Refused is called when a request fails; reason is one of the Reason constants.
	Refused(reason string)
}

// Reasons passed to [Observer.Refused]: few and fixed, so they suit a metric label.
const (
	ReasonMissingToken     = "missing_token"
	ReasonInvalidToken     = "invalid_token"
	ReasonReviewFailed     = "token_review_failed"
	ReasonInvalidCSR       = "invalid_csr"
	ReasonIdentityMismatch = "identity_mismatch"
	ReasonSignFailed       = "sign_failed"
)

// NopObserver observes nothing.
type NopObserver struct{}

// Signed does nothing.
func (NopObserver) Signed(string) {}

// Refused does nothing.
func (NopObserver) Refused(string) {}

// Server is the CertificateService: it signs a CSR for the caller's own identity, which it
// learns from the ServiceAccount token in the `authorization: Bearer <token>` metadata.
type Server struct {
	cav1alpha1.UnimplementedCertificateServiceServer
	ca       *Authority
	reviewer TokenReviewer
	observer Observer
}

var _ cav1alpha1.CertificateServiceServer = (*Server)(nil)

// NewServer returns the service. observer may be nil.
func NewServer(ca *Authority, reviewer TokenReviewer, observer Observer) *Server {
	if observer == nil {
		observer = NopObserver{}
	}
	return &Server{ca: ca, reviewer: reviewer, observer: observer}
}

// Register adds the service to a gRPC server.
func (s *Server) Register(g grpc.ServiceRegistrar) {
	cav1alpha1.RegisterCertificateServiceServer(g, s)
}

// CreateCertificate implements CertificateService. It answers Unauthenticated for a missing
// or refused token, Unavailable when the token could not be checked, PermissionDenied for a
// CSR that asks for another identity, InvalidArgument for a malformed or refused CSR.
func (s *Server) CreateCertificate(ctx context.Context, req *cav1alpha1.CreateCertificateRequest) (*cav1alpha1.CreateCertificateResponse, error) {
	token, err := bearerToken(ctx)
	if err != nil {
		s.observer.Refused(ReasonMissingToken)
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	ns, sa, err := s.reviewer.Review(ctx, token)
	switch {
	case errors.Is(err, ErrInvalidToken):
		s.observer.Refused(ReasonInvalidToken)
		return nil, status.Error(codes.Unauthenticated, redact(err.Error(), token))
	case err != nil:
		s.observer.Refused(ReasonReviewFailed)
		return nil, status.Errorf(codes.Unavailable, "could not check the ServiceAccount token, retry later: %s", redact(err.Error(), token))
	}
	id, err := WorkloadID(s.ca.TrustDomain(), ns, sa)
	if err != nil {
		s.observer.Refused(ReasonInvalidToken)
		return nil, status.Errorf(codes.Unauthenticated, "ServiceAccount %s/%s makes no valid SPIFFE ID: %v", ns, sa, err)
	}

	if req.GetValiditySeconds() < 0 {
		s.observer.Refused(ReasonInvalidCSR)
		return nil, status.Errorf(codes.InvalidArgument, "validity_seconds is %d; send 0 for the default or a positive number", req.GetValiditySeconds())
	}
	der, err := DecodeCSRPEM([]byte(req.GetCsrPem()))
	if err != nil {
		s.observer.Refused(ReasonInvalidCSR)
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	csr, err := CheckCSR(der, id)
	switch {
	case errors.Is(err, ErrIdentityMismatch):
		s.observer.Refused(ReasonIdentityMismatch)
		return nil, status.Error(codes.PermissionDenied, err.Error())
	case err != nil:
		s.observer.Refused(ReasonInvalidCSR)
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}

	chain, err := s.ca.Sign(csr, id, s.ttl(req.GetValiditySeconds()))
	if err != nil {
		s.observer.Refused(ReasonSignFailed)
		return nil, status.Errorf(codes.Internal, "sign certificate for %s: %v", id, err)
	}
	resp := &cav1alpha1.CreateCertificateResponse{TrustBundlePem: string(s.ca.TrustBundlePEM())}
	for _, c := range chain {
		resp.CertChainPem = append(resp.CertChainPem, string(EncodeCertificates([]*x509.Certificate{c})))
	}
	s.observer.Signed(id.String())
	return resp, nil
}

// ttl turns the requested validity into a duration without overflowing; the Authority
// applies the default and the maximum.
func (s *Server) ttl(seconds int64) time.Duration {
	if seconds > int64(s.ca.MaxTTL()/time.Second) {
		return s.ca.MaxTTL()
	}
	return time.Duration(seconds) * time.Second
}

// bearerToken returns the token of the single `authorization: Bearer <token>` metadata entry.
func bearerToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	values := md.Get("authorization")
	switch len(values) {
	case 0:
		return "", fmt.Errorf("no ServiceAccount token: send the pod's projected token (audience %q) as `authorization: Bearer <token>` metadata", Audience)
	case 1:
	default:
		return "", errors.New("more than one authorization metadata entry: send exactly one `authorization: Bearer <token>`")
	}
	scheme, token, ok := strings.Cut(strings.TrimSpace(values[0]), " ")
	token = strings.TrimSpace(token)
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", errors.New("the authorization metadata is not of the form `Bearer <token>`")
	}
	return token, nil
}
