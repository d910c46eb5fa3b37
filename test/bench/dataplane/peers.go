package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"text/template"
)

// Ports of the peer pairs. The client side listens on loopback in the client namespace
// (the load generator's "sidecar"), the server side on the server's address; the
// sidecars' redirect is told to leave the server-side ports alone in both namespaces.
const (
	nginxClientHTTP   = 10080
	nginxClientGRPC   = 10090
	nginxServerHTTP   = 9443
	nginxServerGRPC   = 9444
	haproxyClientHTTP = 10081
	haproxyClientGRPC = 10091
	haproxyServerHTTP = 9445
	haproxyServerGRPC = 9446
)

// excludedPorts are the ports the sidecar's nftables rules must not capture, outbound in
// the client namespace and inbound in the server namespace.
var excludedPorts = []int{directHTTP, directGRPC, nginxServerHTTP, nginxServerGRPC, haproxyServerHTTP, haproxyServerGRPC}

type peerConfig struct {
	Dir      string
	ServerIP string
	Workers  int // nginx worker processes, HAProxy threads: the CPUs the side is pinned to
	Certs    certFiles
	Name     string // the server name the client side verifies
	P        map[string]int
}

// The nginx pair: HTTP/1.1 with keep-alive to the server side over mTLS (nginx cannot
// proxy HTTP to an upstream over HTTP/2), gRPC with grpc_pass over HTTP/2 and mTLS. The
// connection limits nginx has by default (1000 requests per connection) are lifted, as the
// sidecar has none.
const nginxCommon = `daemon off;
master_process on;
worker_processes {{.Workers}};
pid {{.Dir}}/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path {{.Dir}}/body;
  proxy_temp_path {{.Dir}}/proxy;
  fastcgi_temp_path {{.Dir}}/fastcgi;
  uwsgi_temp_path {{.Dir}}/uwsgi;
  scgi_temp_path {{.Dir}}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
`

const nginxClientConf = nginxCommon + `
  upstream server_http { server {{.ServerIP}}:{{.P.nginxServerHTTP}}; keepalive 64; keepalive_requests 1000000; keepalive_timeout 300s; }
  upstream server_grpc { server {{.ServerIP}}:{{.P.nginxServerGRPC}}; keepalive 64; keepalive_requests 1000000; keepalive_timeout 300s; }
  server {
    listen 127.0.0.1:{{.P.nginxClientHTTP}};
    location / {
      proxy_pass https://server_http;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_certificate {{.Certs.ClientCert}};
      proxy_ssl_certificate_key {{.Certs.ClientKey}};
      proxy_ssl_trusted_certificate {{.Certs.CA}};
      proxy_ssl_verify on;
      proxy_ssl_name {{.Name}};
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
    }
  }
  server {
    listen 127.0.0.1:{{.P.nginxClientGRPC}} http2;
    location / {
      grpc_pass grpcs://server_grpc;
      grpc_ssl_protocols TLSv1.3;
      grpc_ssl_certificate {{.Certs.ClientCert}};
      grpc_ssl_certificate_key {{.Certs.ClientKey}};
      grpc_ssl_trusted_certificate {{.Certs.CA}};
      grpc_ssl_verify on;
      grpc_ssl_name {{.Name}};
      grpc_ssl_server_name on;
      grpc_ssl_session_reuse on;
    }
  }
}
`

const nginxServerConf = nginxCommon + `
  upstream app_http { server 127.0.0.1:{{.P.appHTTP}}; keepalive 64; keepalive_requests 1000000; keepalive_timeout 300s; }
  upstream app_grpc { server 127.0.0.1:{{.P.appGRPC}}; keepalive 64; keepalive_requests 1000000; keepalive_timeout 300s; }
  ssl_protocols TLSv1.3;
  ssl_certificate {{.Certs.ServerCert}};
  ssl_certificate_key {{.Certs.ServerKey}};
  ssl_client_certificate {{.Certs.CA}};
  ssl_verify_client on;
  server {
    listen {{.ServerIP}}:{{.P.nginxServerHTTP}} ssl;
    location / {
      proxy_pass http://app_http;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
  server {
    listen {{.ServerIP}}:{{.P.nginxServerGRPC}} ssl http2;
    location / { grpc_pass grpc://app_grpc; }
  }
}
`

// The HAProxy pair: HTTP/1.1 with keep-alive to the server side over mTLS, gRPC over
// HTTP/2 end to end (ALPN h2 on the mTLS hop, h2c to the app).
const haproxyCommon = `global
  nbthread {{.Workers}}
  maxconn 4000
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-server-options ssl-min-ver TLSv1.3
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
`

const haproxyClientConf = haproxyCommon + `
frontend http_in
  bind 127.0.0.1:{{.P.haproxyClientHTTP}}
  default_backend server_http
backend server_http
  server s {{.ServerIP}}:{{.P.haproxyServerHTTP}} ssl crt {{.Certs.ClientBundle}} ca-file {{.Certs.CA}} verify required verifyhost {{.Name}} sni str({{.Name}}) alpn http/1.1
frontend grpc_in
  bind 127.0.0.1:{{.P.haproxyClientGRPC}} proto h2
  default_backend server_grpc
backend server_grpc
  server s {{.ServerIP}}:{{.P.haproxyServerGRPC}} ssl crt {{.Certs.ClientBundle}} ca-file {{.Certs.CA}} verify required verifyhost {{.Name}} sni str({{.Name}}) alpn h2
`

const haproxyServerConf = haproxyCommon + `
frontend http_in
  bind {{.ServerIP}}:{{.P.haproxyServerHTTP}} ssl crt {{.Certs.ServerBundle}} ca-file {{.Certs.CA}} verify required alpn http/1.1
  default_backend app_http
backend app_http
  server app 127.0.0.1:{{.P.appHTTP}}
frontend grpc_in
  bind {{.ServerIP}}:{{.P.haproxyServerGRPC}} ssl crt {{.Certs.ServerBundle}} ca-file {{.Certs.CA}} verify required alpn h2
  default_backend app_grpc
backend app_grpc
  server app 127.0.0.1:{{.P.appGRPC}} proto h2
`

var peerPorts = map[string]int{
	"appHTTP": appHTTP, "appGRPC": appGRPC,
	"nginxClientHTTP": nginxClientHTTP, "nginxClientGRPC": nginxClientGRPC,
	"nginxServerHTTP": nginxServerHTTP, "nginxServerGRPC": nginxServerGRPC,
	"haproxyClientHTTP": haproxyClientHTTP, "haproxyClientGRPC": haproxyClientGRPC,
	"haproxyServerHTTP": haproxyServerHTTP, "haproxyServerGRPC": haproxyServerGRPC,
}

// writePeerConfig renders tmpl into dir/name (dir is created) and returns its path.
func writePeerConfig(tmpl, name string, c peerConfig) (string, error) {
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return "", err
	}
	c.P = peerPorts
	t, err := template.New(name).Option("missingkey=error").Parse(tmpl)
	if err != nil {
		return "", fmt.Errorf("template %s: %w", name, err)
	}
	var b bytes.Buffer
	if err := t.Execute(&b, c); err != nil {
		return "", fmt.Errorf("render %s: %w", name, err)
	}
	path := filepath.Join(c.Dir, name)
	return path, os.WriteFile(path, b.Bytes(), 0o644)
}
