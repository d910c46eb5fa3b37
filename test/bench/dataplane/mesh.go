package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/trellis-mesh/trellis/controlplane/identity"
	"github.com/trellis-mesh/trellis/controlplane/meshstate"
	"github.com/trellis-mesh/trellis/controlplane/xds"
)

// The mesh as the control plane sees it: namespace shop (STRICT mTLS), a client pod
// (ServiceAccount frontend) and a server pod (backend) behind two Services.
const (
	meshNS    = "shop"
	clientSA  = "frontend"
	serverSA  = "backend"
	serverDNS = "backend.shop.svc" // what the peers' clients verify (they cannot check a SPIFFE ID)
	clientDNS = "frontend.shop.svc"
)

// tokens plays the TokenReview: each pod's token names its ServiceAccount.
type tokens map[string][2]string

func (t tokens) Review(_ context.Context, token string) (string, string, error) {
	if v, ok := t[token]; ok {
		return v[0], v[1], nil
	}
	return "", "", identity.ErrInvalidToken
}

// controlPlane is the real xDS server and CA, in this process, on the bridge address.
type controlPlane struct {
	addr string
	ca   *identity.Authority
}

// startControlPlane serves the mesh: Service backend (VIP httpVIP:80, port name http,
// target appHTTP) and Service grpc (VIP grpcVIP:appGRPC, appProtocol grpc), both served by
// the server pod.
func startControlPlane(clean *cleanup, host netip.Addr, clientIP, serverIP, httpVIP, grpcVIP netip.Addr) (*controlPlane, error) {
	store := meshstate.NewStore()
	store.SetMesh(meshstate.Mesh{TrustDomain: "cluster.local", MTLSMode: meshstate.MTLSStrict})
	store.SetNamespace(&meshstate.Namespace{Name: meshNS, Injected: true})
	clientKey, serverKey := meshstate.Key{Namespace: meshNS, Name: "client-1"}, meshstate.Key{Namespace: meshNS, Name: "server-1"}
	store.SetPod(&meshstate.Pod{Key: clientKey, ServiceAccount: clientSA, IPs: []netip.Addr{clientIP}, Injected: true})
	store.SetPod(&meshstate.Pod{Key: serverKey, ServiceAccount: serverSA, IPs: []netip.Addr{serverIP}, Injected: true,
		Ports: []meshstate.ContainerPort{{Port: appHTTP}, {Port: appGRPC}}})
	for _, svc := range []struct {
		name, portName string
		vip            netip.Addr
		port, target   uint32
		proto          meshstate.Protocol
	}{
		{"backend", "http", httpVIP, 80, appHTTP, meshstate.ProtocolHTTP},
		{"grpc", "grpc", grpcVIP, appGRPC, appGRPC, meshstate.ProtocolGRPC},
	} {
		key := meshstate.Key{Namespace: meshNS, Name: svc.name}
		store.SetService(&meshstate.Service{Key: key, ClusterIPs: []netip.Addr{svc.vip},
			Ports: []meshstate.ServicePort{{Name: svc.portName, Port: svc.port, TargetPort: fmt.Sprint(svc.target), Protocol: svc.proto}}})
		store.SetEndpointSlice(&meshstate.EndpointSlice{Key: meshstate.Key{Namespace: meshNS, Name: svc.name + "-x"}, Service: key,
			Ports:     []meshstate.EndpointPort{{Name: svc.portName, Port: svc.target}},
			Endpoints: []meshstate.EndpointSliceEntry{{Addresses: []netip.Addr{serverIP}, Ready: true, Pod: &serverKey}}})
	}

	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	ca, err := identity.NewSelfSigned(td)
	if err != nil {
		return nil, err
	}
	cpID := spiffeid.RequireFromString("spiffe://cluster.local/ns/trellis-system/sa/trellis-controlplane")
	rotator, err := identity.NewCertRotator(func() (*tls.Certificate, error) {
		return ca.ServingCertificate(cpID, []string{"trellis-controlplane.trellis-system.svc"}, time.Hour)
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	server := xds.New(store, xds.Options{PeerIdentity: identity.PeerIdentity, Debounce: 20 * time.Millisecond})
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(identity.ServerTLSConfig(ca, rotator))))
	server.Register(g)
	identity.NewServer(ca, tokens{"token-" + clientSA: {meshNS, clientSA}, "token-" + serverSA: {meshNS, serverSA}}, identity.NopObserver{}).Register(g)
	lis, err := net.Listen("tcp", netip.AddrPortFrom(host, 15012).String())
	if err != nil {
		cancel()
		return nil, fmt.Errorf("control plane: %w", err)
	}
	go func() { _ = g.Serve(lis) }()
	go func() { _ = server.Run(ctx) }()
	server.Rebuild()
	clean.add(func() { cancel(); g.Stop() }, "")
	return &controlPlane{addr: lis.Addr().String(), ca: ca}, nil
}

// certFiles are the PEM files the nginx and HAProxy pairs use: signed by the mesh CA that
// signs the sidecars' SVIDs, ECDSA P-256 keys, the same SPIFFE IDs as the sidecars (plus a
// DNS name, which is what nginx and HAProxy verify).
type certFiles struct {
	CA                                  string
	ClientCert, ClientKey, ClientBundle string // bundle: cert and key in one file (HAProxy)
	ServerCert, ServerKey, ServerBundle string
}

func writeCerts(dir string, ca *identity.Authority) (certFiles, error) {
	f := certFiles{CA: filepath.Join(dir, "ca.pem")}
	if err := os.WriteFile(f.CA, ca.TrustBundlePEM(), 0o644); err != nil {
		return f, err
	}
	for _, side := range []struct {
		sa, dns             string
		cert, key, bundle   *string
		certName, keyName   string
		bundleName, idLabel string
	}{
		{clientSA, clientDNS, &f.ClientCert, &f.ClientKey, &f.ClientBundle, "client.pem", "client.key", "client-bundle.pem", "client"},
		{serverSA, serverDNS, &f.ServerCert, &f.ServerKey, &f.ServerBundle, "server.pem", "server.key", "server-bundle.pem", "server"},
	} {
		id, err := identity.WorkloadID(ca.TrustDomain(), meshNS, side.sa)
		if err != nil {
			return f, err
		}
		c, err := ca.ServingCertificate(id, []string{side.dns}, 24*time.Hour)
		if err != nil {
			return f, fmt.Errorf("certificate for the %s side: %w", side.idLabel, err)
		}
		var certPEM []byte
		for _, der := range c.Certificate {
			certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
		if err != nil {
			return f, err
		}
		keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
		*side.cert, *side.key, *side.bundle = filepath.Join(dir, side.certName), filepath.Join(dir, side.keyName), filepath.Join(dir, side.bundleName)
		for path, b := range map[string][]byte{*side.cert: certPEM, *side.key: keyPEM, *side.bundle: append(append([]byte{}, certPEM...), keyPEM...)} {
			if err := os.WriteFile(path, b, 0o644); err != nil {
				return f, err
			}
		}
	}
	return f, nil
}
