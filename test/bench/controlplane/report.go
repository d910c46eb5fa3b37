package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/trellis-mesh/trellis/controlplane/meshstate"
	"github.com/trellis-mesh/trellis/internal/kubetest"
	"github.com/trellis-mesh/trellis/internal/memlimit"
)

// Targets of issue 7.
const (
	targetP99 = 500 * time.Millisecond
	targetRSS = 500 << 20 // 0.5 GB, read as 500 MiB (the stricter reading)
)

type summary struct {
	n                  int
	p50, p90, p99, max time.Duration
}

// summarize takes nearest-rank percentiles.
func summarize(ds []time.Duration) summary {
	if len(ds) == 0 {
		return summary{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := func(p float64) time.Duration {
		i := int(p*float64(len(s))+0.999999) - 1
		return s[min(max(i, 0), len(s)-1)]
	}
	return summary{n: len(s), p50: rank(0.50), p90: rank(0.90), p99: rank(0.99), max: s[len(s)-1]}
}

type report struct {
	opts               options
	model              *meshstate.State
	started, finished  time.Time
	loadStart, loadEnd string

	objects      int
	kubeVersion  string
	setup        time.Duration
	cpReady      time.Duration
	cpLog        string
	connect      time.Duration
	connectEach  summary
	connectCPU   float64
	memIdle      memory
	memConnected memory
	memEnd       memory
	rounds       []*roundResult
	streamsEnded int
	sizes        map[string]int // type URL → bytes of one proxy's first response
	lastSizes    map[string]int // type URL → bytes of its latest response (the last round's, for RDS)

	rebuilds, rebuildSeconds  float64
	pushLatencyN, pushLatency float64
	pushes                    float64
}

func (r *report) metricsDelta(before, after map[string]float64) {
	d := func(name string) float64 { return after[name] - before[name] }
	r.rebuilds, r.rebuildSeconds = d("trellis_xds_rebuild_duration_seconds_count"), d("trellis_xds_rebuild_duration_seconds_sum")
	r.pushLatencyN, r.pushLatency = d("trellis_xds_push_latency_seconds_count"), d("trellis_xds_push_latency_seconds_sum")
	for k := range after {
		if strings.HasPrefix(k, "trellis_xds_pushes_total") {
			r.pushes += after[k] - before[k]
		}
	}
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
}

func secs(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func kib(b int) string { return fmt.Sprintf("%.0f KiB", float64(b)/(1<<10)) }

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func (r *report) markdown() string {
	var b strings.Builder
	o := r.opts
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	endpoints := 0
	for _, es := range r.model.EndpointSlices {
		endpoints += len(es.Endpoints)
	}
	host, _ := os.Hostname()
	p("# Control plane at scale: %s\n\n", r.started.UTC().Format("2006-01-02 15:04 UTC"))
	p("- Machine: %s, %d CPUs (nproc), %s, %s/%s, %s; load average %s at start, %s at the end.\n",
		host, runtime.NumCPU(), cpuModel(), runtime.GOOS, runtime.GOARCH, memTotal(), r.loadStart, r.loadEnd)
	if o.Note != "" {
		p("- Also running: %s\n", o.Note)
	}
	p("- Mesh (envtest kube-apiserver %s + etcd): %d namespaces, %d Services, %d endpoints in %d EndpointSlices, %d meshed Pods, %d TrafficSplits, %d TrafficPolicies, %d AuthorizationPolicies; %d objects written in %s.\n",
		r.kubeVersion, len(r.model.Namespaces), len(r.model.Services), endpoints, len(r.model.EndpointSlices),
		len(r.model.Pods), len(r.model.Splits), len(r.model.TrafficPolicies), len(r.model.AuthorizationPolicies), r.objects, secs(r.setup))
	binary := "`" + o.ControlPlane + "`"
	if o.Profile != "" {
		binary = "the build with pprof (test/bench/controlplane/profiled; profiles in " + o.Profile + ")"
	}
	limit := "no memory limit"
	if o.MemoryLimit != "" {
		limit = fmt.Sprintf("GOMEMLIMIT %.0f%% of a %s container limit, as in a pod with the chart's default", memlimit.Fraction*100, o.MemoryLimit)
	}
	p("- Control plane: %s as a child process (debounce %s, leader election on, user-supplied CA, %s); %d simulated proxies, each its own TLS connection, X.509-SVID and ADS stream, ACKing every response; %d rounds.\n",
		binary, o.Debounce, limit, r.connectEach.n, o.Rounds)
	p("- Run took %s. Go %s. Tree: %s.\n\n", secs(r.finished.Sub(r.started)), runtime.Version(), gitDescribe())

	all := r.allLatencies()
	worst := summary{}
	missing := 0
	for _, rr := range r.rounds {
		if rr.latency.p99 > worst.p99 {
			worst = rr.latency
		}
		missing += rr.missing
	}
	peak := max(r.memEnd.hwm, r.memConnected.hwm)
	p("## Against the targets\n\n")
	p("| target | measured | |\n| --- | --- | --- |\n")
	p("| TrafficSplit update → new route version ACKed, p99 over proxies ≤ 500 ms | %s (all rounds pooled; worst round %s; max %s) | %s |\n",
		ms(all.p99), ms(worst.p99), ms(all.max), verdict(all.p99 <= targetP99 && missing == 0))
	p("| control-plane memory ≤ 0.5 GB | peak RSS (VmHWM) %s; %s after the rounds | %s |\n\n",
		mib(peak), mib(r.memEnd.rss), verdict(peak <= targetRSS))

	p("## Propagation of a TrafficSplit weight change\n\n")
	p("Per proxy: from the update call returning to the proxy sending its ACK of the new RDS version. ")
	p("CPU: seconds used from the update until the last ACK (control plane; the benchmark process with its %d proxies; the whole machine).\n\n", r.connectEach.n)
	p("| round | weights | p50 | p90 | p99 | max | not ACKed | control plane CPU | proxies CPU | machine CPU | control plane RSS |\n")
	p("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	var cpu float64
	for i, rr := range r.rounds {
		cpu += rr.cpCPU
		p("| %d | %d/%d | %s | %s | %s | %s | %d | %.2f s | %.2f s | %.2f s | %s |\n", i+1, rr.weights[0], rr.weights[1],
			ms(rr.latency.p50), ms(rr.latency.p90), ms(rr.latency.p99), ms(rr.latency.max), rr.missing, rr.cpCPU, rr.selfCPU, rr.machineCPU, mib(rr.mem.rss))
	}
	p("| all | | %s | %s | %s | %s | %d | %.2f s per push | | | |\n\n", ms(all.p50), ms(all.p90), ms(all.p99), ms(all.max), missing, cpu/float64(max(len(r.rounds), 1)))
	if r.rebuilds > 0 {
		p("Control plane's own metrics over the rounds: %.0f rebuilds, mean rebuild (translate and marshal the shared resources; each stream then adds its proxy's own) %s", r.rebuilds, ms(time.Duration(r.rebuildSeconds/r.rebuilds*float64(time.Second))))
		if r.pushLatencyN > 0 {
			p(", mean change-to-generation %s (a change after a quiet spell is not debounced; one within %s of the last generation is)", ms(time.Duration(r.pushLatency/r.pushLatencyN*float64(time.Second))), o.Debounce)
		}
		p("; %.0f responses sent.\n", r.pushes)
	}
	var checked, wrong int64
	for _, rr := range r.rounds {
		checked += rr.verified + rr.mismatched
		wrong += rr.mismatched
	}
	if checked > 0 {
		p("Content check: %d routes (every %d-th proxy, each round) decoded; %d had other weights than the update's.\n", checked, o.VerifyEvery, wrong)
	}
	if rds := r.sizes[resourcev3.RouteType]; rds > 0 {
		last := r.lastSizes[resourcev3.RouteType]
		p("Sizes of one proxy's initial responses: CDS %s, EDS %s, LDS %s, RDS %s. The last round's RDS response was %d bytes (only the changed route configuration is sent), so one weight change is %d × %d bytes = %s of RDS on the wire.\n",
			kib(r.sizes[resourcev3.ClusterType]), kib(r.sizes[resourcev3.EndpointType]), kib(r.sizes[resourcev3.ListenerType]), kib(rds),
			last, r.connectEach.n, last, kib(last*r.connectEach.n))
	}
	if r.streamsEnded > 0 {
		p("**%d streams ended during the run.**\n", r.streamsEnded)
	}
	p("\n## Start and connect\n\n")
	p("| phase | time | control plane |\n| --- | ---: | --- |\n")
	p("| start → ready (caches synced, model primed, first generation, xDS served) | %s | RSS %s |\n", secs(r.cpReady), mib(r.memIdle.rss))
	p("| %d proxies connect (%d at a time) and ACK their initial CDS, EDS, LDS, RDS | %s (per proxy p50 %s, p99 %s) | %.1f s CPU; RSS %s |\n\n",
		r.connectEach.n, o.Dialers, secs(r.connect), ms(r.connectEach.p50), ms(r.connectEach.p99), r.connectCPU, mib(r.memConnected.rss))
	return b.String()
}

func (r *report) allLatencies() summary {
	var all []time.Duration
	for _, rr := range r.rounds {
		all = append(all, rr.perProxy...)
	}
	return summarize(all)
}

// write stores the report as controlplane-<date>.md and controlplane-latest.md.
func (r *report) write(text string) ([]string, error) {
	if err := os.MkdirAll(r.opts.Results, 0o755); err != nil {
		return nil, err
	}
	paths := []string{
		filepath.Join(r.opts.Results, "controlplane-"+r.started.UTC().Format("2006-01-02")+".md"),
		filepath.Join(r.opts.Results, "controlplane-latest.md"),
	}
	for _, path := range paths {
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			return nil, err
		}
	}
	return paths, nil
}

// gitDescribe names the commit the benchmark ran from.
func gitDescribe() string {
	out, err := exec.Command("git", "-C", kubetest.RepoRoot(), "describe", "--always", "--dirty").Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}
