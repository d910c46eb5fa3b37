package controlplane_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cav1alpha1 "github.com/trellis-mesh/trellis/api/ca/v1alpha1"
	splitv1alpha4 "github.com/trellis-mesh/trellis/api/split/v1alpha4"
	"github.com/trellis-mesh/trellis/controlplane"
	"github.com/trellis-mesh/trellis/controlplane/identity"
	"github.com/trellis-mesh/trellis/controlplane/xds/xdstest"
	"github.com/trellis-mesh/trellis/internal/kubetest"
)

const wait = 20 * time.Second

// TestControlPlane runs the real control plane against a real apiserver and talks to it as a
// sidecar would: a certificate from the CA with a projected-style token, then ADS.
func TestControlPlane(t *testing.T) {
	env := kubetest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c := env.Client

	mustCreate(t, c, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "trellis-system"}})
	mustCreate(t, c, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"trellis.dev/inject": "enabled"}}})
	for _, sa := range []string{"frontend", "backend"} {
		mustCreate(t, c, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: sa}})
	}
	mustCreate(t, c, meshedPod("frontend-1", "frontend", map[string]string{"app": "frontend"}))
	mustCreate(t, c, meshedPod("backend-v1-1", "backend", map[string]string{"app": "backend", "version": "v1"}))
	mustCreate(t, c, meshedPod("backend-v2-1", "backend", map[string]string{"app": "backend", "version": "v2"}))
	for _, name := range []string{"backend", "backend-v1", "backend-v2"} {
		mustCreate(t, c, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name},
			Spec: corev1.ServiceSpec{
				Selector: map[string]string{"app": "backend"},
				Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
			},
		})
	}
	mustCreate(t, c, slice("backend-v1-abc", "backend-v1", endpoint("10.1.0.1", "backend-v1-1")))
	mustCreate(t, c, slice("backend-v2-abc", "backend-v2", endpoint("10.1.0.2", "backend-v2-1")))
	mustCreate(t, c, slice("backend-abc", "backend", endpoint("10.1.0.1", "backend-v1-1"), endpoint("10.1.0.2", "backend-v2-1")))
	split := &splitv1alpha4.TrafficSplit{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "backend-canary"},
		Spec: splitv1alpha4.TrafficSplitSpec{Service: "backend", Backends: []splitv1alpha4.TrafficSplitBackend{
			{Service: "backend-v1", Weight: 90}, {Service: "backend-v2", Weight: 10},
		}},
	}
	mustCreate(t, c, split)

	opts := controlplane.DefaultOptions()
	opts.RestConfig = env.Config
	opts.GRPCAddr, opts.MetricsAddr, opts.HealthAddr = freeAddr(t), freeAddr(t), freeAddr(t)
	opts.LeaderElection = true // the status subtest then also proves the leader-only writer gets its Lease
	opts.Debounce = 20 * time.Millisecond
	injectorAddr := freeAddr(t)
	_, injectorPort, _ := net.SplitHostPort(injectorAddr)
	opts.Injector.Host = "127.0.0.1"
	opts.Injector.Port, _ = strconv.Atoi(injectorPort)
	done := make(chan error, 1)
	go func() { done <- controlplane.Run(ctx, opts) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("control plane: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("control plane did not stop within 30s")
		}
	})

	roots := trustBundle(t, c)
	frontendCert := obtainSVID(t, env, opts.GRPCAddr, roots, "frontend")

	t.Run("a sidecar receives its services, the split and the endpoints", func(t *testing.T) {
		ads := dialADS(t, opts.GRPCAddr, roots, &frontendCert, "shop/frontend-1")
		subscribe(t, ads, resourcev3.ClusterType)
		subscribe(t, ads, resourcev3.ListenerType) // routes and endpoints are followed

		clusters := await(t, ads, resourcev3.ClusterType, func(r *discovery.DiscoveryResponse) bool {
			return hasClusters(r, "outbound|80||backend.shop.svc.cluster.local", "outbound|80||backend-v1.shop.svc.cluster.local", "outbound|80||backend-v2.shop.svc.cluster.local")
		})
		if len(clusters.Resources) < 3 {
			t.Errorf("got %d clusters", len(clusters.Resources))
		}
		first := await(t, ads, resourcev3.RouteType, weightsAre(map[string]uint32{
			"outbound|80||backend-v1.shop.svc.cluster.local": 90, "outbound|80||backend-v2.shop.svc.cluster.local": 10,
		}))
		eds := await(t, ads, resourcev3.EndpointType, endpointsAre("outbound|80||backend-v1.shop.svc.cluster.local", "10.1.0.1"))

		// A weight change arrives as a new route version.
		// The status writer updates the same object, so a read-modify-write can conflict.
		if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			if err := c.Get(ctx, client.ObjectKeyFromObject(split), split); err != nil {
				return err
			}
			split.Spec.Backends[0].Weight, split.Spec.Backends[1].Weight = 50, 50
			return c.Update(ctx, split)
		}); err != nil {
			t.Fatal(err)
		}
		second := await(t, ads, resourcev3.RouteType, weightsAre(map[string]uint32{
			"outbound|80||backend-v1.shop.svc.cluster.local": 50, "outbound|80||backend-v2.shop.svc.cluster.local": 50,
		}))
		if second.VersionInfo == first.VersionInfo {
			t.Errorf("the weight change kept route version %s", first.VersionInfo)
		}

		// An endpoint removal arrives as a new endpoints version.
		es := &discoveryv1.EndpointSlice{}
		if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			if err := c.Get(ctx, client.ObjectKey{Namespace: "shop", Name: "backend-v1-abc"}, es); err != nil {
				return err
			}
			es.Endpoints = nil
			return c.Update(ctx, es)
		}); err != nil {
			t.Fatal(err)
		}
		emptied := await(t, ads, resourcev3.EndpointType, endpointsAre("outbound|80||backend-v1.shop.svc.cluster.local"))
		if emptied.VersionInfo == eds.VersionInfo {
			t.Errorf("the endpoint removal kept endpoints version %s", eds.VersionInfo)
		}

		// Deleting the split restores the plain service.
		if err := c.Delete(ctx, split); err != nil {
			t.Fatal(err)
		}
		await(t, ads, resourcev3.RouteType, func(r *discovery.DiscoveryResponse) bool {
			rc := routeConfig(t, r)
			return rc != nil && rc.VirtualHosts[0].Routes[0].GetRoute().GetCluster() == "outbound|80||backend.shop.svc.cluster.local"
		})
	})

	t.Run("the status of a split names a missing backend", func(t *testing.T) {
		bad := &splitv1alpha4.TrafficSplit{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "typo"},
			Spec: splitv1alpha4.TrafficSplitSpec{Service: "backend", Backends: []splitv1alpha4.TrafficSplitBackend{
				{Service: "backend-v1", Weight: 90}, {Service: "backend-v3", Weight: 10},
			}},
		}
		mustCreate(t, c, bad)
		deadline := time.Now().Add(wait)
		for {
			if err := c.Get(ctx, client.ObjectKeyFromObject(bad), bad); err != nil {
				t.Fatal(err)
			}
			cond := meta.FindStatusCondition(bad.Status.Conditions, "ResolvedRefs")
			if cond != nil && cond.Status == metav1.ConditionFalse && strings.Contains(cond.Message, "backend service shop/backend-v3 not found") {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("status never named the missing backend: %+v", bad.Status)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})

	t.Run("a certificate for one workload cannot fetch another workload's configuration", func(t *testing.T) {
		ads := dialADS(t, opts.GRPCAddr, roots, &frontendCert, "shop/backend-v1-1")
		_ = ads.Subscribe(resourcev3.ClusterType)
		expectRefused(t, ads, codes.PermissionDenied)
	})

	t.Run("a stream cannot switch to another node after its first request", func(t *testing.T) {
		ads := dialADS(t, opts.GRPCAddr, roots, &frontendCert, "shop/frontend-1")
		subscribe(t, ads, resourcev3.ClusterType)
		await(t, ads, resourcev3.ClusterType, func(*discovery.DiscoveryResponse) bool { return true })
		// The attacker holds the frontend certificate and just renames its node.
		if err := ads.SendRaw(nodeRequest("shop/backend-v1-1")); err != nil {
			t.Fatal(err)
		}
		expectRefused(t, ads, codes.PermissionDenied)
	})

	t.Run("metrics and readiness are served with the documented names", func(t *testing.T) {
		if code := httpGet(t, "http://"+opts.HealthAddr+"/readyz"); !strings.HasPrefix(code, "200") {
			t.Errorf("/readyz: %s", code)
		}
		body := httpGet(t, "http://"+opts.MetricsAddr+"/metrics")
		for _, name := range []string{
			"trellis_xds_connected_proxies", "trellis_xds_pushes_total", "trellis_xds_stream_refusals_total",
			"trellis_xds_rebuilds_total", "trellis_xds_rebuild_duration_seconds_bucket",
			"trellis_xds_push_latency_seconds_bucket", "trellis_ca_certificates_signed_total",
		} {
			if !strings.Contains(body, "\n"+name) {
				t.Errorf("/metrics has no %s (docs/metrics.md lists it)", name)
			}
		}
	})

	t.Run("a stream without a client certificate is refused", func(t *testing.T) {
		ads := dialADS(t, opts.GRPCAddr, roots, nil, "shop/frontend-1")
		_ = ads.Subscribe(resourcev3.ClusterType)
		expectRefused(t, ads, codes.Unauthenticated)
	})
}

// httpGet returns the body, or the status line when it is not 200.
func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return resp.Status
	}
	return "200 " + string(b)
}

func mustCreate(t *testing.T, c client.Client, obj client.Object) {
	t.Helper()
	if err := c.Create(context.Background(), obj); err != nil {
		t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
	}
}

func meshedPod(name, sa string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			InitContainers:     []corev1.Container{{Name: "trellis-proxy", Image: "trellis/proxy", RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways)}},
			Containers:         []corev1.Container{{Name: "app", Image: "app", Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}},
		},
	}
}

func endpoint(ip, pod string) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{
		Addresses:  []string{ip},
		Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
		TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: pod},
	}
}

func slice(name, service string, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080)}},
		Endpoints:   eps,
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// trustBundle waits for the CA root the control plane publishes into meshed namespaces.
func trustBundle(t *testing.T, c client.Client) *x509.CertPool {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		cm := &corev1.ConfigMap{}
		err := c.Get(context.Background(), client.ObjectKey{Namespace: "shop", Name: "trellis-ca-root-cert"}, cm)
		if err == nil && cm.Data["root-cert.pem"] != "" {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM([]byte(cm.Data["root-cert.pem"])) {
				t.Fatalf("root-cert.pem holds no certificate")
			}
			return pool
		}
		if time.Now().After(deadline) {
			t.Fatalf("the trust bundle ConfigMap never appeared in namespace shop: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// obtainSVID does what a sidecar does at start: a key, a CSR for its SPIFFE ID, and the
// projected ServiceAccount token as the credential.
func obtainSVID(t *testing.T, env *kubetest.Env, addr string, roots *x509.CertPool, sa string) tls.Certificate {
	t.Helper()
	cs := kubernetes.NewForConfigOrDie(env.Config)
	tr, err := cs.CoreV1().ServiceAccounts("shop").CreateToken(context.Background(), sa, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: []string{identity.Audience}, ExpirationSeconds: ptr.To[int64](600)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token request: %v", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := url.Parse("spiffe://cluster.local/ns/shop/sa/" + sa)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id}}, key)
	if err != nil {
		t.Fatal(err)
	}
	conn := dial(t, addr, roots, nil)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tr.Status.Token)
	var resp *cav1alpha1.CreateCertificateResponse
	deadline := time.Now().Add(wait)
	for {
		resp, err = cav1alpha1.NewCertificateServiceClient(conn).CreateCertificate(ctx, &cav1alpha1.CreateCertificateRequest{
			CsrPem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})),
		})
		if err == nil || time.Now().After(deadline) || status.Code(err) != codes.Unavailable {
			break
		}
		time.Sleep(100 * time.Millisecond) // the gRPC port opens once the model is primed
	}
	if err != nil {
		t.Fatalf("create certificate for %s: %v", sa, err)
	}
	cert := tls.Certificate{PrivateKey: key}
	for _, p := range resp.CertChainPem {
		b, _ := pem.Decode([]byte(p))
		if b == nil {
			t.Fatalf("certificate chain entry is not PEM")
		}
		cert.Certificate = append(cert.Certificate, b.Bytes)
	}
	return cert
}

func dial(t *testing.T, addr string, roots *x509.CertPool, cert *tls.Certificate) *grpc.ClientConn {
	t.Helper()
	cfg := &tls.Config{RootCAs: roots, ServerName: "trellis-controlplane.trellis-system.svc", MinVersion: tls.VersionTLS13}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func dialADS(t *testing.T, addr string, roots *x509.CertPool, cert *tls.Certificate, node string) *xdstest.Client {
	t.Helper()
	ads, err := xdstest.Dial(context.Background(), dial(t, addr, roots, cert), node)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ads.Close)
	return ads
}

func subscribe(t *testing.T, ads *xdstest.Client, typeURL string, names ...string) {
	t.Helper()
	if err := ads.Subscribe(typeURL, names...); err != nil {
		t.Fatalf("subscribe %s: %v", typeURL, err)
	}
}

func await(t *testing.T, ads *xdstest.Client, typeURL string, ok func(*discovery.DiscoveryResponse) bool) *discovery.DiscoveryResponse {
	t.Helper()
	r, err := ads.Wait(typeURL, wait, ok)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// expectRefused reads the status the server closed the stream with. (A subscribe before it
// may already fail with EOF when the server refuses the stream at once; the status is what
// counts.)
func expectRefused(t *testing.T, ads *xdstest.Client, want codes.Code) {
	t.Helper()
	_, err := ads.Wait(resourcev3.ClusterType, wait, func(r *discovery.DiscoveryResponse) bool { return false })
	if status.Code(err) != want {
		t.Fatalf("want the stream refused with %s, got %v", want, err)
	}
}

func nodeRequest(node string) *discovery.DiscoveryRequest {
	req := &discovery.DiscoveryRequest{TypeUrl: resourcev3.ListenerType}
	req.Node = &core.Node{Id: node}
	return req
}

func hasClusters(r *discovery.DiscoveryResponse, names ...string) bool {
	var have []string
	for _, a := range r.Resources {
		c := &clusterv3.Cluster{}
		if a.UnmarshalTo(c) == nil {
			have = append(have, c.Name)
		}
	}
	for _, n := range names {
		if !slices.Contains(have, n) {
			return false
		}
	}
	return true
}

func routeConfig(t *testing.T, r *discovery.DiscoveryResponse) *routev3.RouteConfiguration {
	for _, a := range r.Resources {
		rc := &routev3.RouteConfiguration{}
		if err := a.UnmarshalTo(rc); err != nil {
			t.Fatal(err)
		}
		if rc.Name == "outbound|backend.shop|80" && len(rc.VirtualHosts) > 0 && len(rc.VirtualHosts[0].Routes) > 0 {
			return rc
		}
	}
	return nil
}

func weightsAre(want map[string]uint32) func(*discovery.DiscoveryResponse) bool {
	return func(r *discovery.DiscoveryResponse) bool {
		for _, a := range r.Resources {
			rc := &routev3.RouteConfiguration{}
			if a.UnmarshalTo(rc) != nil || rc.Name != "outbound|backend.shop|80" || len(rc.VirtualHosts) == 0 || len(rc.VirtualHosts[0].Routes) == 0 {
				continue
			}
			got := map[string]uint32{}
			for _, wc := range rc.VirtualHosts[0].Routes[0].GetRoute().GetWeightedClusters().GetClusters() {
				got[wc.Name] = wc.GetWeight().GetValue()
			}
			if len(got) != len(want) {
				return false
			}
			for k, v := range want {
				if got[k] != v {
					return false
				}
			}
			return true
		}
		return false
	}
}

func endpointsAre(cluster string, ips ...string) func(*discovery.DiscoveryResponse) bool {
	return func(r *discovery.DiscoveryResponse) bool {
		for _, a := range r.Resources {
			cla := &endpointv3.ClusterLoadAssignment{}
			if a.UnmarshalTo(cla) != nil || cla.ClusterName != cluster {
				continue
			}
			var got []string
			for _, le := range cla.Endpoints {
				for _, e := range le.LbEndpoints {
					got = append(got, e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress())
				}
			}
			slices.Sort(got)
			return slices.Equal(got, ips)
		}
		return false
	}
}
