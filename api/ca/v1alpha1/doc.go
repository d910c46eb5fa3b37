// Package cav1alpha1 is the gRPC API of the mesh certificate authority
// (trellis.ca.v1alpha1.CertificateService): a sidecar sends a CSR and its projected
// ServiceAccount token (`authorization: Bearer <token>` metadata, audience "trellis-ca") and
// receives an X.509-SVID chain and the trust bundle.
//
// ca.pb.go and ca_grpc.pb.go are generated from ca.proto by hack/gen-proto.sh; do not edit
// them.
package cav1alpha1
