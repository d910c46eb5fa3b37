// Package golden compares test output with a golden file, the one way every golden test in
// Trellis does it: `go test -update` rewrites the file, and a difference fails the test
// with a diff and the hint to run -update if the change is intended.
package golden

import (
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Check compares got with the file at path. With update, it first writes got there. about
// names the case in the failure message.
func Check(t testing.TB, path string, got []byte, update bool, about string) {
	t.Helper()
	if update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden output (run go test -update to create it): %v", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s: output differs from %s (-want +got); run go test -update if the change is intended:\n%s", about, path, diff)
	}
}
