package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/trellis-mesh/trellis/examples/apps/demo/wire"
)

// MaxBytes caps GET /bytes?n=.
const MaxBytes = 64 << 20

// HTTP is the demo's HTTP server. With Backend set it is the frontend: GET / also calls
// the backend once and returns both answers.
type HTTP struct {
	Common
	// Backend is the URL the frontend calls for every GET /; "" for a plain server.
	Backend string
	// BackendH2C calls the backend over HTTP/2 without TLS (prior knowledge).
	BackendH2C bool
	// BackendTimeout bounds the call to the backend (default 5 s).
	BackendTimeout time.Duration

	backend *http.Client
}

// Handler returns the routes:
//
//	GET /healthz        200 "ok"
//	GET /bytes?n=N      N bytes (default 1024, at most MaxBytes)
//	GET /headers        the request headers as a JSON object
//	ANY /status/{code}  that status, with the reply JSON as body
//	ANY /delay/{d}      the reply JSON after waiting d (a Go duration: 250ms, 2s)
//	ANY /...            the reply JSON (wire.Reply); the frontend adds its backend's
//
// Every response carries x-demo-version.
func (s *HTTP) Handler() http.Handler {
	if s.Backend != "" && s.backend == nil {
		timeout := s.BackendTimeout
		if timeout <= 0 {
			timeout = 5 * time.Second
		}
		s.backend = &http.Client{Transport: NewTransport(s.BackendH2C, 64), Timeout: timeout}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /bytes", s.serveBytes)
	mux.HandleFunc("GET /headers", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, r.Header)
	})
	mux.HandleFunc("/status/{code}", s.serveStatus)
	mux.HandleFunc("/delay/{d}", s.serveDelay)
	mux.HandleFunc("/", s.serveReply)
	return s.withVersion(mux)
}

// NewTransport is an HTTP client transport for HTTP/1.1, or with h2c for HTTP/2 without TLS
// (prior knowledge, as the sidecar and gRPC speak it).
func NewTransport(h2c bool, maxConns int) *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = maxConns
	tr.MaxIdleConnsPerHost = maxConns
	tr.Proxy = nil
	if h2c {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr.Protocols = &p
	}
	return tr
}

// Serve serves HTTP/1.1 and h2c on ln until ctx ends, then drains for up to Drain.
func (s *HTTP) Serve(ctx context.Context, ln net.Listener) error {
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           s.Handler(),
		Protocols:         &protocols,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	log := s.logger()
	log.Info("serving HTTP/1.1 and h2c", "addr", ln.Addr().String(), "service", s.Info.Service, "version", s.Info.Version, "backend", s.Backend)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve HTTP on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	dctx, cancel := s.drainContext(ctx)
	defer cancel()
	err := srv.Shutdown(dctx)
	if s.backend != nil {
		s.backend.CloseIdleConnections()
	}
	if err != nil {
		srv.Close()
		return fmt.Errorf("drain HTTP on %s: %w", ln.Addr(), err)
	}
	log.Info("stopped", "addr", ln.Addr().String())
	return nil
}

func (s *HTTP) withVersion(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(wire.VersionHeader, s.Info.Version)
		if !s.Verbose {
			next.ServeHTTP(w, r)
			return
		}
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		s.logger().Info("request", "method", r.Method, "path", r.URL.Path, "proto", r.Proto, "status", rec.status,
			"peer", r.Header.Get(wire.PeerIdentityHeader), "remote", r.RemoteAddr, "duration", time.Since(start).String())
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (s *HTTP) reply(r *http.Request) wire.Reply {
	return wire.Reply{
		Service:      s.Info.Service,
		Version:      s.Info.Version,
		Pod:          s.Info.Pod,
		Namespace:    s.Info.Namespace,
		Protocol:     r.Proto,
		PeerIdentity: r.Header.Get(wire.PeerIdentityHeader),
		Host:         r.Host,
		Path:         r.URL.Path,
	}
}

func (s *HTTP) serveReply(w http.ResponseWriter, r *http.Request) {
	rep := s.reply(r)
	status := http.StatusOK
	if s.Backend != "" {
		status = s.callBackend(r, &rep)
	}
	writeJSON(w, status, rep)
}

// propagated are the request headers the frontend passes on to its backend, so that a
// trace started by the caller continues through the chain.
var propagated = []string{"traceparent", "tracestate", "baggage", "x-request-id"}

// callBackend calls the backend once and fills the backend fields of rep. It returns the
// frontend's status: 200 if the backend answered 2xx, else 502.
func (s *HTTP) callBackend(r *http.Request, rep *wire.Reply) int {
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, s.Backend, nil)
	if err != nil {
		rep.BackendError = fmt.Sprintf("--backend %q: %v", s.Backend, err)
		return http.StatusBadGateway
	}
	for _, h := range propagated {
		if v := r.Header.Values(h); len(v) > 0 {
			req.Header[http.CanonicalHeaderKey(h)] = v
		}
	}
	resp, err := s.backend.Do(req)
	if err != nil {
		rep.BackendError = err.Error()
		return http.StatusBadGateway
	}
	defer resp.Body.Close()
	rep.BackendStatus = resp.StatusCode
	rep.BackendUpstreamIdentity = resp.Header.Get(wire.UpstreamIdentityHeader)
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		rep.BackendError = fmt.Sprintf("read the backend's answer: %v", err)
		return http.StatusBadGateway
	}
	var b wire.Reply
	if json.Unmarshal(body, &b) == nil && b.Service != "" {
		rep.Backend = &b
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		msg := fmt.Sprintf("the backend answered %d", resp.StatusCode)
		if e := resp.Header.Get(wire.TrellisErrorHeader); e != "" {
			msg += " (" + wire.TrellisErrorHeader + ": " + e + ")"
		}
		rep.BackendError = msg
		return http.StatusBadGateway
	}
	return http.StatusOK
}

func (s *HTTP) serveBytes(w http.ResponseWriter, r *http.Request) {
	n := 1024
	if q := r.URL.Query().Get("n"); q != "" {
		v, err := strconv.Atoi(q)
		if err != nil || v < 0 || v > MaxBytes {
			http.Error(w, fmt.Sprintf("n=%q: want a number of bytes from 0 to %d", q, MaxBytes), http.StatusBadRequest)
			return
		}
		n = v
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(n))
	chunk := make([]byte, 32<<10)
	for i := range chunk {
		chunk[i] = 'a' + byte(i%26)
	}
	for n > 0 {
		k := min(n, len(chunk))
		if _, err := w.Write(chunk[:k]); err != nil {
			return
		}
		n -= k
	}
}

func (s *HTTP) serveStatus(w http.ResponseWriter, r *http.Request) {
	code, err := strconv.Atoi(r.PathValue("code"))
	if err != nil || code < 200 || code > 599 {
		http.Error(w, fmt.Sprintf("/status/%s: want a status code from 200 to 599", r.PathValue("code")), http.StatusBadRequest)
		return
	}
	if code == http.StatusNoContent || code == http.StatusNotModified {
		w.WriteHeader(code)
		return
	}
	writeJSON(w, code, s.reply(r))
}

func (s *HTTP) serveDelay(w http.ResponseWriter, r *http.Request) {
	d, err := time.ParseDuration(r.PathValue("d"))
	if err != nil || d < 0 || d > 5*time.Minute {
		http.Error(w, fmt.Sprintf("/delay/%s: want a duration from 0 to 5m, e.g. 250ms or 2s", r.PathValue("d")), http.StatusBadRequest)
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
		return
	}
	writeJSON(w, http.StatusOK, s.reply(r))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encode the reply: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}
