package translate

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
	"github.com/trellis-mesh/trellis/internal/golden"
)

var update = flag.Bool("update", false, "rewrite testdata/out from the current translation")

// goldenInput is a testdata/in file: the proxy to build for and the State to build from.
type goldenInput struct {
	// About says, as a sentence, what the case shows; the golden output must say the same.
	About string `json:"about"`
	Proxy struct {
		Pod meshstate.Key `json:"pod"`
	} `json:"proxy"`
	State meshstate.State `json:"state"`
}

func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob(filepath.Join("testdata", "in", "*.yaml"))
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no golden inputs in testdata/in (err %v)", err)
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		t.Run(name, func(t *testing.T) {
			c := readGoldenInput(t, in)
			t.Log(c.About)
			res, buildErr := NewBuilder(meshstate.NewIndex(&c.State)).Build(Proxy{Pod: c.Proxy.Pod})
			if buildErr == nil {
				if err := checkResources(res); err != nil {
					t.Errorf("%s: %v", c.About, err)
				}
				if err := checkHalves(NewBuilder(meshstate.NewIndex(&c.State)), Proxy{Pod: c.Proxy.Pod}); err != nil {
					t.Errorf("%s: %v", c.About, err)
				}
				again, err := NewBuilder(meshstate.NewIndex(&c.State)).Build(Proxy{Pod: c.Proxy.Pod})
				if err != nil || !equalResources(res, again) {
					t.Errorf("%s: a second translation of the same State differs (err %v)", c.About, err)
				}
			}
			got, err := render(res, buildErr)
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			golden.Check(t, filepath.Join("testdata", "out", name+".yaml"), got, *update, c.About)
		})
	}
}

func readGoldenInput(t *testing.T, path string) *goldenInput {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var c goldenInput
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return &c
}

// render writes resources as YAML: each resource as protojson with its @type, under its
// kind, in Build's order; or the error.
func render(res *Resources, buildErr error) ([]byte, error) {
	if buildErr != nil {
		return yaml.Marshal(map[string]string{"error": buildErr.Error()})
	}
	doc := map[string][]any{}
	add := func(kind string, m proto.Message) error {
		a, err := anypb.New(m)
		if err != nil {
			return err
		}
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(a)
		if err != nil {
			return err
		}
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			return err
		}
		doc[kind] = append(doc[kind], v)
		return nil
	}
	lists := []struct {
		kind  string
		items []proto.Message
	}{
		{"listeners", messages(res.Listeners)},
		{"routes", messages(res.Routes)},
		{"clusters", messages(res.Clusters)},
		{"endpoints", messages(res.Endpoints)},
	}
	for _, l := range lists {
		doc[l.kind] = []any{}
		for _, m := range l.items {
			if err := add(l.kind, m); err != nil {
				return nil, err
			}
		}
	}
	return yaml.Marshal(doc)
}

func messages[T proto.Message](list []T) []proto.Message {
	out := make([]proto.Message, len(list))
	for i, m := range list {
		out[i] = m
	}
	return out
}

// equalResources reports whether two translations are byte for byte the same on the wire,
// which is what decides whether the xDS server sees a change.
func equalResources(a, b *Resources) bool {
	la, lb := resourceLists(a), resourceLists(b)
	for typeURL := range la {
		if len(la[typeURL]) != len(lb[typeURL]) {
			return false
		}
		for i := range la[typeURL] {
			ba, errA := deterministic.Marshal(la[typeURL][i])
			bb, errB := deterministic.Marshal(lb[typeURL][i])
			if errA != nil || errB != nil || !bytes.Equal(ba, bb) {
				return false
			}
		}
	}
	return true
}
