package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/trellis-mesh/trellis/internal/kubetest"
)

// TestTheCLIReferenceNamesEveryCommandAndFlag keeps docs/cli.md in step with the binary:
// every command has a section, and every flag has a row in its command's table (the
// global ones under "Global flags").
func TestTheCLIReferenceNamesEveryCommandAndFlag(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(kubetest.RepoRoot(), "docs", "cli.md"))
	if err != nil {
		t.Fatal(err)
	}
	sections := map[string]string{}
	for _, s := range strings.Split("\n"+string(raw), "\n## ")[1:] {
		title, body, _ := strings.Cut(s, "\n")
		// Only the tables count: a flag named in passing is not documented.
		var rows []string
		for _, line := range strings.Split(body, "\n") {
			if strings.HasPrefix(line, "| ") {
				rows = append(rows, line)
			}
		}
		sections[title] = strings.Join(rows, "\n")
	}
	root := NewCommand(DefaultOptions())
	global, ok := sections["Global flags"]
	if !ok {
		t.Fatal(`docs/cli.md has no "Global flags" section`)
	}
	root.PersistentFlags().VisitAll(func(f *pflag.Flag) {
		if !strings.Contains(global, "`--"+f.Name+"`") {
			t.Errorf("docs/cli.md does not name the global flag --%s", f.Name)
		}
	})
	n := 0
	for _, cmd := range root.Commands() {
		if cmd.Name() == "help" || cmd.Name() == "completion" {
			continue
		}
		n++
		body, ok := sections["mesh "+cmd.Name()]
		if !ok {
			t.Errorf("docs/cli.md has no section \"## mesh %s\"", cmd.Name())
			continue
		}
		checkFlags(t, cmd, body, global)
	}
	if n < 4 {
		t.Fatalf("found %d commands", n)
	}
}

func checkFlags(t *testing.T, cmd *cobra.Command, section, global string) {
	t.Helper()
	cmd.LocalNonPersistentFlags().VisitAll(func(f *pflag.Flag) {
		if f.Name == "help" {
			return
		}
		if !strings.Contains(section, "`--"+f.Name+"`") && !strings.Contains(global, "`--"+f.Name+"`") {
			t.Errorf("docs/cli.md does not name flag --%s of mesh %s", f.Name, cmd.Name())
		}
	})
}
