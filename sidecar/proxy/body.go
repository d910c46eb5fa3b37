package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

var errBodyDetached = errors.New("request body handed to a newer try")

// replayBody lets a request body be sent again on a retry without delaying the first try:
// every try reads through a view that streams from the client and records what it read, up
// to limit bytes. A later try's view replays the record, then reads on from the client.
// Once more than limit bytes were read the record is dropped and the body can no longer be
// replayed (the request is then not retried).
type replayBody struct {
	mu       sync.Mutex
	cond     *sync.Cond
	src      io.ReadCloser
	limit    int
	buf      []byte
	total    int64 // bytes read from src
	overflow bool
	reading  bool // a view is in src.Read
	srcErr   error
	cur      *bodyView
}

func newReplayBody(src io.ReadCloser, limit int) *replayBody {
	b := &replayBody{src: src, limit: limit}
	b.cond = sync.NewCond(&b.mu)
	return b
}

// view returns the body for a new try and detaches the previous try's view.
func (b *replayBody) view() io.ReadCloser {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cur != nil {
		b.cur.detached = true
	}
	b.cur = &bodyView{b: b}
	return b.cur
}

// rewindable reports whether a new view can replay everything read so far.
func (b *replayBody) rewindable() bool {
	if b == nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.overflow
}

type bodyView struct {
	b        *replayBody
	off      int64
	detached bool // under b.mu
}

func (v *bodyView) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	b := v.b
	b.mu.Lock()
	for b.reading && !v.detached {
		b.cond.Wait() // another (detached) view is reading: its bytes are recorded for us
	}
	switch {
	case v.detached:
		b.mu.Unlock()
		return 0, errBodyDetached
	case v.off < b.total && b.overflow:
		b.mu.Unlock()
		return 0, errBodyDetached // bytes were lost to an older try
	case v.off < b.total:
		n := copy(p, b.buf[v.off:])
		v.off += int64(n)
		b.mu.Unlock()
		return n, nil
	case b.srcErr != nil:
		err := b.srcErr
		b.mu.Unlock()
		return 0, err
	}
	b.reading = true
	b.mu.Unlock()

	n, err := b.src.Read(p)

	b.mu.Lock()
	b.reading = false
	b.cond.Broadcast()
	if n > 0 {
		b.total += int64(n)
		if !b.overflow {
			if len(b.buf)+n <= b.limit {
				b.buf = append(b.buf, p[:n]...)
			} else {
				b.overflow, b.buf = true, nil
			}
		}
		v.off += int64(n)
	}
	if err != nil {
		b.srcErr = err
	}
	b.mu.Unlock()
	return n, err
}

// Close detaches the view; the client's body is closed by the server.
func (v *bodyView) Close() error {
	v.b.mu.Lock()
	v.detached = true
	v.b.cond.Broadcast()
	v.b.mu.Unlock()
	return nil
}

// idleWatch calls fire once nothing touched it for idle.
type idleWatch struct {
	idle    time.Duration
	fire    func()
	last    atomic.Int64
	mu      sync.Mutex
	t       *time.Timer
	stopped bool
}

func newIdleWatch(idle time.Duration, fire func()) *idleWatch {
	w := &idleWatch{idle: idle, fire: fire}
	w.touch()
	w.mu.Lock()
	w.t = time.AfterFunc(idle, w.check)
	w.mu.Unlock()
	return w
}

func (w *idleWatch) touch() { w.last.Store(time.Now().UnixNano()) }

func (w *idleWatch) check() {
	since := time.Since(time.Unix(0, w.last.Load()))
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return
	}
	if since >= w.idle {
		w.stopped = true
		go w.fire()
		return
	}
	w.t.Reset(w.idle - since)
}

func (w *idleWatch) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	w.t.Stop()
}

// watchIdle ends a request's context (cause errStreamIdle) when neither its body nor its
// response moved for idle.
func watchIdle(ctx context.Context, w http.ResponseWriter, r *http.Request, idle time.Duration) (context.Context, http.ResponseWriter, *http.Request, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	iw := newIdleWatch(idle, func() { cancel(errStreamIdle) })
	r = r.WithContext(ctx)
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &idleBody{ReadCloser: r.Body, w: iw}
	}
	return ctx, &idleWriter{ResponseWriter: w, w: iw}, r, func() {
		iw.stop()
		cancel(nil)
	}
}

type idleBody struct {
	io.ReadCloser
	w *idleWatch
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.w.touch()
	}
	return n, err
}

type idleWriter struct {
	http.ResponseWriter
	w *idleWatch
}

func (w *idleWriter) Write(p []byte) (int, error) {
	w.w.touch()
	n, err := w.ResponseWriter.Write(p)
	w.w.touch()
	return n, err
}

func (w *idleWriter) WriteHeader(code int) {
	w.w.touch()
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach Flush, Hijack and full duplex.
func (w *idleWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
