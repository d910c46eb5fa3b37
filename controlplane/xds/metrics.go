package xds

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// Metrics are the xDS server's instruments. Names are listed in docs/metrics.md.
type Metrics struct {
	connectedProxies metric.Int64UpDownCounter
	pushes           metric.Int64Counter
	nacks            metric.Int64Counter
	refusals         metric.Int64Counter
	rebuilds         metric.Int64Counter
	buildErrors      metric.Int64Counter
	rebuildDuration  metric.Float64Histogram
	pushLatency      metric.Float64Histogram
	// byType holds the type attribute of each served type, made once: building it on every
	// response was a measurable part of a push to 2000 proxies.
	byType map[string]metric.AddOption
}

// NewMetrics creates the instruments on meter.
func NewMetrics(meter metric.Meter) (*Metrics, error) {
	m := &Metrics{byType: map[string]metric.AddOption{}}
	for _, typ := range resourceTypes {
		m.byType[typ] = metric.WithAttributeSet(attribute.NewSet(attribute.String("type", shortType(typ))))
	}
	var err error
	seconds := metric.WithExplicitBucketBoundaries(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
	if m.connectedProxies, err = meter.Int64UpDownCounter("trellis_xds_connected_proxies",
		metric.WithDescription("Proxies with an open, authorised ADS stream.")); err != nil {
		return nil, err
	}
	if m.pushes, err = meter.Int64Counter("trellis_xds_pushes",
		metric.WithDescription("xDS responses sent, by resource type.")); err != nil {
		return nil, err
	}
	if m.nacks, err = meter.Int64Counter("trellis_xds_nacks",
		metric.WithDescription("xDS responses a proxy rejected, by resource type; the proxy keeps its last good configuration.")); err != nil {
		return nil, err
	}
	if m.refusals, err = meter.Int64Counter("trellis_xds_stream_refusals",
		metric.WithDescription("ADS streams refused, by reason (no client certificate, wrong identity for the node, node changed).")); err != nil {
		return nil, err
	}
	if m.rebuilds, err = meter.Int64Counter("trellis_xds_rebuilds",
		metric.WithDescription("Translations of the mesh model into a new generation of configuration.")); err != nil {
		return nil, err
	}
	if m.buildErrors, err = meter.Int64Counter("trellis_xds_build_errors",
		metric.WithDescription("Failed builds: the shared configuration (every proxy keeps its last) or one proxy's own (that proxy keeps its last).")); err != nil {
		return nil, err
	}
	if m.rebuildDuration, err = meter.Float64Histogram("trellis_xds_rebuild_duration_seconds",
		metric.WithDescription("Time to translate the model and marshal the resources every proxy shares."),
		metric.WithUnit("s"), seconds); err != nil {
		return nil, err
	}
	if m.pushLatency, err = meter.Float64Histogram("trellis_xds_push_latency_seconds",
		metric.WithDescription("Time from the first model change to the generation holding it, ready for the streams to send (debounce included)."),
		metric.WithUnit("s"), seconds); err != nil {
		return nil, err
	}
	return m, nil
}

// NopMetrics records nothing.
func NopMetrics() *Metrics {
	m, _ := NewMetrics(noop.NewMeterProvider().Meter(""))
	return m
}

func (m *Metrics) connected(ctx context.Context, delta int64) { m.connectedProxies.Add(ctx, delta) }

func (m *Metrics) pushed(ctx context.Context, typeURL string) {
	m.pushes.Add(ctx, 1, m.typeAttr(typeURL))
}

func (m *Metrics) typeAttr(typeURL string) metric.AddOption {
	if o, ok := m.byType[typeURL]; ok {
		return o
	}
	return metric.WithAttributes(attribute.String("type", shortType(typeURL)))
}

func (m *Metrics) refused(ctx context.Context, reason string) {
	m.refusals.Add(ctx, 1, metric.WithAttributes(attribute.String("reason", reason)))
}

func (m *Metrics) nacked(ctx context.Context, typeURL string) {
	m.nacks.Add(ctx, 1, m.typeAttr(typeURL))
}

func (m *Metrics) rebuilt(ctx context.Context, took, latency time.Duration) {
	m.rebuilds.Add(ctx, 1)
	m.rebuildDuration.Record(ctx, took.Seconds())
	m.pushLatency.Record(ctx, latency.Seconds())
}

func (m *Metrics) rebuildFailed(ctx context.Context, took time.Duration) {
	m.rebuilds.Add(ctx, 1)
	m.buildErrors.Add(ctx, 1)
	m.rebuildDuration.Record(ctx, took.Seconds())
}

func (m *Metrics) buildFailed(ctx context.Context) { m.buildErrors.Add(ctx, 1) }

func shortType(typeURL string) string {
	for i := len(typeURL) - 1; i >= 0; i-- {
		if typeURL[i] == '.' {
			return typeURL[i+1:]
		}
	}
	return typeURL
}
