package netns

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/trellis-mesh/trellis/controlplane/identity"
	"github.com/trellis-mesh/trellis/controlplane/meshstate"
	"github.com/trellis-mesh/trellis/controlplane/xds"
)

const (
	backendVIP = "10.96.7.10"
	bannerVIP  = "10.96.7.11"
)

// tokens plays the TokenReview: each pod's token names its ServiceAccount.
type tokens map[string][2]string

func (t tokens) Review(_ context.Context, token string) (string, string, error) {
	if v, ok := t[token]; ok {
		return v[0], v[1], nil
	}
	return "", "", identity.ErrInvalidToken
}

func TestMeshedPodsTalkThroughTheirSidecars(t *testing.T) {
	requireRoot(t)
	proxyBin := buildProxy(t)
	tp := newTopology(t)
	clientNS, clientIP := tp.pod("client")
	serverNS, serverIP := tp.pod("server")
	outsiderNS, _ := tp.pod("outsider")

	store := meshstate.NewStore()
	store.SetMesh(meshstate.Mesh{TrustDomain: "cluster.local", MTLSMode: meshstate.MTLSPermissive,
		NamespaceModes: map[string]meshstate.MTLSMode{"shop": meshstate.MTLSStrict}})
	store.SetNamespace(&meshstate.Namespace{Name: "shop", Injected: true})
	clientKey, serverKey := meshstate.Key{Namespace: "shop", Name: "client-1"}, meshstate.Key{Namespace: "shop", Name: "server-1"}
	store.SetPod(&meshstate.Pod{Key: clientKey, ServiceAccount: "frontend", IPs: []netip.Addr{clientIP}, Injected: true})
	store.SetPod(&meshstate.Pod{Key: serverKey, ServiceAccount: "backend", IPs: []netip.Addr{serverIP}, Injected: true,
		Ports: []meshstate.ContainerPort{{Port: 8080}, {Port: 2525}}})
	for _, svc := range []struct {
		name, vip, portName string
		port, target        uint32
		proto               meshstate.Protocol
	}{
		{"backend", backendVIP, "http", 80, 8080, meshstate.ProtocolHTTP},
		{"banner", bannerVIP, "", 2525, 2525, meshstate.ProtocolDetect}, // undeclared: must not stall
	} {
		key := meshstate.Key{Namespace: "shop", Name: svc.name}
		store.SetService(&meshstate.Service{Key: key, ClusterIPs: []netip.Addr{netip.MustParseAddr(svc.vip)},
			Ports: []meshstate.ServicePort{{Name: svc.portName, Port: svc.port, TargetPort: fmt.Sprint(svc.target), Protocol: svc.proto}}})
		store.SetEndpointSlice(&meshstate.EndpointSlice{Key: meshstate.Key{Namespace: "shop", Name: svc.name + "-x"}, Service: key,
			Ports:     []meshstate.EndpointPort{{Name: svc.portName, Port: svc.target}},
			Endpoints: []meshstate.EndpointSliceEntry{{Addresses: []netip.Addr{serverIP}, Ready: true, Pod: &serverKey}}})
	}
	cpAddr := startControlPlane(t, store, tp.host)

	dir, err := os.MkdirTemp("", "trellis-netns-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	_ = os.Chmod(dir, 0o755) // the proxies run as UID 1337
	rootCert := filepath.Join(dir, "root-cert.pem")
	writeFile(t, rootCert, string(cpCA.TrustBundlePEM()))

	for _, pod := range []struct {
		ns, name, sa string
	}{{clientNS, "client-1", "frontend"}, {serverNS, "server-1", "backend"}} {
		token := filepath.Join(dir, pod.name+".token")
		writeFile(t, token, "token-"+pod.sa)
		if out, err := runToEnd(t, pod.ns, 30*time.Second, nil, proxyBin, "init"); err != nil {
			t.Fatalf("trellis-proxy init in %s: %v\n%s", pod.ns, err, out)
		}
		var env []string
		if pod.sa == "backend" {
			// The app's probes as the injector passes them (docs/injection.md).
			env = []string{`TRELLIS_APP_PROBES={` +
				`"/app-health/app/readyz": {"httpGet": {"path": "/", "port": 8080, "scheme": "HTTP"}, "timeoutSeconds": 2},` +
				`"/app-health/app/livez": {"tcpSocket": {"port": 2525}, "timeoutSeconds": 2},` +
				`"/app-health/app/startupz": {"tcpSocket": {"port": 9999}, "timeoutSeconds": 1}}`}
		}
		start(t, "trellis-proxy "+pod.name, pod.ns, 1337, env, proxyBin, "run",
			"--pod-name", pod.name, "--pod-namespace", "shop", "--service-account", pod.sa,
			"--control-plane-addr", cpAddr, "--token-path", token, "--root-cert-path", rootCert,
			"--drain-duration", "1s", "--log-level", "debug")
	}
	self, _ := os.Executable()
	start(t, "server app", serverNS, 0, []string{"TRELLIS_NETNS_HELPER=server"}, self, "-")
	for _, ns := range []string{clientNS, serverNS} {
		waitReady(t, ns, self)
	}

	t.Run("an unmodified client reaches the Service VIP over mTLS and the server sees its identity", func(t *testing.T) {
		out := eventually(t, clientNS, []string{"TRELLIS_NETNS_HELPER=get"}, self, "http://"+backendVIP+"/")
		if !strings.Contains(out, "peer=spiffe://cluster.local/ns/shop/sa/frontend") {
			t.Errorf("the server did not see the client's SPIFFE ID: %s", out)
		}
	})

	t.Run("a server-first protocol on an undeclared port is not stalled by the sniff", func(t *testing.T) {
		out := eventually(t, clientNS, []string{"TRELLIS_NETNS_HELPER=banner"}, self, bannerVIP+":2525")
		if out != "220 banner from the server" {
			t.Errorf("banner = %q", out)
		}
	})

	t.Run("the client's sidecar counts the silent detection in its metrics", func(t *testing.T) {
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + netip.AddrPortFrom(clientIP, 15020).String() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if !regexp.MustCompile(`trellis_proxy_protocol_detections_total\{direction="outbound",protocol="[a-z0-9]+",timed_out="true"\} [1-9]`).Match(body) {
			t.Errorf("no outbound detection timeout counted:\n%s", body)
		}
	})

	t.Run("plaintext from outside the mesh into a STRICT pod is refused", func(t *testing.T) {
		out, err := runToEnd(t, outsiderNS, 30*time.Second, []string{"TRELLIS_NETNS_HELPER=get"}, self, "http://"+serverIP.String()+":8080/")
		if err == nil {
			t.Fatalf("a plaintext request reached a STRICT pod: %s", out)
		}
		if strings.Contains(out, "hello from the server") {
			t.Fatalf("the app answered plaintext: %s", out)
		}
	})

	t.Run("the kubelet's rewritten probes reach the app through the proxy while the pod is STRICT", func(t *testing.T) {
		// The kubelet probes from the node: here, the test process on the bridge.
		client := &http.Client{Timeout: 10 * time.Second}
		for path, want := range map[string]int{
			"/app-health/app/readyz":   http.StatusOK,                 // HTTP probe of the app on 8080
			"/app-health/app/livez":    http.StatusOK,                 // TCP probe of 2525
			"/app-health/app/startupz": http.StatusServiceUnavailable, // nothing listens on 9999
			"/app-health/other/readyz": http.StatusNotFound,
		} {
			resp, err := client.Get("http://" + netip.AddrPortFrom(serverIP, 15020).String() + path)
			if err != nil {
				t.Fatalf("GET %s: %v", path, err)
			}
			resp.Body.Close()
			if resp.StatusCode != want {
				t.Errorf("GET %s = %d, want %d", path, resp.StatusCode, want)
			}
		}
	})

	t.Run("after switching the namespace to PERMISSIVE, plaintext from outside gets in", func(t *testing.T) {
		store.SetMesh(meshstate.Mesh{TrustDomain: "cluster.local", MTLSMode: meshstate.MTLSPermissive})
		out := eventually(t, outsiderNS, []string{"TRELLIS_NETNS_HELPER=get"}, self, "http://"+serverIP.String()+":8080/")
		if !strings.Contains(out, "peer=\n") {
			t.Errorf("a plaintext caller must reach the app with no identity: %s", out)
		}
	})
}

// eventually retries a helper until it succeeds (the first calls may race the proxies'
// first configuration), for at most 30s, and returns its output.
func eventually(t *testing.T, ns string, env []string, argv ...string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := runToEnd(t, ns, 20*time.Second, env, argv...)
		if err == nil {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s in %s kept failing: %v\n%s", strings.Join(argv, " "), ns, err, out)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func waitReady(t *testing.T, ns, self string) {
	t.Helper()
	eventually(t, ns, []string{"TRELLIS_NETNS_HELPER=get"}, self, "http://127.0.0.1:15000/ready")
}

var cpCA *identity.Authority

// startControlPlane serves the real xDS server and CA on the bridge address.
func startControlPlane(t *testing.T, store *meshstate.Store, host netip.Addr) string {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	ca, err := identity.NewSelfSigned(td)
	if err != nil {
		t.Fatal(err)
	}
	cpCA = ca
	cpID := spiffeid.RequireFromString("spiffe://cluster.local/ns/trellis-system/sa/trellis-controlplane")
	rotator, err := identity.NewCertRotator(func() (*tls.Certificate, error) {
		return ca.ServingCertificate(cpID, []string{"trellis-controlplane.trellis-system.svc"}, time.Hour)
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	server := xds.New(store, xds.Options{PeerIdentity: identity.PeerIdentity, Debounce: 20 * time.Millisecond})
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(identity.ServerTLSConfig(ca, rotator))))
	server.Register(g)
	identity.NewServer(ca, tokens{"token-frontend": {"shop", "frontend"}, "token-backend": {"shop", "backend"}}, identity.NopObserver{}).Register(g)
	lis, err := net.Listen("tcp", netip.AddrPortFrom(host, 15012).String())
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	go func() { _ = server.Run(ctx) }()
	server.Rebuild()
	t.Cleanup(func() { cancel(); g.Stop() })
	return lis.Addr().String()
}

func buildProxy(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	dir, err := os.MkdirTemp("", "trellis-proxy-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	_ = os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "trellis-proxy")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/trellis-proxy")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build trellis-proxy: %v\n%s", err, out)
	}
	return bin
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
