// Package server holds the demo application's servers: HTTP (HTTP/1.1 and h2c on one port),
// the frontend that calls a backend, gRPC demo.Echo with health, and a server-first TCP line
// protocol. Each serves a listener it is given until its context ends, then drains.
package server

import (
	"context"
	"log/slog"
	"time"
)

// Info is who a server says it is in every answer.
type Info struct {
	Service   string
	Version   string
	Pod       string
	Namespace string
}

// Common are the settings every server shares.
type Common struct {
	Info Info
	// Log receives start, stop and errors; with Verbose, also one line per request.
	Log     *slog.Logger
	Verbose bool
	// Drain is how long in-flight requests and connections get after the context ends.
	Drain time.Duration
}

func (c Common) logger() *slog.Logger {
	if c.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Log
}

func (c Common) drain() time.Duration {
	if c.Drain <= 0 {
		return 10 * time.Second
	}
	return c.Drain
}

// drainContext is a context for the shutdown that follows the end of ctx: ctx's values,
// none of its cancellation, and the drain deadline.
func (c Common) drainContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), c.drain())
}
