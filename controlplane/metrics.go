package controlplane

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// caMetrics counts what the CA does; it is the identity.Observer of the CA service.
type caMetrics struct {
	signed  metric.Int64Counter
	refused metric.Int64Counter
}

func newCAMetrics(meter metric.Meter) (*caMetrics, error) {
	signed, err := meter.Int64Counter("trellis_ca_certificates_signed",
		metric.WithDescription("Workload certificates (X.509 SVIDs) the CA signed."))
	if err != nil {
		return nil, err
	}
	refused, err := meter.Int64Counter("trellis_ca_requests_refused",
		metric.WithDescription("Certificate requests refused, by reason."))
	if err != nil {
		return nil, err
	}
	return &caMetrics{signed: signed, refused: refused}, nil
}

// Signed counts a signed certificate. The identity is not a label: it would grow without
// bound with the number of workloads.
func (m *caMetrics) Signed(string) { m.signed.Add(context.Background(), 1) }

// Refused counts a refused request by its reason.
func (m *caMetrics) Refused(reason string) {
	m.refused.Add(context.Background(), 1, metric.WithAttributes(attribute.String("reason", reason)))
}
