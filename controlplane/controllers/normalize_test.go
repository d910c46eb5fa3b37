package controllers

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	policyv1alpha1 "github.com/trellis-mesh/trellis/api/policy/v1alpha1"
	"github.com/trellis-mesh/trellis/controlplane/meshstate"
)

func TestProtocolOf(t *testing.T) {
	for _, tc := range []struct {
		name, appProtocol, portName string
		want                        meshstate.Protocol
	}{
		{"appProtocol wins over the port name", "grpc", "http-web", meshstate.ProtocolGRPC},
		{"a port named http is HTTP", "", "http", meshstate.ProtocolHTTP},
		{"a port named http-web is HTTP", "", "http-web", meshstate.ProtocolHTTP},
		{"a port named grpc-api is gRPC", "", "grpc-api", meshstate.ProtocolGRPC},
		{"Kubernetes' h2c appProtocol is HTTP/2", "kubernetes.io/h2c", "", meshstate.ProtocolHTTP2},
		{"a MySQL port is opaque TCP so it never waits on a sniff", "", "mysql", meshstate.ProtocolTCP},
		{"an unnamed port is detected", "", "", meshstate.ProtocolDetect},
		{"an unknown name is detected", "", "web", meshstate.ProtocolDetect},
		{"case does not matter", "GRPC", "", meshstate.ProtocolGRPC},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := protocolOf(tc.appProtocol, tc.portName); got != tc.want {
				t.Errorf("protocolOf(%q, %q) = %q, want %q", tc.appProtocol, tc.portName, got, tc.want)
			}
		})
	}
}

func TestServiceFromK8sKeepsTCPPortsAndIPs(t *testing.T) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "backend"},
		Spec: corev1.ServiceSpec{
			ClusterIPs: []string{"10.96.0.10", "fd00::10"},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP},
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
				{Name: "api", Port: 9090, TargetPort: intstr.FromString("grpc"), AppProtocol: ptr.To("grpc")},
			},
		},
	}
	want := &meshstate.Service{
		Key:        meshstate.Key{Namespace: "shop", Name: "backend"},
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::10")},
		Ports: []meshstate.ServicePort{
			{Name: "http", Port: 80, TargetPort: "8080", Protocol: meshstate.ProtocolHTTP},
			{Name: "api", Port: 9090, TargetPort: "grpc", Protocol: meshstate.ProtocolGRPC},
		},
	}
	if diff := cmp.Diff(want, serviceFromK8s(svc), cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestEndpointSliceReadiness(t *testing.T) {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: "backend-abc", Labels: map[string]string{discoveryv1.LabelServiceName: "backend"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080)}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "backend-1"}},
			{Addresses: []string{"10.0.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}},
			{Addresses: []string{"10.0.0.3"}, Conditions: discoveryv1.EndpointConditions{}},
			{Addresses: []string{"10.0.0.4"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Terminating: ptr.To(true)}},
		},
	}
	got := endpointSliceFromK8s(es)
	var ready []bool
	for _, e := range got.Endpoints {
		ready = append(ready, e.Ready)
	}
	// ready, not ready, unknown (read as ready, as the API says), terminating (never ready)
	if diff := cmp.Diff([]bool{true, false, true, false}, ready); diff != "" {
		t.Errorf("readiness (-want +got):\n%s", diff)
	}
	if got.Endpoints[0].Pod == nil || *got.Endpoints[0].Pod != (meshstate.Key{Namespace: "shop", Name: "backend-1"}) {
		t.Errorf("pod reference = %v, want shop/backend-1 (namespace filled from the slice)", got.Endpoints[0].Pod)
	}
	if endpointSliceFromK8s(&discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "orphan"}}) != nil {
		t.Errorf("a slice without a service label must be ignored")
	}
}

func TestPodFromK8sRecognisesTheSidecar(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec corev1.PodSpec
		want bool
	}{
		{"a native sidecar (init container) is meshed", corev1.PodSpec{InitContainers: []corev1.Container{{Name: ProxyContainerName}}, Containers: []corev1.Container{{Name: "app"}}}, true},
		{"a regular sidecar container is meshed", corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}, {Name: ProxyContainerName}}}, true},
		{"a pod without the proxy is not meshed", corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := podFromK8s(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "p"}, Spec: tc.spec})
			if p.Injected != tc.want {
				t.Errorf("Injected = %v, want %v", p.Injected, tc.want)
			}
			if p.ServiceAccount != "default" {
				t.Errorf("ServiceAccount = %q, want default when unset", p.ServiceAccount)
			}
		})
	}
}

func TestTrafficPolicyFromAPI(t *testing.T) {
	d := func(s string) *policyv1alpha1.Duration { v := policyv1alpha1.Duration(s); return &v }
	tp := &policyv1alpha1.TrafficPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "backend", Generation: 3},
		Spec: policyv1alpha1.TrafficPolicySpec{
			TargetRef: policyv1alpha1.PolicyTargetReference{Kind: "Service", Name: "backend"},
			Retries:   &policyv1alpha1.RetryPolicy{Attempts: ptr.To[int32](3), PerTryTimeout: d("250ms")},
			Timeouts:  &policyv1alpha1.Timeouts{Request: d("1h30m")},
		},
	}
	got, err := trafficPolicyFromAPI(tp)
	if err != nil {
		t.Fatal(err)
	}
	if got.Retries.Attempts != 3 || *got.Retries.PerTryTimeout != 250*time.Millisecond {
		t.Errorf("retries = %+v", got.Retries)
	}
	if got.Retries.Budget != (meshstate.RetryBudget{Percent: 20, MinPerSecond: 10, Window: 10 * time.Second}) {
		t.Errorf("a missing budget must get the documented default, got %+v", got.Retries.Budget)
	}
	if *got.Timeouts.Request != 90*time.Minute {
		t.Errorf("request timeout = %v", *got.Timeouts.Request)
	}

	tp.Spec.Timeouts.Request = d("soon")
	if _, err := trafficPolicyFromAPI(tp); err == nil {
		t.Errorf("a malformed duration that slipped past admission must be an error, not a zero timeout")
	}
}

func TestAuthorizationPolicyFillsTheServiceAccountNamespace(t *testing.T) {
	ap := &policyv1alpha1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "p"},
		Spec: policyv1alpha1.AuthorizationPolicySpec{
			Selector: policyv1alpha1.WorkloadSelector{MatchLabels: map[string]policyv1alpha1.LabelValue{"app": "backend"}},
			Rules: []policyv1alpha1.AuthorizationRule{{
				From: []policyv1alpha1.AuthorizationSource{
					{ServiceAccount: &policyv1alpha1.ServiceAccountReference{Name: "frontend"}},
					{ServiceAccount: &policyv1alpha1.ServiceAccountReference{Name: "batch", Namespace: "jobs"}},
					{Namespace: ptr.To("monitoring")},
				},
				Ports: []int32{8080},
			}},
		},
	}
	want := []meshstate.AuthzRule{{
		From: []meshstate.Principal{
			{ServiceAccount: &meshstate.Key{Namespace: "shop", Name: "frontend"}},
			{ServiceAccount: &meshstate.Key{Namespace: "jobs", Name: "batch"}},
			{Namespace: "monitoring"},
		},
		Ports: []uint32{8080},
	}}
	got := authorizationPolicyFromAPI(ap)
	if diff := cmp.Diff(want, got.Rules); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if !got.Selector.Matches(map[string]string{"app": "backend", "version": "v1"}) || got.Selector.Matches(map[string]string{"app": "frontend"}) {
		t.Errorf("selector does not select by app=backend")
	}
}

func TestMeshFromAPI(t *testing.T) {
	mc := &policyv1alpha1.MeshConfig{Spec: policyv1alpha1.MeshConfigSpec{
		TrustDomain: "example.org",
		MTLS:        policyv1alpha1.MeshMTLS{Mode: "PERMISSIVE", NamespaceOverrides: []policyv1alpha1.NamespaceMTLS{{Namespace: "shop", Mode: "STRICT"}}},
	}}
	m := meshFromAPI(mc)
	if m.ModeFor("shop") != meshstate.MTLSStrict || m.ModeFor("other") != meshstate.MTLSPermissive || m.TrustDomain != "example.org" {
		t.Errorf("mesh = %+v", m)
	}
	if d := meshFromAPI(nil); d.TrustDomain != "cluster.local" || d.ModeFor("x") != meshstate.MTLSPermissive {
		t.Errorf("no MeshConfig must give the defaults, got %+v", d)
	}
}
