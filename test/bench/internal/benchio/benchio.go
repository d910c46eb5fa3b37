// Package benchio holds what both benchmarks (test/bench/controlplane and
// test/bench/dataplane) do the same way.
package benchio

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// SaveURL stores what GET url answers (a pprof profile, on loopback) in path.
func SaveURL(url, path string, timeout time.Duration) error {
	c := &http.Client{Timeout: timeout}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
