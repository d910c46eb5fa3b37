// Package admin serves the sidecar's two HTTP endpoints:
//
//   - the admin API on 127.0.0.1:15000 (loopback only: it shows the configuration and can
//     stop the proxy): /ready, /config_dump, /clusters, /certs, /xds, /drain, /quitquitquit;
//   - the status port :15020 for the kubelet: /healthz/ready, the app's rewritten probes
//     (/app-health/...), and /metrics.
package admin

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
)

// State is what the pages show. Each function returns a JSON-marshalable value; they are
// small interfaces next to this consumer so admin depends on no data-path package.
type State struct {
	// Ready says whether the proxy can serve (certificate held, first configuration
	// received, not draining) and, when not, why.
	Ready func() (bool, string)
	// Config is the configuration in effect, as the proxy sees it.
	Config func() any
	// Clusters lists endpoints with health, ejections, load balancing and breaker state.
	Clusters func() any
	// Certs is the proxy's identity and certificate lifetimes.
	Certs func() any
	// XDS is the state of the xDS stream: versions, nonces, last errors.
	XDS func() any
	// Drain stops accepting and finishes in-flight work; Quit makes the proxy exit (after a
	// drain). Each may be called more than once.
	Drain, Quit func()
}

// Handler returns the admin API mux (serve it on loopback only).
func Handler(s State, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) { ready(w, s) })
	mux.HandleFunc("GET /config_dump", jsonPage(s.Config))
	mux.HandleFunc("GET /clusters", jsonPage(s.Clusters))
	mux.HandleFunc("GET /certs", jsonPage(s.Certs))
	mux.HandleFunc("GET /xds", jsonPage(s.XDS))
	// State-changing endpoints take POST, as Envoy's do, so that a stray GET from a browser
	// or a crawler on the node cannot stop the proxy.
	mux.HandleFunc("POST /drain", once(func() { log.Info("drain requested on the admin port"); s.Drain() }))
	mux.HandleFunc("POST /quitquitquit", once(func() { log.Info("exit requested on the admin port"); s.Quit() }))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, "trellis-proxy admin\n\nGET  /ready /config_dump /clusters /certs /xds\nPOST /drain /quitquitquit\n")
	})
	return mux
}

// StatusHandler returns the mux of the status port: readiness for the kubelet, the app's
// rewritten probes under /app-health/ (see docs/injection.md), and metrics. Nil handlers are
// not served.
func StatusHandler(s State, appHealth, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) { ready(w, s) })
	if appHealth != nil {
		mux.Handle("GET /app-health/", appHealth)
	}
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	return mux
}

func ready(w http.ResponseWriter, s State) {
	ok, why := s.Ready()
	if !ok {
		http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

func jsonPage(get func() any) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		if get == nil {
			http.Error(w, "not available", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(get()); err != nil {
			http.Error(w, "encode: "+err.Error(), http.StatusInternalServerError)
		}
	}
}

// once runs fn the first time and answers every call.
func once(fn func()) http.HandlerFunc {
	var o sync.Once
	return func(w http.ResponseWriter, _ *http.Request) {
		o.Do(func() { go fn() })
		fmt.Fprintln(w, "OK")
	}
}
