// Package proxy is the sidecar's data path: the outbound capture listener (15001) and the
// inbound one (15006). It reads the immutable configuration of sidecar/config (docs/xds.md
// says what each field means) and imports nothing from Kubernetes or the control plane.
//
// # Outbound
//
// A connection's original destination selects the listener (a Service VIP:port); an
// unknown destination, or any destination before the first configuration, is passed
// through untouched. By the listener's protocol:
//
//   - TCP: a backend cluster is picked by weight for the connection, an endpoint by the
//     cluster's balancer (ejected endpoints skipped, up to 3 endpoints tried on connect
//     failures), the connection is counted against max_connections, and the bytes are
//     spliced both ways with half-close and the route's idle timeout.
//   - HTTP, HTTP/2: the client is served by an HTTP server (HTTP/1.1 with keep-alive,
//     chunked bodies and upgrades, and h2c with prior knowledge) and each request is routed
//     on its own: weighted backend, endpoint, circuit breakers (requests; pending until a
//     connection is assigned; connections), outlier reports and balancer latency per try,
//     retries, timeouts. A reverse proxy streams both ways (gRPC bidirectional streaming),
//     forwards trailers, and splices upgraded connections after the 101.
//   - Detect: the first bytes are sniffed (sniff package) until SniffTimeout. An HTTP/1.1
//     request line or the HTTP/2 preface takes the HTTP path; anything else, or silence, the
//     TCP path at once, with the bytes read so far replayed in front of the stream, so that
//     a server-first protocol (the server speaks first) only waits SniffTimeout.
//
// # Connections between sidecars
//
// Endpoints whose MTLS flag is set are reached over mTLS (mtls.ClientConfig: the cluster's
// allowed SPIFFE IDs, ALPN and SNI). Declared HTTP ports offer ALPN h2 and http/1.1. An
// HTTP/2 request (gRPC, h2c clients) travels over HTTP/2, as does every request to a
// cluster whose upstream is HTTP/2 or that offers h2 only: the requests of all clients of
// the sidecar to one endpoint share one connection (h2Pool dials once per endpoint and
// opens another connection only when the peer's stream limit is reached). An HTTP/1.x
// request travels over HTTP/1.1 on a pool of keep-alive connections, one request at a time
// each: Go's HTTP/2 costs more CPU and latency per request on both sidecars than HTTP/1.1
// does (docs/performance.md), and the peer speaks HTTP/1.1 to the app of a declared HTTP
// port anyway. The peer's inbound side speaks to its app what the port declares. Upgrades
// (WebSocket) take an HTTP/1.1 connection, as HTTP/2 cannot carry them. Endpoints outside the
// mesh are reached in plaintext with the cluster's Upstream protocol: HTTP/1.1, HTTP/2
// (h2c) or the client's own version.
//
// Pools are per cluster and per endpoint: net/http's Transport for HTTP/1.1 (keyed by the
// endpoint address), h2Pool for HTTP/2. The TLS handshake happens in the pool's dialer, so
// that the breaker counts connections, the connect timeout covers the handshake and a peer
// that negotiates the wrong protocol is refused. max_requests_per_connection retires a
// connection once it carried that many requests. Pools survive configuration changes; the
// idle connections of a cluster are closed when endpoints leave it or its TLS settings
// change, and idle connections close after the cluster's idle timeout (1h by default).
//
// # Retries and timeouts
//
// The route's Timeout bounds the whole request, retries and the response body included;
// grpc-timeout bounds it too; the per-try timeout bounds each try until response headers
// arrive (a timed-out try counts as a reset, as in Envoy). A try is retried when the
// route's retry_on matches its outcome, NumRetries allows, the route's budget allows, the
// request is not an upgrade and its body can be replayed: the body is streamed to the first
// try (never delayed) while up to MaxRetryBuffer bytes are kept; a longer body is not
// retried. A response is retried only on its headers: once the client has received a byte
// it is never retried. A retry prefers an endpoint not tried yet.
//
// # Local replies
//
// The proxy answers with x-trellis-error saying why: 503 "no healthy endpoint in
// <cluster>", 503 "overflow: ...", 503 "upstream connect error: ..." (after retries), 503
// "upstream reset before response: ...", 504 "upstream request timeout", 504 "upstream
// per-try timeout", 408 "stream idle timeout", 403 "RBAC: access denied" (inbound). A gRPC
// request gets a trailers-only gRPC response instead (HTTP 200, grpc-status UNAVAILABLE,
// DEADLINE_EXCEEDED or PERMISSION_DENIED, grpc-message the same text). Request headers are
// bounded (MaxHeaderBytes) and must arrive within ReadHeaderTimeout.
//
// # Inbound
//
// The first bytes (up to InboundSniffTimeout, 1s: a silent client is plaintext) tell a TLS
// ClientHello from plaintext. TLS is terminated with mtls.ServerConfig (ALPN h2 and
// http/1.1 on HTTP ports, none otherwise: an undeclared port over mTLS is TCP) and the
// peer's SPIFFE ID is its identity; plaintext is refused unless the port accepts it
// (PERMISSIVE), and has no identity. HTTP ports check the authorization policy per request
// (the newest policy, even on an old connection) and forward to the app with
// x-trellis-peer-identity set to the verified identity (any value the caller sent is
// removed first); TCP ports check it once per connection. Unlisted ports use Passthrough,
// whose zero Target means the original destination.
//
// # Runtime state and configuration changes
//
// Per cluster name the proxy keeps a balancer, a circuit breaker, an outlier detector and
// the pools; per route name the weighted picker and the retry budget. A new configuration
// updates them in place (a balancer is replaced only when the algorithm changes, a budget
// only when its settings change), so latency estimates, ejections, counters and pooled
// connections survive configuration swaps. A request in flight keeps the state it started
// with; a cluster that left the configuration finishes its requests and closes its idle
// connections.
//
// # Shutdown
//
// Shutdown stops accepting, lets requests (including upgraded connections) and TCP
// connections finish until its context ends, then closes what is left.
package proxy
