package probes

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/trellis-mesh/trellis/injector/podspec"
)

// TestTheInjectorsProbesRoundTrip injects a pod with every kind of probe, reads
// TRELLIS_APP_PROBES as the kubelet fills it for the proxy, and runs each rewritten probe
// through Handler at the path the kubelet is told to call, against real applications.
func TestTheInjectorsProbesRoundTrip(t *testing.T) {
	t.Parallel()
	api, httpPort := startApp(t, false)
	_, httpsPort := startApp(t, true)
	tcpPort := portOf(t, listen(t).Addr())
	grpcPort := startGRPC(t, true)
	sidecarTCPPort := portOf(t, listen(t).Addr())

	always := corev1.ContainerRestartPolicyAlways
	service := "api.v1.Health"
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "api-0", Namespace: "shop"},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{
				// The application's own native sidecar: its probes are rewritten too.
				Name: "log-shipper", Image: "example.com/shipper:1", RestartPolicy: &always,
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(sidecarTCPPort)}}},
			}},
			Containers: []corev1.Container{
				{
					Name: "api", Image: "example.com/api:1",
					Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: httpPort}},
					LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
						Path: "/ok", Port: intstr.FromString("http"), // a named port, resolved by the injector
						HTTPHeaders: []corev1.HTTPHeader{{Name: "X-Probe", Value: "kubelet"}},
					}}, TimeoutSeconds: 3},
					ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(tcpPort)}}, TimeoutSeconds: 2},
					StartupProbe:   &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: grpcPort, Service: &service}}},
				},
				{
					Name: "admin", Image: "example.com/admin:1",
					LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
						Path: "/ok", Port: intstr.FromInt32(httpsPort), Host: "127.0.0.1", Scheme: corev1.URISchemeHTTPS,
					}}},
					// Exec probes run in the container and are not rewritten.
					ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}},
				},
			},
		},
	}

	out, err := podspec.Inject(pod, podspec.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	env := appProbesEnv(t, out)
	p, err := Parse(env)
	if err != nil {
		t.Fatalf("Parse(%s): %v", env, err)
	}
	var injected podspec.AppProbes
	if err := json.Unmarshal([]byte(env), &injected); err != nil {
		t.Fatal(err)
	}

	status := statusServer(t, p)
	rewritten := 0
	var all []corev1.Container
	all = append(all, out.Spec.InitContainers...)
	all = append(all, out.Spec.Containers...)
	for _, c := range all {
		if c.Name == podspec.ProxyContainerName || c.Name == podspec.InitContainerName {
			continue
		}
		for _, pr := range []struct {
			kind  string
			probe *corev1.Probe
		}{{Liveness, c.LivenessProbe}, {Readiness, c.ReadinessProbe}, {Startup, c.StartupProbe}} {
			if pr.probe == nil {
				continue
			}
			name := c.Name + " " + pr.kind
			if pr.probe.Exec != nil {
				if _, ok := p.Get(c.Name, pr.kind); ok {
					t.Errorf("%s: an exec probe has a proxy probe", name)
				}
				continue
			}
			rewritten++
			h := pr.probe.HTTPGet
			if h == nil || h.Port.IntValue() != podspec.StatusPort || h.Path != Path(c.Name, pr.kind) {
				t.Errorf("%s: rewritten to %+v, want GET :%d%s", name, h, podspec.StatusPort, Path(c.Name, pr.kind))
				continue
			}
			got, ok := p.Get(c.Name, pr.kind)
			if !ok {
				t.Errorf("%s: the kubelet calls %s, which the proxy does not serve", name, h.Path)
				continue
			}
			if want := injected[h.Path]; !sameJSON(t, []byte(jsonOf(t, want)), []byte(jsonOf(t, got))) {
				t.Errorf("%s: parsed as %s, the injector wrote %s", name, jsonOf(t, got), jsonOf(t, want))
			}
			// As the kubelet calls the rewritten probe.
			if a := get(t, status+h.Path); a.code != http.StatusOK {
				t.Errorf("%s: GET %s = %d %q, want 200", name, h.Path, a.code, a.body)
			}
		}
	}
	if rewritten != 5 || p.Len() != rewritten {
		t.Errorf("%d rewritten probes and %d proxy probes, want 5 of each", rewritten, p.Len())
	}
	if got := api.request("/ok").Header.Get("X-Probe"); got != "kubelet" {
		t.Errorf("the api's liveness probe came without its header (X-Probe %q)", got)
	}
	got, _ := p.Get("api", Liveness)
	if got.HTTPGet.Port != httpPort || got.TimeoutSeconds != 3 {
		t.Errorf("api liveness = %s, want the named port resolved to %d and timeoutSeconds 3", jsonOf(t, got), httpPort)
	}
	if got, _ := p.Get("api", Startup); got.TimeoutSeconds != DefaultTimeoutSeconds {
		t.Errorf("api startup timeoutSeconds = %d, want the kubelet's default", got.TimeoutSeconds)
	}
}

// appProbesEnv is the value the kubelet gives the proxy's TRELLIS_APP_PROBES: the
// downward API's metadata.annotations['<key>'].
func appProbesEnv(t *testing.T, pod *corev1.Pod) string {
	t.Helper()
	var all []corev1.Container
	all = append(all, pod.Spec.InitContainers...)
	all = append(all, pod.Spec.Containers...)
	for _, c := range all {
		if c.Name != podspec.ProxyContainerName {
			continue
		}
		for _, e := range c.Env {
			if e.Name != EnvVar {
				continue
			}
			if e.ValueFrom == nil || e.ValueFrom.FieldRef == nil {
				return e.Value
			}
			path := e.ValueFrom.FieldRef.FieldPath
			key, ok := strings.CutPrefix(path, "metadata.annotations['")
			key, ok2 := strings.CutSuffix(key, "']")
			if !ok || !ok2 {
				t.Fatalf("%s comes from %s, not an annotation", EnvVar, path)
			}
			v, ok := pod.Annotations[key]
			if !ok {
				t.Fatalf("%s comes from annotation %s, which the pod does not have", EnvVar, key)
			}
			return v
		}
		t.Fatalf("the proxy has no %s: %+v", EnvVar, c.Env)
	}
	t.Fatalf("the pod has no %s container", podspec.ProxyContainerName)
	return ""
}

func statusServer(t *testing.T, p *Probes) string {
	t.Helper()
	srv := httptest.NewServer(Handler(p, nil))
	t.Cleanup(srv.Close)
	return srv.URL
}
