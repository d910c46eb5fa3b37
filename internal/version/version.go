// Package version reports what build of Trellis is running, and provides the `version`
// subcommand every Trellis binary has.
package version

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Version is stamped at build time with -ldflags "-X .../internal/version.Version=v0.1.0".
var Version = "dev"

// Info describes a build.
type Info struct {
	Binary    string `json:"binary"`
	Version   string `json:"version"`
	Commit    string `json:"commit,omitempty"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

// Get returns the build information of the running binary.
func Get(binary string) Info {
	info := Info{
		Binary:    binary,
		Version:   Version,
		GoVersion: runtime.Version(),
		Platform:  runtime.GOOS + "/" + runtime.GOARCH,
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				info.Commit = s.Value
			}
		}
	}
	return info
}

// String is the one-line form, e.g. "mesh v0.1.0 (go1.26.8, linux/amd64)".
func (i Info) String() string {
	return fmt.Sprintf("%s %s (%s, %s)", i.Binary, i.Version, i.GoVersion, i.Platform)
}

// NewCommand returns the `version` subcommand for the named binary.
func NewCommand(binary string) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version of " + binary,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return write(cmd.OutOrStdout(), Get(binary), output)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}

func write(w io.Writer, info Info, output string) error {
	switch output {
	case "text":
		_, err := fmt.Fprintln(w, info.String())
		return err
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(info)
	default:
		return fmt.Errorf("unknown output format %q: use text or json", output)
	}
}
