package translate

import (
	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

// appProtocol is how the sidecar treats the bytes of a port. The order matters: when several
// Service ports target the same pod port, the highest wins (see podTargets).
type appProtocol int

const (
	// protoDetect: not declared; sniff the first bytes for HTTP, else carry as TCP.
	protoDetect appProtocol = iota
	// protoTCP: opaque bytes. Also what any protocol Trellis does not know becomes.
	protoTCP
	// protoHTTP: HTTP/1.1 declared; h2c is still accepted from clients (codec AUTO).
	protoHTTP
	// protoHTTP2: HTTP/2 or gRPC declared; spoken end to end.
	protoHTTP2
)

func classify(p meshstate.Protocol) appProtocol {
	switch p {
	case meshstate.ProtocolDetect:
		return protoDetect
	case meshstate.ProtocolHTTP:
		return protoHTTP
	case meshstate.ProtocolHTTP2, meshstate.ProtocolGRPC:
		return protoHTTP2
	default:
		return protoTCP
	}
}

// isHTTP reports whether the port is declared HTTP of some version.
func (p appProtocol) isHTTP() bool { return p == protoHTTP || p == protoHTTP2 }

// sniffedHTTP lists the application protocols Envoy's http_inspector reports for plaintext
// HTTP; a filter chain matching them takes the connections that sniffed as HTTP.
var sniffedHTTP = []string{"http/1.1", "h2c"}

// meshALPN is what a Trellis client offers, and a Trellis server accepts, over mTLS for
// declared HTTP ports, so that two sidecars can agree on HTTP/2.
var meshALPN = []string{"h2", "http/1.1"}
