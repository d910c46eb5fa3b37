package charts_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// documentedAsAWhole are values documented by one comment and one table row, not per key.
var documentedAsAWhole = map[string]bool{"controlplane.resources": true, "proxy.resources": true}

// valueKeys walks values.yaml and calls f with the dotted path of every value that is not
// a map of other values, and the comment above its key.
func valueKeys(t *testing.T, f func(path, comment string)) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("trellis", "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	var walk func(prefix string, m *yaml.Node)
	walk = func(prefix string, m *yaml.Node) {
		for i := 0; i+1 < len(m.Content); i += 2 {
			key, val := m.Content[i], m.Content[i+1]
			path := prefix + key.Value
			if val.Kind == yaml.MappingNode && len(val.Content) > 0 && !documentedAsAWhole[path] {
				walk(path+".", val)
				continue
			}
			f(path, key.HeadComment)
		}
	}
	walk("", doc.Content[0])
}

func TestEveryValueIsCommented(t *testing.T) {
	n := 0
	valueKeys(t, func(path, comment string) {
		n++
		if strings.TrimSpace(strings.TrimLeft(comment, "# -")) == "" {
			t.Errorf("value %s has no comment in values.yaml", path)
		}
	})
	if n < 30 {
		t.Fatalf("found %d values; is values.yaml read?", n)
	}
}

func TestEveryValueIsInTheInstallDocs(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "docs", "install.md"))
	if err != nil {
		t.Fatal(err)
	}
	docs := string(raw)
	valueKeys(t, func(path, _ string) {
		if !strings.Contains(docs, "| `"+path+"` |") {
			t.Errorf("docs/install.md has no row for value %s", path)
		}
	})
}
