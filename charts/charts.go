// Package charts embeds Trellis's Helm chart, so that `mesh install` installs the chart it
// was built with, and so that tests render the chart the repository holds.
//
// The chart itself is charts/trellis (Helm reads it from there too); its crds/ and
// generated/ directories are written by `make generate`.
package charts

import (
	"embed"
	"fmt"
	"io/fs"

	"helm.sh/helm/v4/pkg/chart/loader/archive"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
)

//go:embed all:trellis
var files embed.FS

// ReleaseName is the Helm release `mesh install` makes. One mesh runs per cluster.
const ReleaseName = "trellis"

// Trellis returns the files of the trellis chart, rooted at the chart's directory.
func Trellis() fs.FS {
	sub, err := fs.Sub(files, "trellis")
	if err != nil {
		panic(err) // the directory is embedded at build time
	}
	return sub
}

// LoadTrellis loads the embedded trellis chart. Each call returns a new chart, which the
// caller may change (e.g. its appVersion).
func LoadTrellis() (*chart.Chart, error) {
	var bufs []*archive.BufferedFile
	err := fs.WalkDir(Trellis(), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := fs.ReadFile(Trellis(), path)
		if err != nil {
			return err
		}
		bufs = append(bufs, &archive.BufferedFile{Name: path, Data: data})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read the embedded chart: %w", err)
	}
	ch, err := loader.LoadFiles(bufs)
	if err != nil {
		return nil, fmt.Errorf("load the embedded chart: %w", err)
	}
	return ch, nil
}
