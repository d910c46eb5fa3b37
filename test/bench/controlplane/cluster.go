package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/discovery"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	policyv1alpha1 "github.com/trellis-mesh/trellis/api/policy/v1alpha1"
	splitv1alpha4 "github.com/trellis-mesh/trellis/api/split/v1alpha4"
	"github.com/trellis-mesh/trellis/controlplane/meshstate"
	"github.com/trellis-mesh/trellis/internal/kubetest"
)

// serviceCIDR is the range of cluster IPs: envtest's default (a /24) is too small for 1000
// Services.
const serviceCIDR = "10.96.0.0/16"

// startAPIServer starts envtest's kube-apiserver and etcd with the Trellis CRDs.
func startAPIServer() (*envtest.Environment, client.Client, string, error) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		return nil, nil, "", fmt.Errorf("KUBEBUILDER_ASSETS is not set, so there is no kube-apiserver to run: " +
			"run `make bench-controlplane`, or `export KUBEBUILDER_ASSETS=$(hack/k8s-binaries.sh kube-apiserver)` first")
	}
	sch, err := kubetest.Scheme()
	if err != nil {
		return nil, nil, "", err
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(kubetest.RepoRoot(), "charts", "trellis", "crds")},
		ErrorIfCRDPathMissing: true,
		Scheme:                sch,
	}
	env.ControlPlane.GetAPIServer().Configure().Set("service-cluster-ip-range", serviceCIDR)
	cfg, err := env.Start()
	if err != nil {
		return nil, nil, "", fmt.Errorf("start kube-apiserver and etcd from %s: %w", os.Getenv("KUBEBUILDER_ASSETS"), err)
	}
	// The setup writes tens of thousands of objects: no client-side rate limit.
	cfg.QPS, cfg.Burst = -1, 0
	c, err := client.New(cfg, client.Options{Scheme: sch})
	if err != nil {
		_ = env.Stop()
		return nil, nil, "", fmt.Errorf("client: %w", err)
	}
	version := "?"
	if dc, err := discovery.NewDiscoveryClientForConfig(cfg); err == nil {
		if info, err := dc.ServerVersion(); err == nil {
			version = info.GitVersion
		}
	}
	return env, c, version, nil
}

// populate writes the model st as Kubernetes objects: meshed namespaces, ServiceAccounts,
// Services with their EndpointSlices, one meshed Pod per endpoint (status with its IP, as a
// kubelet would report it), TrafficSplits, TrafficPolicies and AuthorizationPolicies.
func populate(ctx context.Context, c client.Client, st *meshstate.State, workers int) (int, error) {
	var objs, statuses []client.Object
	var first []client.Object
	first = append(first, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: controlPlaneNamespace}})
	for _, ns := range sortedKeys(st.Namespaces) {
		labels := map[string]string{}
		if st.Namespaces[ns].Injected {
			labels["trellis.dev/inject"] = "enabled"
		}
		first = append(first, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}})
	}
	sas := map[meshstate.Key]bool{}
	for _, k := range sortedMeshKeys(st.Pods) {
		p := st.Pods[k]
		sas[meshstate.Key{Namespace: k.Namespace, Name: p.ServiceAccount}] = true
		pod := meshedPod(p)
		objs = append(objs, pod)
		statuses = append(statuses, pod)
	}
	for _, k := range sortedMeshKeys(sas) {
		objs = append(objs, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: k.Namespace, Name: k.Name}})
	}
	for _, k := range sortedMeshKeys(st.Services) {
		objs = append(objs, service(st.Services[k]))
	}
	for _, k := range sortedMeshKeys(st.EndpointSlices) {
		objs = append(objs, endpointSlice(st.EndpointSlices[k]))
	}
	for _, k := range sortedMeshKeys(st.Splits) {
		objs = append(objs, trafficSplit(st.Splits[k]))
	}
	for _, k := range sortedMeshKeys(st.TrafficPolicies) {
		objs = append(objs, trafficPolicy(st.TrafficPolicies[k]))
	}
	for _, k := range sortedMeshKeys(st.AuthorizationPolicies) {
		objs = append(objs, authorizationPolicy(st.AuthorizationPolicies[k]))
	}
	if err := each(ctx, first, 1, func(o client.Object) error { return c.Create(ctx, o) }); err != nil {
		return 0, err
	}
	if err := each(ctx, objs, workers, func(o client.Object) error { return c.Create(ctx, o) }); err != nil {
		return 0, err
	}
	// The status subresource: what the kubelet would report once the pod runs.
	err := each(ctx, statuses, workers, func(o client.Object) error {
		pod := o.(*corev1.Pod)
		ip := pod.Annotations[podIPAnnotation]
		pod.Status = corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		}
		return c.Status().Update(ctx, pod)
	})
	return len(first) + len(objs), err
}

// podIPAnnotation carries the address the pod gets in its status (envtest has no kubelet).
const podIPAnnotation = "bench.trellis.dev/pod-ip"

// each runs fn on every object with workers goroutines and returns the first error.
func each(ctx context.Context, objs []client.Object, workers int, fn func(client.Object) error) error {
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range max(workers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(objs) {
					return
				}
				if err := fn(objs[i]); err != nil {
					errOnce.Do(func() {
						firstErr = fmt.Errorf("%T %s/%s: %w", objs[i], objs[i].GetNamespace(), objs[i].GetName(), err)
						cancel()
					})
				}
			}
		}()
	}
	wg.Wait()
	return firstErr
}

func meshedPod(p *meshstate.Pod) *corev1.Pod {
	var ports []corev1.ContainerPort
	for _, cp := range p.Ports {
		ports = append(ports, corev1.ContainerPort{Name: cp.Name, ContainerPort: int32(cp.Port)})
	}
	var ip string
	if len(p.IPs) > 0 {
		ip = p.IPs[0].String()
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: p.Key.Namespace, Name: p.Key.Name, Labels: p.Labels,
			Annotations: map[string]string{podIPAnnotation: ip},
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: p.ServiceAccount,
			InitContainers: []corev1.Container{{
				Name: "trellis-proxy", Image: "trellis/proxy", Args: []string{"run"},
				RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways),
			}},
			Containers: []corev1.Container{{Name: "app", Image: "app", Ports: ports}},
		},
	}
}

// service leaves the cluster IP to the apiserver (meshstatetest's first one, 10.96.0.0, is a
// network address the apiserver refuses).
func service(s *meshstate.Service) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: s.Key.Namespace, Name: s.Key.Name},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": s.Key.Name}},
	}
	for _, p := range s.Ports {
		target := intstr.Parse(p.TargetPort)
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: p.Name, Port: int32(p.Port), TargetPort: target})
	}
	return svc
}

func endpointSlice(es *meshstate.EndpointSlice) *discoveryv1.EndpointSlice {
	out := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: es.Key.Namespace, Name: es.Key.Name,
			Labels: map[string]string{discoveryv1.LabelServiceName: es.Service.Name},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for _, p := range es.Ports {
		out.Ports = append(out.Ports, discoveryv1.EndpointPort{Name: ptr.To(p.Name), Port: ptr.To(int32(p.Port))})
	}
	for _, e := range es.Endpoints {
		ep := discoveryv1.Endpoint{Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(e.Ready)}}
		for _, a := range e.Addresses {
			ep.Addresses = append(ep.Addresses, a.String())
		}
		if e.Pod != nil {
			ep.TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: e.Pod.Namespace, Name: e.Pod.Name}
		}
		out.Endpoints = append(out.Endpoints, ep)
	}
	return out
}

func trafficSplit(s *meshstate.Split) *splitv1alpha4.TrafficSplit {
	return &splitv1alpha4.TrafficSplit{
		ObjectMeta: metav1.ObjectMeta{Namespace: s.Key.Namespace, Name: s.Key.Name},
		Spec:       splitv1alpha4.TrafficSplitSpec{Service: s.Service, Backends: backends(s.Backends)},
	}
}

func backends(in []meshstate.Backend) []splitv1alpha4.TrafficSplitBackend {
	var out []splitv1alpha4.TrafficSplitBackend
	for _, b := range in {
		out = append(out, splitv1alpha4.TrafficSplitBackend{Service: b.Service, Weight: int(b.Weight)})
	}
	return out
}

func duration(d time.Duration) *policyv1alpha1.Duration {
	v := policyv1alpha1.Duration(d.String())
	return &v
}

func trafficPolicy(tp *meshstate.TrafficPolicy) *policyv1alpha1.TrafficPolicy {
	out := &policyv1alpha1.TrafficPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: tp.Key.Namespace, Name: tp.Key.Name},
		Spec:       policyv1alpha1.TrafficPolicySpec{TargetRef: policyv1alpha1.PolicyTargetReference{Kind: "Service", Name: tp.Target}},
	}
	if r := tp.Retries; r != nil {
		rp := &policyv1alpha1.RetryPolicy{Attempts: ptr.To(int32(r.Attempts)), Budget: &policyv1alpha1.RetryBudget{
			Percent: ptr.To(int32(r.Budget.Percent)), MinRetriesPerSecond: ptr.To(int32(r.Budget.MinPerSecond)), Window: duration(r.Budget.Window),
		}}
		for _, on := range r.RetryOn {
			rp.RetryOn = append(rp.RetryOn, policyv1alpha1.RetryCondition(on))
		}
		out.Spec.Retries = rp
	}
	if t := tp.Timeouts; t != nil && t.Request != nil {
		out.Spec.Timeouts = &policyv1alpha1.Timeouts{Request: duration(*t.Request)}
	}
	return out
}

func authorizationPolicy(ap *meshstate.AuthorizationPolicy) *policyv1alpha1.AuthorizationPolicy {
	out := &policyv1alpha1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ap.Key.Namespace, Name: ap.Key.Name}}
	for _, r := range ap.Rules {
		rule := policyv1alpha1.AuthorizationRule{}
		for _, p := range r.Ports {
			rule.Ports = append(rule.Ports, int32(p))
		}
		for _, f := range r.From {
			rule.From = append(rule.From, policyv1alpha1.AuthorizationSource{Namespace: ptr.To(f.Namespace)})
		}
		out.Spec.Rules = append(out.Spec.Rules, rule)
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// sortedMeshKeys orders keys by namespace, then by name with numbers in numeric order, so
// that objects are created in a stable order.
func sortedMeshKeys[V any](m map[meshstate.Key]V) []meshstate.Key {
	out := make([]meshstate.Key, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b meshstate.Key) int {
		if a.Namespace != b.Namespace {
			return compareNatural(a.Namespace, b.Namespace)
		}
		return compareNatural(a.Name, b.Name)
	})
	return out
}

func compareNatural(a, b string) int {
	if len(a) != len(b) {
		return len(a) - len(b)
	}
	if a < b {
		return -1
	}
	if a > b {
		return 1
	}
	return 0
}
