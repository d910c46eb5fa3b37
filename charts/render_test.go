package charts_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/engine"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	"github.com/trellis-mesh/trellis/charts"
)

// rendered is the chart rendered for one release: its objects by "Kind/name", and NOTES.
type rendered struct {
	objects map[string]runtime.Object
	notes   string
}

// strict decodes YAML into typed objects and fails on unknown or duplicate fields, which
// the apiserver would drop (or reject) silently.
var strict = json.NewSerializerWithOptions(json.DefaultMetaFactory, clientgoscheme.Scheme, clientgoscheme.Scheme,
	json.SerializerOptions{Yaml: true, Strict: true})

// renderChart renders the embedded chart as Helm does for an install into namespace, with
// vals over the chart's values (schema validation included).
func renderChart(namespace string, vals map[string]any) (*rendered, error) {
	ch, err := charts.LoadTrellis()
	if err != nil {
		return nil, err
	}
	opts := common.ReleaseOptions{Name: charts.ReleaseName, Namespace: namespace, Revision: 1, IsInstall: true}
	values, err := util.ToRenderValuesWithSchemaValidation(ch, vals, opts, common.DefaultCapabilities, false)
	if err != nil {
		return nil, err
	}
	files, err := engine.Render(ch, values)
	if err != nil {
		return nil, err
	}
	out := &rendered{objects: map[string]runtime.Object{}}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		switch {
		case strings.HasSuffix(name, "NOTES.txt"):
			out.notes = files[name]
			continue
		case !strings.HasSuffix(name, ".yaml"):
			continue
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(files[name])))
		for {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, err
			}
			if len(bytes.TrimSpace(stripComments(doc))) == 0 {
				continue
			}
			obj, gvk, err := strict.Decode(doc, nil, nil)
			if err != nil {
				return nil, &decodeError{file: name, doc: string(doc), err: err}
			}
			key := gvk.Kind + "/" + obj.(interface{ GetName() string }).GetName()
			if _, dup := out.objects[key]; dup {
				return nil, &decodeError{file: name, doc: string(doc), err: errors.New("rendered twice: " + key)}
			}
			out.objects[key] = obj
		}
	}
	return out, nil
}

type decodeError struct {
	file, doc string
	err       error
}

func (e *decodeError) Error() string { return e.file + ": " + e.err.Error() + "\n" + e.doc }

func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for line := range bytes.Lines(doc) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			b.Write(line)
		}
	}
	return b.Bytes()
}

// mustRender renders or fails the test.
func mustRender(t *testing.T, namespace string, vals map[string]any) *rendered {
	t.Helper()
	r, err := renderChart(namespace, vals)
	if err != nil {
		t.Fatalf("render the chart: %v", err)
	}
	return r
}

// get returns the rendered object kind/name as T, or fails the test.
func get[T runtime.Object](t *testing.T, r *rendered, key string) T {
	t.Helper()
	obj, ok := r.objects[key]
	if !ok {
		keys := make([]string, 0, len(r.objects))
		for k := range r.objects {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		t.Fatalf("the chart renders no %s; it renders %v", key, keys)
	}
	typed, ok := obj.(T)
	if !ok {
		t.Fatalf("%s decoded as %T", key, obj)
	}
	return typed
}

// vals builds a values map from dotted paths, like helm's --set.
func vals(kv ...any) map[string]any {
	out := map[string]any{}
	for i := 0; i < len(kv); i += 2 {
		path := strings.Split(kv[i].(string), ".")
		m := out
		for _, p := range path[:len(path)-1] {
			next, ok := m[p].(map[string]any)
			if !ok {
				next = map[string]any{}
				m[p] = next
			}
			m = next
		}
		m[path[len(path)-1]] = kv[i+1]
	}
	return out
}
