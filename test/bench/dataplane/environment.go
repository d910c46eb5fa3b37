package main

import (
	"bufio"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// environment is what the report says about the machine and the programs measured.
type environment struct {
	Date              time.Time `json:"date"`
	Kernel            string    `json:"kernel"`
	CPU               string    `json:"cpu"`
	CPUs              int       `json:"cpus"`
	Go                string    `json:"go"`
	Versions          []string  `json:"versions"`
	Addresses         string    `json:"addresses"`
	LoadBefore        string    `json:"loadBefore"`
	IdleBefore        float64   `json:"busyBefore"` // busy vCPUs before the benchmark started anything but the topology
	IdleAfter         float64   `json:"busyAfter"`
	Note              string    `json:"note,omitempty"`
	OtherCommandsSeen []string  `json:"otherCommandsSeen,omitempty"`
}

func firstLine(argv ...string) string {
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil && len(out) == 0 {
		return argv[0] + ": " + err.Error()
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

func collectEnvironment(o options) environment {
	e := environment{Date: time.Now().UTC(), CPUs: runtime.NumCPU(), Go: runtime.Version(), LoadBefore: loadAvg(), Note: o.Note}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		e.Kernel = strings.TrimSpace(string(b))
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "model name"); ok {
				e.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
		f.Close()
	}
	e.Versions = []string{
		firstLine(o.ProxyBin, "version"),
		firstLine("nginx", "-v"),
		firstLine("haproxy", "-v"),
		"fortio " + moduleVersion(o.FortioBin),
	}
	if o.GhzBin != "" {
		e.Versions = append(e.Versions, "ghz "+moduleVersion(o.GhzBin))
	}
	e.OtherCommandsSeen = busyProcesses()
	return e
}

// busyProcesses lists the commands of other processes that used CPU over one second, so
// that the report says what else was running.
func busyProcesses() []string {
	snap := func() map[int]uint64 {
		m := map[int]uint64{}
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if t, err := procCPU(pid); err == nil {
				m[pid] = t
			}
		}
		return m
	}
	a := snap()
	time.Sleep(time.Second)
	bm := snap()
	self := os.Getpid()
	seen := map[string]bool{}
	var out []string
	for pid, t := range bm {
		if pid == self || t-a[pid] < 5 { // under 5% of a CPU
			continue
		}
		comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
		if err != nil {
			continue
		}
		c := strings.TrimSpace(string(comm))
		if !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	return out
}

// moduleVersion is the main module version a Go binary was built from (go version -m).
func moduleVersion(bin string) string {
	out, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		return "(version unknown)"
	}
	for line := range strings.SplitSeq(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "mod" {
			return f[2]
		}
	}
	return "(version unknown)"
}
