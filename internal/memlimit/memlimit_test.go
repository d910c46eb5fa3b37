package memlimit

import (
	"os"
	"path/filepath"
	"testing"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		content string
		want    int64
		err     bool
	}{
		{"536870912\n", 536870912, false},
		{"max\n", 0, false},
		{"lots\n", 0, true},
	} {
		path := filepath.Join(dir, "memory.max")
		if err := os.WriteFile(path, []byte(tc.content), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := read(path)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("read(%q) = %d, %v; want %d, error %v", tc.content, got, err, tc.want, tc.err)
		}
	}
	if _, err := read(filepath.Join(dir, "absent")); err == nil {
		t.Error("a missing file gave no error")
	}
}
