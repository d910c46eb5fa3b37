package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

func TestHandshake(t *testing.T) {
	ca, rogue, foreign := newCA(t, td), newCA(t, td), newCA(t, otherTD)
	bundle := ca.Bundle()
	backend := newSources(svidFrom(t, ca, backendID), bundle)
	cart := newSources(svidFrom(t, ca, cartID), bundle)
	allowBackend := []string{backendID.String()}
	const sni = "backend.shop.svc.cluster.local"

	tests := []struct {
		name      string
		server    *tls.Config
		client    *tls.Config
		refusedBy string // "client", "server" or "" (accepted)
		wantErr   string // in the refusing side's error
		wantALPN  string
	}{
		{
			name:   "a client and a server of the mesh connect",
			server: ServerConfig(backend, td, nil),
			client: ClientConfig(cart, td, allowBackend, nil, sni),
		},
		{
			name:   "a server among several allowed identities is accepted",
			server: ServerConfig(backend, td, nil),
			client: ClientConfig(cart, td, []string{adminID.String(), "not an ID", backendID.String()}, nil, sni),
		},
		{
			name:      "a server whose identity is not allowed is refused",
			server:    ServerConfig(backend, td, nil),
			client:    ClientConfig(cart, td, []string{adminID.String()}, nil, sni),
			refusedBy: "client",
			wantErr:   "server spiffe://cluster.local/ns/shop/sa/backend refused: it is not one of the identities allowed for this upstream: spiffe://cluster.local/ns/shop/sa/admin",
		},
		{
			name:      "a client that allows no identity refuses every server",
			server:    ServerConfig(backend, td, nil),
			client:    ClientConfig(cart, td, nil, nil, sni),
			refusedBy: "client",
			wantErr:   "no server identity is allowed for this upstream",
		},
		{
			name:      "allowed entries that are not SPIFFE IDs never match",
			server:    ServerConfig(backend, td, nil),
			client:    ClientConfig(cart, td, []string{"backend", "backend.shop"}, nil, sni),
			refusedBy: "client",
			wantErr:   "no server identity is allowed for this upstream (ignored entries that are not SPIFFE IDs: backend, backend.shop)",
		},
		{
			name:      "an allowed identity of another trust domain is refused",
			server:    ServerConfig(newSources(svidFrom(t, foreign, foreignID), x509bundle.NewSet(bundle, foreign.Bundle())), otherTD, nil),
			client:    ClientConfig(newSources(svidFrom(t, ca, cartID), x509bundle.NewSet(bundle, foreign.Bundle())), td, []string{foreignID.String()}, nil, sni),
			refusedBy: "client",
			wantErr:   "not in the mesh's trust domain cluster.local",
		},
		{
			name:      "a server certificate from another CA is refused",
			server:    ServerConfig(newSources(svidFrom(t, rogue, backendID), bundle), td, nil),
			client:    ClientConfig(cart, td, allowBackend, nil, sni),
			refusedBy: "client",
			wantErr:   "x509svid: could not verify leaf certificate",
		},
		{
			name:      "a client without a certificate is refused",
			server:    ServerConfig(backend, td, nil),
			client:    tls13(tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeAny())),
			refusedBy: "server",
			wantErr:   "client didn't provide a certificate",
		},
		{
			name:      "a client certificate from another CA is refused",
			server:    ServerConfig(backend, td, nil),
			client:    ClientConfig(newSources(svidFrom(t, rogue, cartID), bundle), td, allowBackend, nil, sni),
			refusedBy: "server",
			wantErr:   "x509svid: could not verify leaf certificate",
		},
		{
			name:      "a client of another trust domain is refused",
			server:    ServerConfig(backend, td, nil),
			client:    ClientConfig(newSources(svidFrom(t, foreign, foreignID), bundle), td, allowBackend, nil, sni),
			refusedBy: "server",
			wantErr:   `no X.509 bundle found for trust domain: "other.example"`,
		},
		{
			name:      "a client that allows only TLS 1.2 is refused",
			server:    ServerConfig(backend, td, nil),
			client:    tls12Only(ClientConfig(cart, td, allowBackend, nil, sni)),
			refusedBy: "server",
			wantErr:   "client offered only unsupported versions",
		},
		{
			name:      "a client without a certificate source refuses every server",
			server:    ServerConfig(backend, td, nil),
			client:    ClientConfig(nil, td, allowBackend, nil, sni),
			refusedBy: "client",
			wantErr:   "no certificate source",
		},
		{
			name:     "h2 is negotiated when both offer it",
			server:   ServerConfig(backend, td, []string{"h2", "http/1.1"}),
			client:   ClientConfig(cart, td, allowBackend, []string{"h2", "http/1.1"}, sni),
			wantALPN: "h2",
		},
		{
			name:     "no protocol is negotiated when the server offers none",
			server:   ServerConfig(backend, td, nil),
			client:   ClientConfig(cart, td, allowBackend, []string{"h2"}, sni),
			wantALPN: "",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := handshake(t, tt.server, tt.client)
			switch tt.refusedBy {
			case "":
				if res.clientErr != nil || res.serverErr != nil {
					t.Fatalf("handshake failed: client %v, server %v", res.clientErr, res.serverErr)
				}
				if got := res.client.Version; got != tls.VersionTLS13 {
					t.Errorf("version = %s, want TLS 1.3", tls.VersionName(got))
				}
				if got := res.client.NegotiatedProtocol; got != tt.wantALPN || res.server.NegotiatedProtocol != tt.wantALPN {
					t.Errorf("ALPN = client %q, server %q, want %q", got, res.server.NegotiatedProtocol, tt.wantALPN)
				}
				if got := res.server.ServerName; got != sni {
					t.Errorf("SNI = %q, want %q", got, sni)
				}
				if got, err := PeerID(res.client); err != nil || got != backendID.String() {
					t.Errorf("client's PeerID = %q, %v, want %s", got, err, backendID)
				}
				if got, err := PeerID(res.server); err != nil || got != cartID.String() {
					t.Errorf("server's PeerID = %q, %v, want %s", got, err, cartID)
				}
			case "client":
				if res.clientErr == nil || !strings.Contains(res.clientErr.Error(), tt.wantErr) {
					t.Errorf("client error = %v, want one containing %q", res.clientErr, tt.wantErr)
				}
				if res.serverErr == nil {
					t.Error("the server completed a connection the client refused")
				}
			case "server":
				if res.serverErr == nil || !strings.Contains(res.serverErr.Error(), tt.wantErr) {
					t.Errorf("server error = %v, want one containing %q", res.serverErr, tt.wantErr)
				}
				if res.clientErr == nil {
					t.Error("the client received data from a server that refused it")
				}
			}
		})
	}
}

func tls13(c *tls.Config) *tls.Config {
	c.MinVersion = tls.VersionTLS13
	return c
}

func tls12Only(c *tls.Config) *tls.Config {
	c = c.Clone()
	c.MinVersion, c.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	return c
}

func TestANewSVIDIsPresentedAtTheNextHandshake(t *testing.T) {
	ca := newCA(t, td)
	bundle := ca.Bundle()
	first, second := svidFrom(t, ca, backendID), svidFrom(t, ca, backendID)
	backend := newSources(first, bundle)
	cart := newSources(svidFrom(t, ca, cartID), bundle)
	server := ServerConfig(backend, td, nil)
	client := ClientConfig(cart, td, []string{backendID.String()}, nil, "")

	tests := []struct {
		name   string
		rotate bool
		want   *x509.Certificate
	}{
		{"the current SVID is presented", false, first.Certificates[0]},
		{"after a renewal the same cached configs present the new SVID", true, second.Certificates[0]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.rotate {
				backend.svid.Store(second)
			}
			if ServerConfig(backend, td, nil) != server {
				t.Fatal("the server config was rebuilt")
			}
			res := handshake(t, server, client)
			if res.clientErr != nil || res.serverErr != nil {
				t.Fatalf("handshake failed: client %v, server %v", res.clientErr, res.serverErr)
			}
			if got := res.client.PeerCertificates[0]; !got.Equal(tt.want) {
				t.Errorf("server presented serial %s, want %s", got.SerialNumber, tt.want.SerialNumber)
			}
		})
	}
}

func TestPeerID(t *testing.T) {
	ca := newCA(t, td)
	leaf := svidFrom(t, ca, cartID).Certificates[0]
	other := svidFrom(t, ca, backendID).Certificates[0]
	noURI := &x509.Certificate{}
	twoURIs := &x509.Certificate{URIs: []*url.URL{cartID.URL(), backendID.URL()}}

	tests := []struct {
		name    string
		cs      tls.ConnectionState
		want    string
		wantErr string
	}{
		{"the peer's leaf gives its ID", tls.ConnectionState{HandshakeComplete: true, PeerCertificates: []*x509.Certificate{leaf}}, cartID.String(), ""},
		{"a verified chain's leaf is preferred", tls.ConnectionState{HandshakeComplete: true,
			PeerCertificates: []*x509.Certificate{other}, VerifiedChains: [][]*x509.Certificate{{leaf}}}, cartID.String(), ""},
		{"an unfinished handshake has no peer", tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}, "", "not complete"},
		{"a peer without a certificate has no ID", tls.ConnectionState{HandshakeComplete: true}, "", "presented no certificate"},
		{"a certificate without a URI SAN has no ID", tls.ConnectionState{HandshakeComplete: true, PeerCertificates: []*x509.Certificate{noURI}}, "", "no URI SAN"},
		{"a certificate with two URI SANs has no ID", tls.ConnectionState{HandshakeComplete: true, PeerCertificates: []*x509.Certificate{twoURIs}}, "", "more than one URI SAN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := PeerID(tt.cs)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("PeerID = %q, %v, want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("PeerID = %q, %v, want %q", got, err, tt.want)
			}
		})
	}
}

// uncomparable is a Sources that cannot be a map key.
type uncomparable struct {
	*sources
	_ []int
}

func TestConfigsAreCached(t *testing.T) {
	ca := newCA(t, td)
	src := newSources(svidFrom(t, ca, cartID), ca.Bundle())
	src2 := newSources(svidFrom(t, ca, cartID), ca.Bundle())
	a, b := backendID.String(), adminID.String()
	alpn := []string{"h2", "http/1.1"}

	tests := []struct {
		name     string
		first    func() *tls.Config
		second   func() *tls.Config
		wantSame bool
	}{
		{"the same client inputs return the same config",
			func() *tls.Config { return ClientConfig(src, td, []string{a, b}, alpn, "x") },
			func() *tls.Config { return ClientConfig(src, td, []string{a, b}, []string{"h2", "http/1.1"}, "x") }, true},
		{"allowed identities in another order or repeated return the same config",
			func() *tls.Config { return ClientConfig(src, td, []string{a, b}, alpn, "x") },
			func() *tls.Config { return ClientConfig(src, td, []string{b, a, b}, alpn, "x") }, true},
		{"another allowed set returns another config",
			func() *tls.Config { return ClientConfig(src, td, []string{a, b}, alpn, "x") },
			func() *tls.Config { return ClientConfig(src, td, []string{a}, alpn, "x") }, false},
		{"another SNI returns another config",
			func() *tls.Config { return ClientConfig(src, td, []string{a}, alpn, "x") },
			func() *tls.Config { return ClientConfig(src, td, []string{a}, alpn, "y") }, false},
		{"ALPN in another order returns another config",
			func() *tls.Config { return ClientConfig(src, td, []string{a}, alpn, "x") },
			func() *tls.Config { return ClientConfig(src, td, []string{a}, []string{"http/1.1", "h2"}, "x") }, false},
		{"another source returns another config",
			func() *tls.Config { return ClientConfig(src, td, []string{a}, alpn, "x") },
			func() *tls.Config { return ClientConfig(src2, td, []string{a}, alpn, "x") }, false},
		{"another trust domain returns another config",
			func() *tls.Config { return ClientConfig(src, td, []string{a}, alpn, "x") },
			func() *tls.Config { return ClientConfig(src, otherTD, []string{a}, alpn, "x") }, false},
		{"the same server inputs return the same config",
			func() *tls.Config { return ServerConfig(src, td, alpn) },
			func() *tls.Config { return ServerConfig(src, td, []string{"h2", "http/1.1"}) }, true},
		{"other server ALPN returns another config",
			func() *tls.Config { return ServerConfig(src, td, alpn) },
			func() *tls.Config { return ServerConfig(src, td, nil) }, false},
		{"a source that cannot be a map key gets a config built at each call",
			func() *tls.Config { return ClientConfig(uncomparable{sources: src}, td, []string{a}, alpn, "x") },
			func() *tls.Config { return ClientConfig(uncomparable{sources: src}, td, []string{a}, alpn, "x") }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			first, second := tt.first(), tt.second()
			if (first == second) != tt.wantSame {
				t.Errorf("same config = %v, want %v", first == second, tt.wantSame)
			}
			for _, c := range []*tls.Config{first, second} {
				if c.MinVersion != tls.VersionTLS13 {
					t.Errorf("MinVersion = %s, want TLS 1.3", tls.VersionName(c.MinVersion))
				}
			}
		})
	}
}

func TestACachedClientConfigIsCheap(t *testing.T) {
	ca := newCA(t, td)
	src := newSources(svidFrom(t, ca, cartID), ca.Bundle())
	allowed := []string{backendID.String(), adminID.String()}
	alpn := []string{"h2", "http/1.1"}
	want := ClientConfig(src, td, allowed, alpn, "backend.shop.svc.cluster.local")
	allocs := testing.AllocsPerRun(100, func() {
		if ClientConfig(src, td, allowed, alpn, "backend.shop.svc.cluster.local") != want {
			t.Fatal("the config was rebuilt")
		}
	})
	// Parsing the allowed IDs and building the cache key; nothing of the TLS config.
	if allocs > 16 {
		t.Errorf("a cached ClientConfig costs %v allocations, want at most 16", allocs)
	}
}

func TestConfigsAreSafeForConcurrentUse(t *testing.T) {
	ca := newCA(t, td)
	src := newSources(svidFrom(t, ca, cartID), ca.Bundle())
	want := ClientConfig(src, td, []string{backendID.String()}, nil, "concurrent")
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			for j := range 100 {
				if got := ClientConfig(src, td, []string{backendID.String()}, nil, "concurrent"); got != want {
					t.Errorf("goroutine %d call %d got another config", i, j)
					return
				}
				_ = ServerConfig(src, td, []string{fmt.Sprint(j % 4)})
			}
		})
	}
	wg.Wait()
}

func TestTheCacheIsBounded(t *testing.T) {
	ca := newCA(t, td)
	src := newSources(svidFrom(t, ca, cartID), ca.Bundle())
	for i := range maxCached + 10 {
		ClientConfig(src, td, []string{backendID.String()}, nil, fmt.Sprintf("sni-%d", i))
	}
	cache.RLock()
	n := len(cache.m)
	cache.RUnlock()
	if n > maxCached {
		t.Errorf("the cache holds %d configs, want at most %d", n, maxCached)
	}
}

func BenchmarkClientConfigCached(b *testing.B) {
	ca := newCA(b, td)
	src := newSources(svidFrom(b, ca, cartID), ca.Bundle())
	allowed := []string{backendID.String(), adminID.String()}
	alpn := []string{"h2", "http/1.1"}
	for b.Loop() {
		ClientConfig(src, td, allowed, alpn, "backend.shop.svc.cluster.local")
	}
}
