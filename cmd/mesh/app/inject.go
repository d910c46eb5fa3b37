package app

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/injector/podspec"
)

type injectOptions struct {
	files  []string
	config podspec.Config
}

func newInjectCommand() *cobra.Command {
	o := &injectOptions{config: podspec.DefaultConfig()}
	cmd := &cobra.Command{
		Use:   "inject -f FILE",
		Short: "Add the Trellis sidecar to the workloads of a YAML stream",
		Long: `inject adds the Trellis proxy to every Pod, Deployment, StatefulSet, DaemonSet, Job and
CronJob (and to those inside a List) of the YAML stream it reads, and writes the stream to
standard output. Other documents, and workloads that are not to be injected (opted out,
host network, already injected), are written back byte for byte.

It runs the same function as the control plane's webhook, so the result is the pod the
webhook would make, given the same flags. Use it where the webhook does not run (GitOps
reviews, clusters without admission webhooks); the namespace must still be labelled
trellis.dev/inject=enabled, since the proxy mounts the trust bundle the control plane
publishes there.`,
		Example: `  mesh inject -f app.yaml | kubectl apply -f -
  kubectl get deploy -n shop -o yaml | mesh inject -f - | kubectl apply -f -`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.config.Validate(); err != nil {
				return fmt.Errorf("invalid injection flags: %w", err)
			}
			var out bytes.Buffer
			for _, f := range o.files {
				in, err := readInput(cmd.InOrStdin(), f)
				if err != nil {
					return err
				}
				injected, err := InjectYAML(in, o.config)
				if err != nil {
					return fmt.Errorf("%s: %w", displayName(f), err)
				}
				if out.Len() > 0 && len(injected) > 0 {
					out.WriteString("---\n")
				}
				out.Write(injected)
			}
			// Nothing is written unless every document could be injected.
			_, err := cmd.OutOrStdout().Write(out.Bytes())
			return err
		},
	}
	fs := cmd.Flags()
	fs.StringSliceVarP(&o.files, "filename", "f", nil, "YAML file to inject, - for standard input (repeatable)")
	_ = cmd.MarkFlagRequired("filename")
	fs.StringVar(&o.config.TrustDomain, "trust-domain", o.config.TrustDomain, "SPIFFE trust domain of the mesh")
	fs.StringVar(&o.config.ControlPlaneAddr, "control-plane-addr", o.config.ControlPlaneAddr, "address of the control plane's xDS and certificate service, as the proxies reach it")
	fs.StringVar(&o.config.ControlPlaneServerName, "control-plane-server-name", o.config.ControlPlaneServerName, "DNS name the control plane's certificate carries")
	fs.StringVar(&o.config.ControlPlaneIdentity, "control-plane-identity", o.config.ControlPlaneIdentity, "SPIFFE ID the control plane presents (default: the proxy's, for namespace trellis-system)")
	o.config.AddFlags(fs)
	return cmd
}

func displayName(f string) string {
	if f == "-" {
		return "standard input"
	}
	return f
}

func readInput(stdin io.Reader, f string) ([]byte, error) {
	if f == "-" {
		b, err := io.ReadAll(stdin)
		if err != nil {
			return nil, fmt.Errorf("read standard input: %w", err)
		}
		return b, nil
	}
	b, err := os.ReadFile(f)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", f, err)
	}
	return b, nil
}

// InjectYAML injects every workload of a YAML stream with podspec.Inject and returns the
// stream. Documents it does not change come back byte for byte; the others are re-encoded
// (keys in alphabetical order). An error names the document and the workload.
func InjectYAML(in []byte, cfg podspec.Config) ([]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(in)))
	var docs [][]byte
	for i := 1; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		out, err := injectDocument(doc, cfg)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		docs = append(docs, out)
	}
	var out bytes.Buffer
	for i, d := range docs {
		if i > 0 {
			out.WriteString("---\n")
		}
		out.Write(d)
		if !bytes.HasSuffix(d, []byte("\n")) {
			out.WriteByte('\n')
		}
	}
	return out.Bytes(), nil
}

func injectDocument(doc []byte, cfg podspec.Config) ([]byte, error) {
	var obj map[string]any
	if err := yaml.Unmarshal(doc, &obj); err != nil {
		return nil, fmt.Errorf("not YAML: %w", err)
	}
	if obj == nil {
		return doc, nil // comments only
	}
	changed, err := injectObject(obj, cfg)
	if err != nil || !changed {
		return doc, err
	}
	out, err := yaml.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	return out, nil
}

// templatePaths say where each kind keeps its pod template.
var templatePaths = map[string][]string{
	"apps/v1/Deployment":  {"spec", "template"},
	"apps/v1/StatefulSet": {"spec", "template"},
	"apps/v1/DaemonSet":   {"spec", "template"},
	"batch/v1/Job":        {"spec", "template"},
	"batch/v1/CronJob":    {"spec", "jobTemplate", "spec", "template"},
}

// injectObject injects obj in place and reports whether it changed.
func injectObject(obj map[string]any, cfg podspec.Config) (bool, error) {
	u := unstructured.Unstructured{Object: obj}
	kind := u.GetAPIVersion() + "/" + u.GetKind()
	what := fmt.Sprintf("%s %s", u.GetKind(), u.GetName())
	switch {
	case kind == "v1/Pod":
		var pod corev1.Pod
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(obj, &pod); err != nil {
			return false, fmt.Errorf("%s: %w", what, err)
		}
		out, err := podspec.Inject(&pod, cfg)
		if err != nil {
			return false, fmt.Errorf("%s: %w", what, err)
		}
		if equality.Semantic.DeepEqual(&pod, out) {
			return false, nil
		}
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(out)
		if err != nil {
			return false, fmt.Errorf("%s: %w", what, err)
		}
		tidy(m)
		if st, ok := m["status"].(map[string]any); ok && len(st) == 0 {
			delete(m, "status")
		}
		clear(obj)
		for k, v := range m {
			obj[k] = v
		}
		return true, nil
	case kind == "v1/List":
		items, ok := obj["items"].([]any)
		if !ok {
			return false, nil
		}
		changed := false
		for i, it := range items {
			item, ok := it.(map[string]any)
			if !ok {
				continue
			}
			c, err := injectObject(item, cfg)
			if err != nil {
				return false, fmt.Errorf("item %d: %w", i+1, err)
			}
			changed = changed || c
		}
		return changed, nil
	}
	path, ok := templatePaths[kind]
	if !ok {
		return false, nil
	}
	raw, found, err := unstructured.NestedMap(obj, path...)
	if err != nil || !found {
		return false, fmt.Errorf("%s has no pod template at .%s", what, strings.Join(path, "."))
	}
	var tmpl corev1.PodTemplateSpec
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &tmpl); err != nil {
		return false, fmt.Errorf("%s: pod template: %w", what, err)
	}
	pod := &corev1.Pod{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}
	out, err := podspec.Inject(pod, cfg)
	if err != nil {
		return false, fmt.Errorf("%s: %w", what, err)
	}
	if equality.Semantic.DeepEqual(pod, out) {
		return false, nil
	}
	tmpl.ObjectMeta, tmpl.Spec = out.ObjectMeta, out.Spec
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&tmpl)
	if err != nil {
		return false, fmt.Errorf("%s: %w", what, err)
	}
	tidy(m)
	if err := unstructured.SetNestedMap(obj, m, path...); err != nil {
		return false, fmt.Errorf("%s: %w", what, err)
	}
	return true, nil
}

// tidy drops the empty creationTimestamp that encoding an object's metadata adds.
func tidy(m map[string]any) {
	if md, ok := m["metadata"].(map[string]any); ok {
		if ts, ok := md["creationTimestamp"]; ok && ts == nil {
			delete(md, "creationTimestamp")
		}
	}
}
