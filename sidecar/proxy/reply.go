package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// proxyError is the reverse proxy's error handler: it turns a failed request into the
// proxy's own response (see errorStatus).
func (p *Proxy) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	st := stateFrom(r.Context())
	status, msg := errorStatus(r.Context(), err)
	if status == 0 { // the client went away: nobody to answer
		if st != nil {
			st.mu.Lock()
			st.status = 0
			st.mu.Unlock()
		}
		return
	}
	p.log.Debug("request failed", "path", r.URL.Path, "status", status, "error", err)
	p.localReply(w, r, st, status, msg)
}

// errorStatus maps why a request failed to the status the client gets and the
// x-trellis-error that says why; status 0 means the client is gone.
func errorStatus(ctx context.Context, err error) (int, string) {
	var ne *noEndpointError
	var oe *overflowError
	var ce *connectError
	cause := context.Cause(ctx)
	switch {
	case errors.As(err, &ne):
		return http.StatusServiceUnavailable, ne.Error()
	case errors.As(err, &oe):
		return http.StatusServiceUnavailable, oe.Error()
	case errors.Is(cause, errRouteTimeout), errors.Is(err, errRouteTimeout):
		return http.StatusGatewayTimeout, errRouteTimeout.Error()
	case errors.Is(cause, errGRPCTimeout), errors.Is(err, errGRPCTimeout):
		return http.StatusGatewayTimeout, errGRPCTimeout.Error()
	case errors.Is(cause, errStreamIdle), errors.Is(err, errStreamIdle):
		return http.StatusRequestTimeout, errStreamIdle.Error()
	case deadlineReached(ctx):
		// The upstream received the same deadline (grpc-timeout is forwarded) and gave up a
		// moment before our own timer fired: that is a timeout, not an upstream failure.
		return http.StatusGatewayTimeout, "deadline exceeded while the upstream was answering: " + err.Error()
	case ctx.Err() != nil:
		return 0, ""
	case errors.Is(err, errPerTryTimeout):
		return http.StatusGatewayTimeout, errPerTryTimeout.Error()
	case errors.As(err, &ce):
		return http.StatusServiceUnavailable, "upstream connect error: " + ce.Error()
	}
	return http.StatusServiceUnavailable, "upstream reset before response: " + err.Error()
}

// deadlineSlack is how close to its deadline a request must be for an upstream reset to be
// read as the deadline's doing (timers on the two sides never fire at the same instant).
const deadlineSlack = 50 * time.Millisecond

// deadlineReached reports whether ctx's deadline has passed or is about to.
func deadlineReached(ctx context.Context) bool {
	dl, ok := ctx.Deadline()
	return ok && time.Until(dl) < deadlineSlack
}

// localReply answers a request on the proxy's behalf with x-trellis-error: msg. A gRPC
// request gets a trailers-only gRPC response (HTTP 200, grpc-status mapped from status) so
// that its client sees a gRPC error rather than a transport error.
func (p *Proxy) localReply(w http.ResponseWriter, r *http.Request, st *reqState, status int, msg string) {
	msg = headerSafe(msg)
	if st != nil {
		st.mu.Lock()
		st.status, st.localErr = status, msg
		st.mu.Unlock()
	}
	h := w.Header()
	for k := range h { // a failed upstream response may have left some
		delete(h, k)
	}
	h.Set(errorHeader, msg)
	if isGRPC(r) {
		code := grpcCodeForStatus(status)
		h.Set("Content-Type", "application/grpc")
		h.Set(grpcStatusHeader, strconv.Itoa(code))
		h.Set(grpcMessageHeader, encodeGRPCMessage(msg))
		w.WriteHeader(http.StatusOK)
		if st != nil {
			st.mu.Lock()
			st.grpcStatus = code
			st.mu.Unlock()
		}
		return
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	io.WriteString(w, msg+"\n") //nolint:errcheck // the client may be gone
}

func isGRPC(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// grpcCodeForStatus maps the proxy's HTTP statuses to gRPC codes.
func grpcCodeForStatus(status int) int {
	switch status {
	case http.StatusForbidden:
		return 7 // PERMISSION_DENIED
	case http.StatusGatewayTimeout, http.StatusRequestTimeout:
		return 4 // DEADLINE_EXCEEDED
	case http.StatusServiceUnavailable, http.StatusBadGateway, http.StatusTooManyRequests:
		return 14 // UNAVAILABLE
	}
	return 2 // UNKNOWN
}

// encodeGRPCMessage percent-encodes as the gRPC spec asks for grpc-message.
func encodeGRPCMessage(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c <= 0x7e && c != '%' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// headerSafe makes s a valid header value: no control characters, bounded length.
func headerSafe(s string) string {
	const max = 512
	b := []byte(s)
	if len(b) > max {
		b = b[:max]
	}
	for i, c := range b {
		if c < 0x20 || c == 0x7f {
			b[i] = ' '
		}
	}
	return string(b)
}

// parseGRPCTimeout parses a grpc-timeout header: at most 8 digits and a unit (H, M, S, m,
// u, n).
func parseGRPCTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	var unit time.Duration
	switch v[len(v)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	if n > int64(1<<62)/int64(unit) {
		return 1 << 62, true
	}
	return time.Duration(n) * unit, true
}

// observeRequest reports a finished request to the Observer.
func (p *Proxy) observeRequest(dir Direction, r *http.Request, st *reqState, source string) {
	st.mu.Lock()
	info := RequestInfo{
		Direction:           dir,
		Listener:            st.listener,
		Cluster:             st.cluster,
		SourceIdentity:      source,
		DestinationIdentity: st.destID,
		Endpoint:            st.endpoint,
		Method:              r.Method,
		Proto:               r.Proto,
		Status:              st.status,
		GRPCStatus:          st.grpcStatus,
		Retries:             st.retries,
		Duration:            time.Since(st.start),
		LocalError:          st.localErr,
	}
	st.mu.Unlock()
	p.obs.RequestDone(info)
}
