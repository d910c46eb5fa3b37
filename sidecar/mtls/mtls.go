// Package mtls builds the TLS configurations of sidecar-to-sidecar traffic from the
// sidecar's certificate source (sidecar/svid), through go-spiffe's tlsconfig: the current
// X.509-SVID and trust bundle are read from the source at every handshake, so a renewed
// certificate is presented by the next handshake while established connections keep the
// keys they negotiated.
//
// Both sides require TLS 1.3 and an X.509-SVID that chains to the trust bundle of the
// mesh's trust domain. A client additionally requires the server's SPIFFE ID to be one of
// the identities allowed for the upstream (fail closed: none allowed refuses every server).
// A server accepts any client of the trust domain: which caller may do what is decided per
// request by the authorization policy, from [PeerID].
//
// Configurations are cached: the proxy calls [ClientConfig] for every upstream connection,
// and a repeated call with the same source and inputs returns the same *tls.Config without
// building anything (allowed identities in any order count as the same set): a cache hit
// costs well under a microsecond and a few small allocations (BenchmarkClientConfigCached),
// against a whole configuration and closures on a miss. The returned
// configurations are shared and must not be modified; Clone one to customise it.
package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Sources supplies the sidecar's own SVID and the trust bundle; *svid.Source is one.
type Sources interface {
	x509svid.Source
	x509bundle.Source
}

// ClientConfig is the TLS configuration to dial an upstream sidecar: it presents the
// source's SVID, sends sni and offers alpn, and accepts the server only if its X.509-SVID
// chains to the source's bundle for td and its SPIFFE ID is in trust domain td and is one
// of allowed. Entries of allowed that are not SPIFFE IDs never match; an empty allowed
// (or one with no valid ID) makes every handshake fail. A nil src makes every handshake
// fail too.
//
// The result is cached per (src, td, set of allowed, alpn, sni): repeated calls with the
// same inputs return the same *tls.Config. Do not modify it.
func ClientConfig(src Sources, td spiffeid.TrustDomain, allowed []string, alpn []string, sni string) *tls.Config {
	set := canonicalSet(allowed)
	key := cacheKey{kind: clientKind, td: td, allowed: joinKey(set), alpn: joinKey(alpn), sni: sni}
	return cached(src, key, func(src Sources) *tls.Config {
		cfg := &tls.Config{
			MinVersion: tls.VersionTLS13,
			NextProtos: slices.Clone(alpn),
			ServerName: sni,
		}
		tlsconfig.HookMTLSClientConfig(cfg, src, src, authorizeServer(td, set))
		return cfg
	})
}

// ServerConfig is the TLS configuration of the sidecar's inbound mTLS listener: it presents
// the source's SVID, offers alpn, and requires a client X.509-SVID that chains to the
// source's bundle for td, of any identity in td. Session tickets are off, so that every
// connection is a full handshake that checks the client's certificate against the current
// bundle. A nil src makes every handshake fail.
//
// The result is cached per (src, td, alpn). Do not modify it.
func ServerConfig(src Sources, td spiffeid.TrustDomain, alpn []string) *tls.Config {
	key := cacheKey{kind: serverKind, td: td, alpn: joinKey(alpn)}
	return cached(src, key, func(src Sources) *tls.Config {
		cfg := &tls.Config{
			MinVersion:             tls.VersionTLS13,
			NextProtos:             slices.Clone(alpn),
			SessionTicketsDisabled: true,
		}
		tlsconfig.HookMTLSServerConfig(cfg, src, src, authorizeClient(td))
		return cfg
	})
}

// PeerID returns the SPIFFE ID in the peer's leaf certificate of a completed handshake. It
// is the verified identity for connections made with [ClientConfig] or [ServerConfig],
// which refuse the handshake unless the peer's X.509-SVID verifies (go-spiffe verifies in
// the handshake, so cs.VerifiedChains is empty and the leaf is cs.PeerCertificates[0]); do
// not use it on connections made with other configurations.
func PeerID(cs tls.ConnectionState) (string, error) {
	if !cs.HandshakeComplete {
		return "", errors.New("the TLS handshake is not complete: no verified peer yet")
	}
	var leaf *x509.Certificate
	switch {
	case len(cs.VerifiedChains) > 0 && len(cs.VerifiedChains[0]) > 0:
		leaf = cs.VerifiedChains[0][0]
	case len(cs.PeerCertificates) > 0:
		leaf = cs.PeerCertificates[0]
	default:
		return "", errors.New("the peer presented no certificate")
	}
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return "", fmt.Errorf("the peer's certificate has no SPIFFE ID: %w", err)
	}
	return id.String(), nil
}

// allowedSet is the canonical form of a list of allowed identities: the valid IDs sorted
// and without duplicates, and the entries that are not SPIFFE IDs.
type allowedSet struct {
	ids     []spiffeid.ID
	invalid []string
}

func canonicalSet(allowed []string) allowedSet {
	var set allowedSet
	for _, a := range allowed {
		id, err := spiffeid.FromString(a)
		if err != nil {
			set.invalid = append(set.invalid, a)
			continue
		}
		set.ids = append(set.ids, id)
	}
	slices.SortFunc(set.ids, func(a, b spiffeid.ID) int { return strings.Compare(a.String(), b.String()) })
	set.ids = slices.Compact(set.ids)
	slices.Sort(set.invalid)
	set.invalid = slices.Compact(set.invalid)
	return set
}

func joinKey(set any) string {
	var b strings.Builder
	add := func(s string) { // length-prefixed: unambiguous whatever the strings hold
		b.WriteString(strconv.Itoa(len(s)))
		b.WriteByte(':')
		b.WriteString(s)
	}
	switch v := set.(type) {
	case allowedSet:
		for _, id := range v.ids {
			add(id.String())
		}
		b.WriteByte('|')
		for _, s := range v.invalid {
			add(s)
		}
	case []string:
		for _, s := range v {
			add(s)
		}
	}
	return b.String()
}

// authorizeServer accepts a server identity in td that is one of set.
func authorizeServer(td spiffeid.TrustDomain, set allowedSet) tlsconfig.Authorizer {
	allowed := make(map[spiffeid.ID]struct{}, len(set.ids))
	for _, id := range set.ids {
		allowed[id] = struct{}{}
	}
	ignored := ""
	if len(set.invalid) > 0 {
		ignored = fmt.Sprintf(" (ignored entries that are not SPIFFE IDs: %s)", describe(set.invalid))
	}
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		switch {
		case len(allowed) == 0:
			return fmt.Errorf("server %s refused: no server identity is allowed for this upstream%s, so every connection is refused", id, ignored)
		case !id.MemberOf(td):
			return fmt.Errorf("server %s refused: it is not in the mesh's trust domain %s", id, td)
		}
		if _, ok := allowed[id]; !ok {
			names := make([]string, len(set.ids))
			for i, a := range set.ids {
				names[i] = a.String()
			}
			return fmt.Errorf("server %s refused: it is not one of the identities allowed for this upstream: %s%s", id, describe(names), ignored)
		}
		return nil
	}
}

// authorizeClient accepts any client identity in td.
func authorizeClient(td spiffeid.TrustDomain) tlsconfig.Authorizer {
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		if !id.MemberOf(td) {
			return fmt.Errorf("client %s refused: it is not in the mesh's trust domain %s", id, td)
		}
		return nil
	}
}

// describe lists at most a few names, for error messages.
func describe(names []string) string {
	const show = 5
	if len(names) <= show {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:show], ", "), len(names)-show)
}

// noSources stands in for a nil source: every handshake fails.
type noSources struct{}

var errNoSource = errors.New("no certificate source: the sidecar's SVID source is not configured")

func (noSources) GetX509SVID() (*x509svid.SVID, error) { return nil, errNoSource }

func (noSources) GetX509BundleForTrustDomain(spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return nil, errNoSource
}

// The cache of built configurations. A configuration is read-only and reads the source at
// each handshake, so one per distinct input serves every connection. The cache is cleared
// when it exceeds maxCached entries, which bounds it when allowed sets keep changing.
const maxCached = 4096

const (
	clientKind = iota + 1
	serverKind
)

type cacheKey struct {
	kind    int
	src     Sources
	td      spiffeid.TrustDomain
	allowed string
	alpn    string
	sni     string
}

var cache = struct {
	sync.RWMutex
	m map[cacheKey]*tls.Config
}{m: make(map[cacheKey]*tls.Config)}

// cached returns the configuration for key, building it with build on a miss. A source
// whose value cannot be a map key (a struct holding a slice, say) is not cached.
func cached(src Sources, key cacheKey, build func(Sources) *tls.Config) *tls.Config {
	if src == nil || isNilPointer(src) {
		src = noSources{}
	}
	if !reflect.ValueOf(src).Comparable() {
		return build(src)
	}
	key.src = src
	cache.RLock()
	cfg, ok := cache.m[key]
	cache.RUnlock()
	if ok {
		return cfg
	}
	cache.Lock()
	defer cache.Unlock()
	if cfg, ok := cache.m[key]; ok {
		return cfg
	}
	if len(cache.m) >= maxCached {
		clear(cache.m)
	}
	cfg = build(src)
	cache.m[key] = cfg
	return cfg
}

func isNilPointer(src Sources) bool {
	v := reflect.ValueOf(src)
	return v.Kind() == reflect.Pointer && v.IsNil()
}
