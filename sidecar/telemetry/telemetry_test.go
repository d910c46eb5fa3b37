package telemetry

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/sidecar/proxy"
	"github.com/trellis-mesh/trellis/sidecar/proxy/sniff"
)

func TestProtocolDetectionIsCounted(t *testing.T) {
	tel, err := New()
	if err != nil {
		t.Fatal(err)
	}
	tel.Sniffed(proxy.SniffInfo{Direction: proxy.Outbound, Protocol: sniff.HTTP1, Duration: time.Millisecond})
	tel.Sniffed(proxy.SniffInfo{Direction: proxy.Outbound, Protocol: sniff.Unknown, TimedOut: true, Duration: 100 * time.Millisecond})
	tel.Sniffed(proxy.SniffInfo{Direction: proxy.Outbound, Protocol: sniff.Unknown, TimedOut: true, Duration: 100 * time.Millisecond})

	rec := httptest.NewRecorder()
	tel.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`trellis_proxy_protocol_detections_total{direction="outbound",protocol="` + sniff.HTTP1.String() + `",timed_out="false"} 1`,
		`trellis_proxy_protocol_detections_total{direction="outbound",protocol="` + sniff.Unknown.String() + `",timed_out="true"} 2`,
		`trellis_proxy_protocol_detection_duration_seconds_count{direction="outbound"} 3`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s\n%s", want, body)
		}
	}
}
