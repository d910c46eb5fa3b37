// Package memlimit gives the Go runtime a soft memory limit below the container's, so that
// the garbage collector works harder before the kernel's OOM killer would act. Go sets
// GOMAXPROCS from the cgroup's CPU limit by itself, but not a memory limit.
package memlimit

import (
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// Fraction of the cgroup's memory limit given to the runtime: the rest is for what the
// runtime does not count (thread stacks outside the heap, the binary, kernel buffers).
const Fraction = 0.9

// The memory limit of the process's own cgroup (in a container, the container's): cgroup v2,
// then v1, where "no limit" is a huge number.
const (
	cgroupMemoryMax = "/sys/fs/cgroup/memory.max"
	cgroupV1Limit   = "/sys/fs/cgroup/memory/memory.limit_in_bytes"
	cgroupV1NoLimit = 1 << 60
)

// Set applies Fraction of the cgroup's memory limit as the runtime's soft limit, unless
// GOMEMLIMIT is set (the runtime has applied it already) or there is no limit. It returns
// the limit in effect (0: none set here) and where it came from.
func Set() (int64, string) {
	if v := os.Getenv("GOMEMLIMIT"); v != "" {
		return debug.SetMemoryLimit(-1), "GOMEMLIMIT=" + v
	}
	limit, err := read(cgroupMemoryMax)
	if err != nil {
		if limit, err = read(cgroupV1Limit); err != nil || limit >= cgroupV1NoLimit {
			return 0, ""
		}
	}
	if limit <= 0 {
		return 0, ""
	}
	soft := int64(float64(limit) * Fraction)
	debug.SetMemoryLimit(soft)
	return soft, fmt.Sprintf("%.0f%% of the cgroup's memory limit (%d bytes)", Fraction*100, limit)
}

// read parses a cgroup memory limit file: a byte count, or "max" for no limit (0).
func read(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a byte count", path, s)
	}
	return n, nil
}
