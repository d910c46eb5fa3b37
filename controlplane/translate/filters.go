package translate

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	"google.golang.org/protobuf/proto"
)

const (
	filterRouter          = "envoy.filters.http.router"
	transportSocketTLS    = "envoy.transport_sockets.tls"
	transportSocketRaw    = "envoy.transport_sockets.raw_buffer"
	httpProtocolOptionsID = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// networkFilter is a listener network filter with a typed config.
func networkFilter(c *collector, name string, m proto.Message) *listenerv3.Filter {
	return &listenerv3.Filter{Name: name, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: c.any(m)}}
}

// listenerFilter is a listener filter (run before a filter chain is chosen).
func listenerFilter(c *collector, name string, m proto.Message) *listenerv3.ListenerFilter {
	return &listenerv3.ListenerFilter{Name: name, ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: c.any(m)}}
}

// httpFilter is an HTTP filter of a connection manager.
func httpFilter(c *collector, name string, m proto.Message) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: c.any(m)}}
}

// routerFilter is the last HTTP filter of every connection manager.
func routerFilter(c *collector) *hcmv3.HttpFilter {
	return httpFilter(c, filterRouter, &routerv3.Router{})
}

// transportSocket wraps a transport socket config.
func transportSocket(c *collector, name string, m proto.Message) *corev3.TransportSocket {
	return &corev3.TransportSocket{Name: name, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: c.any(m)}}
}

// rawBuffer is plaintext.
func rawBuffer(c *collector) *corev3.TransportSocket {
	return transportSocket(c, transportSocketRaw, &rawbufferv3.RawBuffer{})
}
