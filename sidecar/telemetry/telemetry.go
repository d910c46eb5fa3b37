// Package telemetry exports the sidecar's metrics through OpenTelemetry, for Prometheus on
// the status port (:15020/metrics). It is the data path's proxy.Observer.
//
// Today it exports protocol detection (how often sniffing decided each protocol, how often
// it timed out into TCP, and how long it took), which the data path needs operators to see:
// a server-first protocol on an undeclared port shows up here as timeouts. The golden
// signals per source and destination workload (requests, latency, TCP bytes) are the
// telemetry step's; RequestDone and ConnDone receive them already and record nothing yet.
package telemetry

import (
	"context"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/trellis-mesh/trellis/sidecar/proxy"
)

// Telemetry records the data path's events.
type Telemetry struct {
	handler        http.Handler
	detections     metric.Int64Counter
	detectDuration metric.Float64Histogram
}

// New creates the instruments on a registry of the sidecar's own (not the process-global
// one), and the handler that serves it.
func New() (*Telemetry, error) {
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo())
	if err != nil {
		return nil, fmt.Errorf("metrics exporter: %w", err)
	}
	meter := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter)).Meter("trellis.dev/proxy")
	t := &Telemetry{handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{})}
	if t.detections, err = meter.Int64Counter("trellis_proxy_protocol_detections",
		metric.WithDescription("Protocol detections on undeclared ports, by direction, the protocol decided, and whether the client stayed silent until the timeout (then TCP).")); err != nil {
		return nil, err
	}
	if t.detectDuration, err = meter.Float64Histogram("trellis_proxy_protocol_detection_duration_seconds",
		metric.WithDescription("Time protocol detection waited for the client's first bytes."),
		metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)); err != nil {
		return nil, err
	}
	return t, nil
}

// Handler serves the metrics in Prometheus' text format.
func (t *Telemetry) Handler() http.Handler { return t.handler }

// Sniffed counts one protocol detection.
func (t *Telemetry) Sniffed(i proxy.SniffInfo) {
	ctx := context.Background()
	dir := attribute.String("direction", string(i.Direction))
	t.detections.Add(ctx, 1, metric.WithAttributes(dir,
		attribute.String("protocol", i.Protocol.String()), attribute.Bool("timed_out", i.TimedOut)))
	t.detectDuration.Record(ctx, i.Duration.Seconds(), metric.WithAttributes(dir))
}

// RequestDone records nothing yet (the golden signals are the telemetry step's).
func (t *Telemetry) RequestDone(proxy.RequestInfo) {}

// ConnDone records nothing yet (the golden signals are the telemetry step's).
func (t *Telemetry) ConnDone(proxy.ConnInfo) {}
