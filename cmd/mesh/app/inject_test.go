package app

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/injector/podspec"
	"github.com/trellis-mesh/trellis/injector/webhook/webhooktest"
	"github.com/trellis-mesh/trellis/internal/kubetest"
)

const stream = `# the shop, as a user writes it
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: example.com/web:1
        ports: [{name: http, containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /ready, port: http}
---
apiVersion: v1
kind: Service
metadata:   {name: web, namespace: shop}
spec:
  ports: [{port: 80, targetPort: http}]   # kept byte for byte
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: report, namespace: shop}
spec:
  schedule: "0 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: report, image: example.com/report:1}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: legacy, namespace: shop}
spec:
  template:
    metadata:
      annotations: {trellis.dev/inject: "false"}
    spec:
      restartPolicy: Never
      containers: [{name: legacy, image: example.com/legacy:1}]
---
apiVersion: v1
kind: List
items:
- apiVersion: apps/v1
  kind: StatefulSet
  metadata: {name: db, namespace: shop}
  spec:
    serviceName: db
    selector: {matchLabels: {app: db}}
    template:
      metadata: {labels: {app: db}}
      spec:
        containers: [{name: db, image: example.com/db:1}]
- apiVersion: apps/v1
  kind: DaemonSet
  metadata: {name: agent, namespace: shop}
  spec:
    selector: {matchLabels: {app: agent}}
    template:
      metadata: {labels: {app: agent}}
      spec:
        hostNetwork: true
        containers: [{name: agent, image: example.com/agent:1}]
`

func runInject(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := NewCommand(DefaultOptions())
	var out, errOut bytes.Buffer
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(append([]string{"inject"}, args...))
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

func splitDocs(s string) []string { return strings.Split(s, "---\n") }

func TestMeshInjectStream(t *testing.T) {
	out, err := runInject(t, stream, "-f", "-")
	if err != nil {
		t.Fatal(err)
	}
	in, docs := splitDocs(stream), splitDocs(out)
	if len(docs) != len(in) {
		t.Fatalf("%d documents out of %d:\n%s", len(docs), len(in), out)
	}

	var deploy appsv1.Deployment
	if err := yaml.UnmarshalStrict([]byte(docs[0]), &deploy); err != nil {
		t.Fatal(err)
	}
	if !podspec.Injected(&corev1.Pod{Spec: deploy.Spec.Template.Spec}) || deploy.Spec.Template.Annotations[podspec.StatusAnnotation] == "" {
		t.Errorf("the Deployment's template was not injected:\n%s", docs[0])
	}
	if docs[1] != in[1] {
		t.Errorf("the Service was not passed through byte for byte:\n%s", docs[1])
	}
	var cron batchv1.CronJob
	if err := yaml.UnmarshalStrict([]byte(docs[2]), &cron); err != nil {
		t.Fatal(err)
	}
	if !podspec.Injected(&corev1.Pod{Spec: cron.Spec.JobTemplate.Spec.Template.Spec}) {
		t.Errorf("the CronJob's job template was not injected:\n%s", docs[2])
	}
	if docs[3] != in[3] {
		t.Errorf("the opted-out Job was not passed through byte for byte:\n%s", docs[3])
	}
	var list struct {
		Items []appsv1.StatefulSet `json:"items"`
	}
	if err := yaml.Unmarshal([]byte(docs[4]), &list); err != nil {
		t.Fatal(err)
	}
	if !podspec.Injected(&corev1.Pod{Spec: list.Items[0].Spec.Template.Spec}) {
		t.Errorf("the StatefulSet in the List was not injected:\n%s", docs[4])
	}
	if podspec.Injected(&corev1.Pod{Spec: list.Items[1].Spec.Template.Spec}) {
		t.Errorf("the host-network DaemonSet in the List was injected:\n%s", docs[4])
	}

	again, err := runInject(t, out, "-f", "-")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(out, again); diff != "" {
		t.Errorf("injecting the output again changed it (-first +second):\n%s", diff)
	}
}

func TestMeshInjectErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte(stream+"---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: broken\n  annotations: {trellis.dev/log-level: loud}\nspec:\n  containers: [{name: c, image: x}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{name: "invalid annotations name the file, the document and the workload", args: []string{"-f", bad}, wantErr: bad + `: document 6: Pod broken: annotation trellis.dev/log-level="loud": use debug, info, warn or error`},
		{name: "a missing file is named", args: []string{"-f", filepath.Join(dir, "missing.yaml")}, wantErr: "read " + filepath.Join(dir, "missing.yaml")},
		{name: "invalid flags are refused before reading", args: []string{"-f", bad, "--proxy-log-level=loud"}, wantErr: "invalid injection flags: proxy log level"},
		{name: "a file is required", args: nil, wantErr: `required flag(s) "filename" not set`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runInject(t, "", tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
			if out != "" {
				t.Errorf("wrote output despite the error:\n%s", out)
			}
		})
	}
}

// TestMeshInjectEqualsTheWebhook creates the same pods twice in a real apiserver: once as
// written, in a labelled namespace, so that the webhook injects them; once as `mesh inject`
// wrote them, in an unlabelled namespace. After the apiserver's defaulting both are the
// same pod. The output of `mesh inject` sent through the webhook again comes back unchanged.
func TestMeshInjectEqualsTheWebhook(t *testing.T) {
	env := kubetest.Start(t)
	ctx := context.Background()
	c := env.Client
	for _, ns := range []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{podspec.InjectKey: "enabled"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "plain"}},
	} {
		if err := c.Create(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	webhooktest.Start(t, env, nil)

	var deploy appsv1.Deployment
	if err := yaml.UnmarshalStrict([]byte(splitDocs(stream)[0]), &deploy); err != nil {
		t.Fatal(err)
	}
	// A bare pod with probes of every kind, and the pod the Deployment's ReplicaSet would create.
	podYAML := `apiVersion: v1
kind: Pod
metadata:
  name: api
  labels: {app: api}
  annotations: {trellis.dev/outbound-exclude-ports: "5432", trellis.dev/proxy-memory-limit: 512Mi}
spec:
  serviceAccountName: api
  containers:
  - name: api
    image: example.com/api:1
    ports: [{name: http, containerPort: 8080}, {name: grpc, containerPort: 9090}]
    livenessProbe: {httpGet: {path: /healthz, port: http}}
    readinessProbe: {tcpSocket: {port: 8080}}
    startupProbe: {grpc: {port: 9090}}
`
	fromDeployment := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: *deploy.Spec.Template.ObjectMeta.DeepCopy(),
		Spec:       *deploy.Spec.Template.Spec.DeepCopy(),
	}
	fromDeployment.Name = "web"
	deployPodYAML, err := yaml.Marshal(fromDeployment)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct{ name, yaml string }{
		{"a pod with probes of every kind", podYAML},
		{"a Deployment's pod", string(deployPodYAML)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			byWebhook := create(ctx, t, c, "shop", "", []byte(tc.yaml))
			if !podspec.Injected(byWebhook) {
				t.Fatal("the webhook did not inject the pod")
			}
			out, err := runInject(t, tc.yaml, "-f", "-")
			if err != nil {
				t.Fatal(err)
			}
			byCLI := create(ctx, t, c, "plain", "", []byte(out))
			if diff := cmp.Diff(comparable(byWebhook), comparable(byCLI)); diff != "" {
				t.Errorf("mesh inject differs from the webhook (-webhook +mesh inject):\n%s", diff)
			}
			twice := create(ctx, t, c, "shop", "-again", []byte(out))
			if diff := cmp.Diff(comparable(byWebhook), comparable(twice)); diff != "" {
				t.Errorf("the webhook changed mesh inject's pod (-once +twice):\n%s", diff)
			}
		})
	}
}

func create(ctx context.Context, t *testing.T, c client.Client, ns, suffix string, doc []byte) *corev1.Pod {
	t.Helper()
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(doc, &pod); err != nil {
		t.Fatalf("read the pod: %v\n%s", err, doc)
	}
	pod.Namespace = ns
	pod.Name += suffix
	if err := c.Create(ctx, &pod); err != nil {
		t.Fatalf("create pod in %s: %v", ns, err)
	}
	return &pod
}

// comparable is what both ways must agree on: the spec, the labels and the annotations.
func comparable(p *corev1.Pod) any {
	return struct {
		Labels, Annotations map[string]string
		Spec                corev1.PodSpec
	}{p.Labels, p.Annotations, p.Spec}
}
