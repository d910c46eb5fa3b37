package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// clockTicks is USER_HZ, the unit of the CPU times in /proc (100 on every Linux ABI Go
// supports).
const clockTicks = 100

// statFields returns the fields of /proc/<pid>/stat after the command name.
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	return strings.Fields(s[i+1:]), nil
}

// procStartTime is field 22 of /proc/<pid>/stat (clock ticks after boot).
func procStartTime(pid int) (uint64, error) {
	f, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: too short", pid)
	}
	return strconv.ParseUint(f[19], 10, 64) // field 22 is index 19 after pid and comm
}

// procCPU is utime+stime of one process (all its threads), in clock ticks.
func procCPU(pid int) (uint64, error) {
	f, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too short", pid)
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64) // field 14 utime
	s, err2 := strconv.ParseUint(f[12], 10, 64) // field 15 stime
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad times", pid)
	}
	return u + s, nil
}

// tree returns pid and its descendants (nginx's workers are children of its master).
func tree(pid int) []int {
	out := []int{pid}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, c := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(c); err == nil {
				out = append(out, tree(n)...)
			}
		}
	}
	return out
}

// treeCPU is the CPU seconds used so far by pid and its descendants.
func treeCPU(pid int) float64 {
	var ticks uint64
	for _, p := range tree(pid) {
		if t, err := procCPU(p); err == nil {
			ticks += t
		}
	}
	return float64(ticks) / clockTicks
}

// statusKB reads a "Key:   123 kB" line of /proc/<pid>/status.
func statusKB(pid int, key string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, key)
}

// treeAnon is the sum of RssAnon of pid and its descendants, in bytes.
func treeAnon(pid int) int64 {
	var kb int64
	for _, p := range tree(pid) {
		if v, err := statusKB(p, "RssAnon"); err == nil {
			kb += v
		}
	}
	return kb * 1024
}

// treeHWM is the sum of the peak resident set sizes (VmHWM) of pid and its descendants, in
// bytes: for nginx, master plus worker(s); for the Go sidecar and HAProxy, the process.
func treeHWM(pid int) int64 {
	var kb int64
	for _, p := range tree(pid) {
		if v, err := statusKB(p, "VmHWM"); err == nil {
			kb += v
		}
	}
	return kb * 1024
}

// machineCPU returns the busy and total clock ticks of all CPUs (/proc/stat "cpu" line).
func machineCPU() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	for i, v := range f[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		if i >= 8 { // guest and guest_nice are already counted in user and nice
			break
		}
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total
}

// loadAvg is the first three fields of /proc/loadavg.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// rusageSeconds is the user+system CPU of a finished child.
func rusageSeconds(ru *syscall.Rusage) float64 {
	if ru == nil {
		return 0
	}
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

// treeSyscalls is the read and write system calls (syscr + syscw of /proc/<pid>/io, summed
// over threads) made so far by pid and its descendants.
func treeSyscalls(pid int) uint64 {
	var n uint64
	for _, p := range tree(pid) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", p))
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if ok && (k == "syscr" || k == "syscw") {
				x, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
				n += x
			}
		}
	}
	return n
}
