package charts_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"helm.sh/helm/v4/pkg/action"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/charts"
	cpapp "github.com/trellis-mesh/trellis/cmd/trellis-controlplane/app"
	"github.com/trellis-mesh/trellis/injector/webhook"
)

const (
	deploymentKey = "Deployment/trellis-controlplane"
	webhookKey    = "MutatingWebhookConfiguration/trellis-injector"
)

// valueSets are the installations every invariant is checked for.
var valueSets = []struct {
	name      string
	namespace string
	vals      map[string]any
}{
	{"the defaults", "trellis-system", nil},
	{"another namespace, failing open, three replicas", "mesh", vals(
		"injector.failurePolicy", "Ignore", "controlplane.replicas", 3)},
	{"a registry, a tag, exclusions and a user-supplied CA", "trellis-system", vals(
		"image.registry", "ghcr.io/acme", "image.tag", "v1.2.3", "image.pullPolicy", "Always",
		"injector.inboundExcludePorts", []any{9090, 9091}, "injector.outboundExcludePorts", []any{5432},
		"injector.outboundExcludeCIDRs", []any{"10.0.0.0/8", "fd00::/8"},
		"injector.nativeSidecars", false, "injector.rewriteAppProbes", false,
		"mesh.trustDomain", "prod.example", "mesh.ca.userSupplied", true, "mesh.ca.secretName", "my-ca",
		"proxy.logLevel", "debug", "proxy.drainDuration", "20s", "controlplane.logFormat", "text")},
}

// controlPlaneOptions parses the Deployment's container args with the real
// `trellis-controlplane run` command, in a pod of namespace (POD_NAMESPACE), and returns
// the options the control plane would run with. An arg it does not know fails the test.
func controlPlaneOptions(t *testing.T, namespace string, dep *appsv1.Deployment) *cpapp.Options {
	t.Helper()
	if len(dep.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("the Deployment has %d containers, want 1", len(dep.Spec.Template.Spec.Containers))
	}
	c := dep.Spec.Template.Spec.Containers[0]
	var fromDownwardAPI bool
	for _, e := range c.Env {
		if e.Name == "POD_NAMESPACE" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace" {
			fromDownwardAPI = true
		}
	}
	if !fromDownwardAPI {
		t.Fatalf("the container does not get POD_NAMESPACE from metadata.namespace: env %+v", c.Env)
	}
	t.Setenv("POD_NAMESPACE", namespace)
	opts := cpapp.DefaultOptions()
	root := cpapp.NewCommand(opts)
	cmd, rest, err := root.Find(append(c.Command, c.Args...))
	if err != nil || cmd.Name() != "run" {
		t.Fatalf("args %q do not run the control plane (found %q, err %v)", c.Args, cmd.Name(), err)
	}
	if err := cmd.ParseFlags(rest); err != nil {
		t.Fatalf("trellis-controlplane run does not accept the chart's args %q: %v", rest, err)
	}
	if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
		t.Fatalf("args %q: %v", rest, err)
	}
	if _, err := opts.Logging.New(os.Stderr); err != nil {
		t.Errorf("logging flags: %v", err)
	}
	if err := opts.ControlPlane.Injector.Config.Validate(); err != nil {
		t.Errorf("injection flags: %v", err)
	}
	return opts
}

// injectorOptions are the webhook options the control plane derives from its own (as
// controlplane.setupInjector does).
func injectorOptions(cp *cpapp.Options) webhook.Options {
	inj := cp.ControlPlane.Injector
	inj.Namespace, inj.ServiceName = cp.ControlPlane.Namespace, cp.ControlPlane.ServiceName
	return inj
}

func TestEveryControlPlaneArgParsesWithTheRealCommand(t *testing.T) {
	for _, tt := range valueSets {
		t.Run(tt.name, func(t *testing.T) {
			r := mustRender(t, tt.namespace, tt.vals)
			opts := controlPlaneOptions(t, tt.namespace, get[*appsv1.Deployment](t, r, deploymentKey))
			cp := opts.ControlPlane
			if cp.Namespace != tt.namespace || cp.ServiceAccount != "trellis-controlplane" || cp.ServiceName != "trellis-controlplane" {
				t.Errorf("namespace/service account/service = %s/%s/%s", cp.Namespace, cp.ServiceAccount, cp.ServiceName)
			}
			if cp.GRPCAddr != ":15012" || cp.MetricsAddr != ":15014" || cp.HealthAddr != ":15021" || cp.Injector.Port != webhook.DefaultPort {
				t.Errorf("listen addresses %s %s %s webhook %d", cp.GRPCAddr, cp.MetricsAddr, cp.HealthAddr, cp.Injector.Port)
			}
		})
	}

	t.Run("values reach the control plane's options", func(t *testing.T) {
		set := valueSets[2]
		r := mustRender(t, set.namespace, set.vals)
		cp := controlPlaneOptions(t, set.namespace, get[*appsv1.Deployment](t, r, deploymentKey)).ControlPlane
		inj := cp.Injector.Config
		got := map[string]any{
			"trust domain": cp.TrustDomain, "CA secret": cp.CASecret, "CA user-supplied": cp.CAUserSupplied,
			"native sidecars": inj.NativeSidecars, "rewrite probes": inj.RewriteAppProbes,
			"inbound exclusions": inj.InboundExcludePorts, "outbound exclusions": inj.OutboundExcludePorts,
			"CIDRs": len(inj.OutboundExcludeCIDRs), "proxy log level": inj.LogLevel, "drain": inj.DrainDuration.String(),
			"pull policy": string(inj.ImagePullPolicy), "log format": "text",
		}
		want := map[string]any{
			"trust domain": "prod.example", "CA secret": "my-ca", "CA user-supplied": true,
			"native sidecars": false, "rewrite probes": false,
			"inbound exclusions": []int32{9090, 9091}, "outbound exclusions": []int32{5432},
			"CIDRs": 2, "proxy log level": "debug", "drain": "20s",
			"pull policy": "Always", "log format": "text",
		}
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("options (-want +got):\n%s", d)
		}
	})
}

func TestTheChartsWebhookIsTheOneTheControlPlaneKeeps(t *testing.T) {
	for _, tt := range valueSets {
		t.Run(tt.name, func(t *testing.T) {
			r := mustRender(t, tt.namespace, tt.vals)
			opts := controlPlaneOptions(t, tt.namespace, get[*appsv1.Deployment](t, r, deploymentKey))
			want := webhook.Configuration(injectorOptions(opts), nil)
			got := get[*admissionregistrationv1.MutatingWebhookConfiguration](t, r, webhookKey)
			if got.Name != want.Name {
				t.Errorf("name %q, the control plane keeps %q", got.Name, want.Name)
			}
			if d := cmp.Diff(want.Webhooks, got.Webhooks); d != "" {
				t.Errorf("the chart's webhooks differ from webhook.Configuration's: the control plane would rewrite them (-code +chart):\n%s", d)
			}
			for _, wh := range got.Webhooks {
				if wh.ClientConfig.CABundle != nil {
					t.Errorf("webhook %s sets caBundle: an upgrade would replace the control plane's CA", wh.Name)
				}
			}
			// The webhook's Service port reaches the container's webhook port.
			svc := get[*corev1.Service](t, r, "Service/trellis-controlplane")
			ref := got.Webhooks[0].ClientConfig.Service
			port := servicePort(t, svc, "https-webhook")
			if port.Port != *ref.Port || svc.Namespace != ref.Namespace || svc.Name != ref.Name {
				t.Errorf("the webhook calls %s/%s:%d, the Service is %s/%s:%d", ref.Namespace, ref.Name, *ref.Port, svc.Namespace, svc.Name, port.Port)
			}
			dep := get[*appsv1.Deployment](t, r, deploymentKey)
			if cp := containerPort(t, dep, port.TargetPort.String()); int(cp) != opts.ControlPlane.Injector.Port {
				t.Errorf("the Service sends webhook calls to container port %d, the webhook listens on %d", cp, opts.ControlPlane.Injector.Port)
			}
		})
	}
}

func servicePort(t *testing.T, svc *corev1.Service, name string) corev1.ServicePort {
	t.Helper()
	for _, p := range svc.Spec.Ports {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("Service %s has no port %s", svc.Name, name)
	return corev1.ServicePort{}
}

func containerPort(t *testing.T, dep *appsv1.Deployment, name string) int32 {
	t.Helper()
	for _, p := range dep.Spec.Template.Spec.Containers[0].Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	t.Fatalf("the control-plane container has no port %s", name)
	return 0
}

func TestTheServiceExposesXDSWebhookAndMetrics(t *testing.T) {
	r := mustRender(t, "trellis-system", nil)
	svc := get[*corev1.Service](t, r, "Service/trellis-controlplane")
	dep := get[*appsv1.Deployment](t, r, deploymentKey)
	for name, want := range map[string]int32{"grpc-xds": 15012, "https-webhook": 15017, "http-metrics": 15014} {
		p := servicePort(t, svc, name)
		if p.Port != want || containerPort(t, dep, p.TargetPort.String()) != want {
			t.Errorf("port %s: %d -> %s, want %d", name, p.Port, p.TargetPort.String(), want)
		}
	}
	if d := cmp.Diff(dep.Spec.Selector.MatchLabels, svc.Spec.Selector); d != "" {
		t.Errorf("the Service selects other pods than the Deployment's (-deployment +service):\n%s", d)
	}
}

func TestTheClusterRoleAndRoleAreTheGeneratedOnes(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("trellis", "generated", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var wantCluster, wantNamespaced []rbacv1.PolicyRule
	for _, doc := range strings.Split(string(raw), "\n---") {
		var role struct {
			Kind  string              `json:"kind"`
			Rules []rbacv1.PolicyRule `json:"rules"`
		}
		if err := yaml.Unmarshal([]byte(doc), &role); err != nil {
			t.Fatal(err)
		}
		switch role.Kind {
		case "ClusterRole":
			wantCluster = role.Rules
		case "Role":
			wantNamespaced = role.Rules
		}
	}
	if len(wantCluster) == 0 || len(wantNamespaced) == 0 {
		t.Fatalf("generated/role.yaml has %d cluster rules and %d namespaced ones", len(wantCluster), len(wantNamespaced))
	}
	for _, ns := range []string{"trellis-system", "mesh"} {
		r := mustRender(t, ns, nil)
		cr := get[*rbacv1.ClusterRole](t, r, "ClusterRole/trellis-controlplane")
		if d := cmp.Diff(wantCluster, cr.Rules); d != "" {
			t.Errorf("ClusterRole rules differ from generated/role.yaml (-generated +chart):\n%s", d)
		}
		role := get[*rbacv1.Role](t, r, "Role/trellis-controlplane")
		if d := cmp.Diff(wantNamespaced, role.Rules); d != "" {
			t.Errorf("Role rules differ from generated/role.yaml (-generated +chart):\n%s", d)
		}
		if role.Namespace != ns {
			t.Errorf("the Role is in namespace %q, want the release's %q", role.Namespace, ns)
		}
		sa := rbacv1.Subject{Kind: "ServiceAccount", Name: "trellis-controlplane", Namespace: ns}
		crb := get[*rbacv1.ClusterRoleBinding](t, r, "ClusterRoleBinding/trellis-controlplane")
		rb := get[*rbacv1.RoleBinding](t, r, "RoleBinding/trellis-controlplane")
		if d := cmp.Diff([]rbacv1.Subject{sa}, crb.Subjects); d != "" || crb.RoleRef.Kind != "ClusterRole" || crb.RoleRef.Name != cr.Name {
			t.Errorf("ClusterRoleBinding %+v binds %+v", crb.RoleRef, crb.Subjects)
		}
		if d := cmp.Diff([]rbacv1.Subject{sa}, rb.Subjects); d != "" || rb.RoleRef.Kind != "Role" || rb.RoleRef.Name != role.Name || rb.Namespace != ns {
			t.Errorf("RoleBinding %s/%+v binds %+v", rb.Namespace, rb.RoleRef, rb.Subjects)
		}
		dep := get[*appsv1.Deployment](t, r, deploymentKey)
		if dep.Spec.Template.Spec.ServiceAccountName != sa.Name {
			t.Errorf("the control plane runs as %q, the bindings are for %q", dep.Spec.Template.Spec.ServiceAccountName, sa.Name)
		}
		get[*corev1.ServiceAccount](t, r, "ServiceAccount/trellis-controlplane")
	}
}

func TestImagesHonourRegistryTagAndPullPolicy(t *testing.T) {
	appVersion := func(t *testing.T) string {
		ch, err := charts.LoadTrellis()
		if err != nil {
			t.Fatal(err)
		}
		return ch.Metadata.AppVersion
	}(t)
	tests := []struct {
		name                string
		vals                map[string]any
		controlPlane, proxy string
		pullPolicy          corev1.PullPolicy
		pullSecrets         []string
	}{
		{"by default the local names at the chart's appVersion", nil,
			"trellis/controlplane:" + appVersion, "trellis/proxy:" + appVersion, corev1.PullIfNotPresent, nil},
		{"a registry and a tag for both", vals("image.registry", "ghcr.io/acme/", "image.tag", "v2", "image.pullPolicy", "Always"),
			"ghcr.io/acme/trellis/controlplane:v2", "ghcr.io/acme/trellis/proxy:v2", corev1.PullAlways, nil},
		{"global.imageRegistry when image.registry is empty", vals("global.imageRegistry", "registry.local:5000", "image.pullPolicy", "Never"),
			"registry.local:5000/trellis/controlplane:" + appVersion, "registry.local:5000/trellis/proxy:" + appVersion, corev1.PullNever, nil},
		{"per-image registry, repository, tag and digest", vals(
			"image.registry", "ghcr.io/acme", "image.tag", "v2",
			"controlplane.image.registry", "quay.io/other", "controlplane.image.tag", "v3",
			"proxy.image.repository", "acme/proxy", "proxy.image.digest", "sha256:"+strings.Repeat("ab", 32),
			"image.pullSecrets", []any{"regcred"}),
			"quay.io/other/trellis/controlplane:v3", "ghcr.io/acme/acme/proxy@sha256:" + strings.Repeat("ab", 32), corev1.PullIfNotPresent, []string{"regcred"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := mustRender(t, "trellis-system", tt.vals)
			dep := get[*appsv1.Deployment](t, r, deploymentKey)
			c := dep.Spec.Template.Spec.Containers[0]
			if c.Image != tt.controlPlane || c.ImagePullPolicy != tt.pullPolicy {
				t.Errorf("control plane image %s (%s), want %s (%s)", c.Image, c.ImagePullPolicy, tt.controlPlane, tt.pullPolicy)
			}
			inj := controlPlaneOptions(t, "trellis-system", dep).ControlPlane.Injector.Config
			if inj.ProxyImage != tt.proxy || inj.ImagePullPolicy != tt.pullPolicy {
				t.Errorf("injected proxy image %s (%s), want %s (%s)", inj.ProxyImage, inj.ImagePullPolicy, tt.proxy, tt.pullPolicy)
			}
			var secrets []string
			for _, s := range dep.Spec.Template.Spec.ImagePullSecrets {
				secrets = append(secrets, s.Name)
			}
			if d := cmp.Diff(tt.pullSecrets, secrets); d != "" {
				t.Errorf("imagePullSecrets (-want +got):\n%s", d)
			}
		})
	}
}

func TestThePodDisruptionBudgetNeverBlocksADrain(t *testing.T) {
	for _, tt := range []struct {
		name     string
		vals     map[string]any
		replicas int
		wantPDB  bool
		allowed  int // evictions allowed with every replica healthy
	}{
		{"one replica (the default) may be evicted", nil, 1, true, 1},
		{"two replicas: one at a time", vals("controlplane.replicas", 2), 2, true, 1},
		{"three replicas: one at a time", vals("controlplane.replicas", 3), 3, true, 1},
		{"a percentage rounds up, so one replica may still go", vals("controlplane.podDisruptionBudget.maxUnavailable", "10%"), 1, true, 1},
		{"four replicas at 50%: two at a time", vals("controlplane.replicas", 4, "controlplane.podDisruptionBudget.maxUnavailable", "50%"), 4, true, 2},
		{"disabled: no budget", vals("controlplane.podDisruptionBudget.enabled", false), 1, false, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := mustRender(t, "trellis-system", tt.vals)
			dep := get[*appsv1.Deployment](t, r, deploymentKey)
			if int(*dep.Spec.Replicas) != tt.replicas {
				t.Fatalf("replicas %d, want %d", *dep.Spec.Replicas, tt.replicas)
			}
			obj, ok := r.objects["PodDisruptionBudget/trellis-controlplane"]
			if ok != tt.wantPDB {
				t.Fatalf("PodDisruptionBudget rendered: %v, want %v", ok, tt.wantPDB)
			}
			if !ok {
				return
			}
			pdb := obj.(*policyv1.PodDisruptionBudget)
			if pdb.Spec.MinAvailable != nil || pdb.Spec.MaxUnavailable == nil {
				t.Fatalf("the budget sets minAvailable %v / maxUnavailable %v; only maxUnavailable never blocks a drain", pdb.Spec.MinAvailable, pdb.Spec.MaxUnavailable)
			}
			// As the disruption controller computes it.
			allowed, err := intstr.GetScaledValueFromIntOrPercent(pdb.Spec.MaxUnavailable, tt.replicas, true)
			if err != nil {
				t.Fatal(err)
			}
			if allowed != tt.allowed {
				t.Errorf("%d evictions allowed of %d healthy replicas, want %d", allowed, tt.replicas, tt.allowed)
			}
			if d := cmp.Diff(dep.Spec.Selector, pdb.Spec.Selector); d != "" {
				t.Errorf("the budget selects other pods (-deployment +pdb):\n%s", d)
			}
		})
	}
}

func TestTheValuesSchemaRejectsBadValues(t *testing.T) {
	for _, tt := range []struct {
		name string
		vals map[string]any
		want string
	}{
		{"replicas as a word", vals("controlplane.replicas", "two"), "replicas"},
		{"no replicas", vals("controlplane.replicas", 0), "replicas"},
		{"an unknown key (a typo)", vals("controlplane.replica", 2), "replica"},
		{"an unknown top-level key", vals("imageRegistry", "ghcr.io/x"), "imageRegistry"},
		{"a failure policy the apiserver does not know", vals("injector.failurePolicy", "Maybe"), "failurePolicy"},
		{"a pull policy Kubernetes does not know", vals("image.pullPolicy", "Sometimes"), "pullPolicy"},
		{"a budget that would block drains", vals("controlplane.podDisruptionBudget.maxUnavailable", 0), "maxUnavailable"},
		{"a zero percent budget", vals("controlplane.podDisruptionBudget.maxUnavailable", "0%"), "maxUnavailable"},
		{"a lifetime that is not a Go duration", vals("mesh.certTTL", "one day"), "certTTL"},
		{"a port out of range", vals("injector.inboundExcludePorts", []any{70000}), "inboundExcludePorts"},
		{"a tag with a space", vals("image.tag", "v1 beta"), "tag"},
		{"a proxy resource the injector has no flag for", vals("proxy.resources.requests.ephemeral-storage", "1Gi"), "ephemeral-storage"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := renderChart("trellis-system", tt.vals)
			if err == nil {
				t.Fatalf("values %v were accepted", tt.vals)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not name %q", err, tt.want)
			}
		})
	}
}

func TestTheControlPlaneRunsLockedDown(t *testing.T) {
	r := mustRender(t, "trellis-system", vals(
		"controlplane.replicas", 2, "controlplane.priorityClassName", "system-cluster-critical",
		"controlplane.nodeSelector", map[string]any{"kubernetes.io/os": "linux"},
		"controlplane.tolerations", []any{map[string]any{"key": "dedicated", "operator": "Exists"}}))
	dep := get[*appsv1.Deployment](t, r, deploymentKey)
	pod := dep.Spec.Template.Spec
	c := pod.Containers[0]
	sc := c.SecurityContext
	switch {
	case pod.SecurityContext == nil || pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot:
		t.Error("the pod may run as root")
	case pod.SecurityContext.SeccompProfile == nil || pod.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Error("the pod has no RuntimeDefault seccomp profile")
	case sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Error("the root filesystem is writable")
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Error("privilege escalation is allowed")
	case sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) != 0:
		t.Errorf("capabilities %+v, want ALL dropped and none added", sc.Capabilities)
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" || containerPort(t, dep, p.HTTPGet.Port.String()) != 15021 {
		t.Errorf("readiness probe %+v, want GET :15021/readyz", p)
	}
	if p := c.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || containerPort(t, dep, p.HTTPGet.Port.String()) != 15021 {
		t.Errorf("liveness probe %+v, want GET :15021/healthz", p)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources %+v, want requests and a memory limit", c.Resources)
	}
	if pod.PriorityClassName != "system-cluster-critical" || pod.NodeSelector["kubernetes.io/os"] != "linux" || len(pod.Tolerations) != 1 {
		t.Errorf("priority class %q, node selector %v, tolerations %v", pod.PriorityClassName, pod.NodeSelector, pod.Tolerations)
	}
	if a := pod.Affinity; a == nil || a.PodAntiAffinity == nil {
		t.Error("two replicas are not spread over nodes")
	}
	if s := dep.Spec.Strategy.RollingUpdate; s == nil || s.MaxUnavailable == nil || s.MaxUnavailable.IntValue() != 0 {
		t.Errorf("rolling update %+v: an upgrade may stop a replica before its successor is ready", s)
	}
}

func TestNotesSayWhatToDoNext(t *testing.T) {
	r := mustRender(t, "mesh", nil)
	for _, want := range []string{"kubectl label namespace <ns> trellis.dev/inject=enabled", "rollout restart", "mesh uninstall --namespace mesh", "controlplane.replicas=2"} {
		if !strings.Contains(r.notes, want) {
			t.Errorf("NOTES.txt does not say %q:\n%s", want, r.notes)
		}
	}
}

func TestTheChartLintsClean(t *testing.T) {
	for _, tt := range valueSets {
		t.Run(tt.name, func(t *testing.T) {
			lint := action.NewLint()
			lint.Strict = true
			lint.Namespace = tt.namespace
			res := lint.Run([]string{"trellis"}, tt.vals)
			for _, m := range res.Messages {
				t.Logf("lint: %s", m)
			}
			if action.HasWarningsOrErrors(res) || res.TotalChartsLinted != 1 {
				t.Errorf("helm lint: %d charts linted, errors %v", res.TotalChartsLinted, res.Errors)
			}
		})
	}
}
