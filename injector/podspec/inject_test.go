package podspec

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func simplePod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "web", Image: "example.com/web:1",
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Port: intstr.FromInt32(8080)}}},
		}}},
	}
}

func TestInjectRefusesWhatItCannotDo(t *testing.T) {
	tests := []struct {
		name    string
		pod     *corev1.Pod
		cfg     func(*Config)
		wantErr string
	}{
		{name: "a nil pod is an error", pod: nil, wantErr: "no pod"},
		{
			name:    "an invalid configuration is reported as the injector's",
			pod:     simplePod(),
			cfg:     func(c *Config) { c.ProxyImage = ""; c.LogLevel = "loud" },
			wantErr: "the injector's configuration is invalid: the proxy image is empty",
		},
		{
			name: "a container named like the redirect container is refused",
			pod: func() *corev1.Pod {
				p := simplePod()
				p.Spec.InitContainers = []corev1.Container{{Name: InitContainerName, Image: "x"}}
				return p
			}(),
			wantErr: "container name trellis-init is reserved",
		},
		{
			name: "a volume named like the proxy's is refused",
			pod: func() *corev1.Pod {
				p := simplePod()
				p.Spec.Volumes = []corev1.Volume{{Name: TokenVolumeName}}
				return p
			}(),
			wantErr: "volume name trellis-tokens is reserved",
		},
		{
			name: "a request above the mesh default's limit names both annotations",
			pod: func() *corev1.Pod {
				p := simplePod()
				p.Annotations = map[string]string{ProxyCPURequestAnnotation: "3"}
				return p
			}(),
			wantErr: "the proxy's cpu request 3 is above its limit 1 (annotations trellis.dev/proxy-cpu-request and trellis.dev/proxy-cpu-limit",
		},
		{
			name: "a negative quantity is refused",
			pod: func() *corev1.Pod {
				p := simplePod()
				p.Annotations = map[string]string{ProxyMemoryLimitAnnotation: "-1Gi"}
				return p
			}(),
			wantErr: `annotation trellis.dev/proxy-memory-limit="-1Gi": not a positive Kubernetes quantity; write one such as "128Mi" or "1Gi"`,
		},
		{
			name: "an unknown annotation far from any known one gets no guess",
			pod: func() *corev1.Pod {
				p := simplePod()
				p.Annotations = map[string]string{"trellis.dev/something-else": "1"}
				return p
			}(),
			wantErr: "annotation trellis.dev/something-else: not a Trellis annotation (docs/injection.md",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			_, err := Inject(tt.pod, cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Inject error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestSkipReason(t *testing.T) {
	tests := []struct {
		name       string
		mutate     func(*corev1.Pod)
		wantReason string
		wantErr    string
	}{
		{name: "a plain pod is injected", mutate: func(*corev1.Pod) {}},
		{name: "an opt-out annotation skips it", mutate: func(p *corev1.Pod) { p.Annotations = map[string]string{InjectKey: "false"} }, wantReason: "opts out"},
		{name: "an opt-out label skips it", mutate: func(p *corev1.Pod) { p.Labels = map[string]string{InjectKey: "disabled"} }, wantReason: "opts out"},
		{
			name: "an opt-out in one place wins over a typo in the other",
			mutate: func(p *corev1.Pod) {
				p.Labels = map[string]string{InjectKey: "false"}
				p.Annotations = map[string]string{InjectKey: "nope"}
			},
			wantReason: "opts out",
		},
		{name: "host networking skips it", mutate: func(p *corev1.Pod) { p.Spec.HostNetwork = true }, wantReason: "host's network"},
		{
			name: "a pod with the proxy as a regular container is already injected",
			mutate: func(p *corev1.Pod) {
				p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: ProxyContainerName})
			},
			wantReason: "already has",
		},
		{name: "an unknown inject value is an error", mutate: func(p *corev1.Pod) { p.Labels = map[string]string{InjectKey: "on"} }, wantErr: `label trellis.dev/inject="on"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := simplePod()
			tt.mutate(p)
			reason, err := SkipReason(p)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("SkipReason error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("SkipReason: %v", err)
			}
			if tt.wantReason == "" && reason != "" || !strings.Contains(reason, tt.wantReason) {
				t.Fatalf("SkipReason = %q, want one containing %q", reason, tt.wantReason)
			}
		})
	}
}

func TestOriginalProbesAnnotationIsTheContract(t *testing.T) {
	pod, err := Inject(simplePod(), testConfig())
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseAppProbes(pod.Annotations[OriginalProbesAnnotation])
	if err != nil {
		t.Fatal(err)
	}
	want := AppProbes{"/app-health/web/readyz": {
		HTTPGet:        &HTTPGetProbe{Path: "/", Port: 8080, Scheme: "HTTP"},
		TimeoutSeconds: 1,
	}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("original probes (-want +got):\n%s", diff)
	}
	probe := pod.Spec.Containers[0].ReadinessProbe.HTTPGet
	if probe.Path != "/app-health/web/readyz" || probe.Port.IntVal != StatusPort {
		t.Errorf("rewritten probe = %+v, want /app-health/web/readyz on %d", probe, StatusPort)
	}
	proxy := pod.Spec.InitContainers[1]
	if proxy.Env[len(proxy.Env)-1].ValueFrom.FieldRef.FieldPath != "metadata.annotations['trellis.dev/original-probes']" {
		t.Errorf("the proxy does not read the annotation through %s: %+v", AppProbesEnv, proxy.Env)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{name: "the defaults are valid", mutate: func(*Config) {}},
		{name: "an address without a port is refused", mutate: func(c *Config) { c.ControlPlaneAddr = "cp.svc" }, wantErr: "want host:port"},
		{name: "a non-SPIFFE control-plane identity is refused", mutate: func(c *Config) { c.ControlPlaneIdentity = "cp" }, wantErr: "want a SPIFFE ID"},
		{name: "root as the proxy's user is refused", mutate: func(c *Config) { c.ProxyUID = 0 }, wantErr: "non-root"},
		{name: "a zero drain is refused", mutate: func(c *Config) { c.DrainDuration = 0 }, wantErr: "drain duration 0s"},
		{name: "an unknown pull policy is refused", mutate: func(c *Config) { c.ImagePullPolicy = "Sometimes" }, wantErr: "use Always, IfNotPresent or Never"},
		{name: "an out-of-range excluded port is refused", mutate: func(c *Config) { c.OutboundExcludePorts = []int32{70000} }, wantErr: "excluded port 70000"},
		{
			name:    "a request above its limit is refused",
			mutate:  func(c *Config) { c.InitResources.Requests[corev1.ResourceMemory] = resource.MustParse("1Gi") },
			wantErr: "init container resources: the memory request 1Gi is above its limit 64Mi",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tt.mutate(&cfg)
			err := cfg.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate error = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestAddFlags(t *testing.T) {
	cfg := DefaultConfig()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	cfg.AddFlags(fs)
	err := fs.Parse([]string{
		"--proxy-image=registry.example/trellis/proxy:v1", "--native-sidecars=false", "--proxy-log-level=debug",
		"--proxy-drain-duration=12s", "--rewrite-app-probes=false", "--inbound-exclude-ports=9100,9200",
		"--outbound-exclude-ports=5432", "--outbound-exclude-cidrs=169.254.169.254/32,10.0.0.0/8",
		"--proxy-cpu-request=100m", "--proxy-memory-limit=1Gi",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.ProxyImage = "registry.example/trellis/proxy:v1"
	want.NativeSidecars = false
	want.LogLevel = "debug"
	want.DrainDuration = 12 * time.Second
	want.RewriteAppProbes = false
	want.InboundExcludePorts = []int32{9100, 9200}
	want.OutboundExcludePorts = []int32{5432}
	want.OutboundExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("169.254.169.254/32"), netip.MustParsePrefix("10.0.0.0/8")}
	want.ProxyResources.Requests[corev1.ResourceCPU] = resource.MustParse("100m")
	want.ProxyResources.Limits[corev1.ResourceMemory] = resource.MustParse("1Gi")
	if diff := cmp.Diff(want, cfg, cmp.Comparer(func(a, b resource.Quantity) bool { return a.Cmp(b) == 0 }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("flags (-want +got):\n%s", diff)
	}
	if err := fs.Parse([]string{"--proxy-cpu-limit=lots"}); err == nil || !strings.Contains(err.Error(), "not a positive Kubernetes quantity") {
		t.Errorf("--proxy-cpu-limit=lots: error %v", err)
	}
}

// FuzzInject feeds arbitrary annotation values to Inject: it must never panic, and what it
// accepts it must accept again unchanged.
func FuzzInject(f *testing.F) {
	f.Add("80,8080", "10.0.0.0/8", "100m", "20s", "debug", "true")
	f.Add("x", "10.0.0.0", "-1", "0s", "", "maybe")
	f.Fuzz(func(t *testing.T, ports, cidrs, cpu, drain, level, native string) {
		p := simplePod()
		p.Annotations = map[string]string{
			InboundExcludePortsAnnotation:  ports,
			OutboundExcludeCIDRsAnnotation: cidrs,
			ProxyCPURequestAnnotation:      cpu,
			DrainDurationAnnotation:        drain,
			LogLevelAnnotation:             level,
			NativeSidecarAnnotation:        native,
		}
		out, err := Inject(p, testConfig())
		if err != nil {
			return
		}
		again, err := Inject(out, testConfig())
		if err != nil {
			t.Fatalf("second pass: %v", err)
		}
		if diff := cmp.Diff(out, again); diff != "" {
			t.Fatalf("second pass changed the pod:\n%s", diff)
		}
	})
}
