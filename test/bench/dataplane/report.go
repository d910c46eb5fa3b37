package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// The targets of issue 7, checked in the report's last table.
const (
	targetLatencyRatio = 0.9  // Trellis added p50 and p99 ≤ 0.9× the best peer's
	targetCPU          = 0.12 // vCPU per 1000 rps for the pair
	targetRSS          = 15e6 // bytes per sidecar at 1000 rps
)

var peers = []string{"nginx", "haproxy"}

// agg is one target's figures over every run of one kind.
type agg struct {
	present      bool
	P            map[string]float64 // pooled over the rounds
	Added        map[string]float64 // P minus direct's P
	RoundAdded   map[string][]float64
	RPS          float64 // mean achieved
	Requests     int
	Errors       int
	ClientCPU    float64 // seconds, summed
	ServerCPU    float64
	BackendCPU   float64
	LoadgenCPU   float64
	Seconds      float64
	MachineBusy  float64
	Wall         float64
	ClientSys    uint64
	ServerSys    uint64
	RoundsMerged int
}

// perK is CPU seconds per 1000 requests (= vCPU per 1000 rps).
func (a agg) perK(sec float64) float64 {
	if a.Requests == 0 {
		return math.NaN()
	}
	return sec / float64(a.Requests) * 1000
}

// perReq is n per request.
func (a agg) perReq(n uint64) float64 {
	if a.Requests == 0 {
		return math.NaN()
	}
	return float64(n) / float64(a.Requests)
}

func aggregate(records []runRecord, kind, target string) agg {
	a := agg{P: map[string]float64{}, Added: map[string]float64{}, RoundAdded: map[string][]float64{}}
	var lat []float64
	direct := map[int]runRecord{}
	for _, r := range records {
		if r.Kind == kind && r.Target == "direct" {
			direct[r.Round] = r
		}
	}
	for _, r := range records {
		if r.Kind != kind || r.Target != target {
			continue
		}
		a.present = true
		a.RoundsMerged++
		lat = append(lat, r.Latencies...)
		a.RPS += r.RPS
		a.Requests += r.Requests
		a.Errors += r.Errors
		a.ClientCPU += r.ClientCPU
		a.ServerCPU += r.ServerCPU
		a.BackendCPU += r.BackendCPU
		a.LoadgenCPU += r.LoadgenCPU
		a.Seconds += r.Seconds
		a.MachineBusy += r.MachineBusy
		a.Wall += r.Wall
		a.ClientSys += r.ClientSyscalls
		a.ServerSys += r.ServerSyscalls
		if d, ok := direct[r.Round]; ok {
			for k, v := range r.P {
				a.RoundAdded[k] = append(a.RoundAdded[k], v-d.P[k])
			}
		}
		if len(r.Latencies) == 0 { // histogram percentiles: keep the last run's
			maps(a.P, r.P)
		}
	}
	if a.RoundsMerged > 0 {
		a.RPS /= float64(a.RoundsMerged)
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		a.P = percentilesOf(lat)
	}
	return a
}

func maps(dst, src map[string]float64) {
	for k, v := range src {
		dst[k] = v
	}
}

// report is the rendered Markdown and what it was made from.
type report struct {
	Markdown string
	Env      environment
}

func buildReport(o options, env environment, records []runRecord, rss rssAll) report {
	var w strings.Builder
	names := []string{"direct"}
	for _, t := range o.Targets {
		if t != "direct" && !slices.Contains(names, t) {
			names = append(names, t)
		}
	}
	fixed := map[string]agg{}
	for _, n := range names {
		fixed[n] = aggregate(records, "fixed", n)
	}
	for _, n := range names {
		for k, v := range fixed[n].P {
			fixed[n].Added[k] = v - fixed["direct"].P[k]
		}
	}

	fmt.Fprintf(&w, "# Data-plane benchmark, %s\n\n", env.Date.Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&w, "Load: fortio, HTTP/1.1 keep-alive, 1 KiB responses. Client side (load generator and client-side proxy) on CPU %s, server side (server-side proxy and backend) on CPU %s. ",
		orAny(o.ClientCPUs), orAny(o.ServerCPUs))
	fmt.Fprintf(&w, "Latency percentiles are exact, from every request (fortio's access log); \"added\" is the target's percentile minus direct's over the same rounds.\n\n")

	fmt.Fprintf(&w, "## Fixed rate: %d rps, %d connections, %d rounds × %s, interleaved\n\n", o.QPS, o.Conns, o.Rounds, o.Duration)
	w.WriteString("| target | p50 | p90 | p99 | p99.9 | added p50 | added p90 | added p99 | added p99.9 | achieved rps | errors |\n")
	w.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, n := range names {
		a := fixed[n]
		if !a.present {
			continue
		}
		fmt.Fprintf(&w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %.0f | %d |\n", n,
			usf(a.P["50"]), usf(a.P["90"]), usf(a.P["99"]), usf(a.P["99.9"]),
			added(n, a.Added["50"]), added(n, a.Added["90"]), added(n, a.Added["99"]), added(n, a.Added["99.9"]), a.RPS, a.Errors)
	}
	if t, ok := fixed["trellis"]; ok && t.present {
		w.WriteString("| **Trellis ÷ best peer** | | | | |")
		for _, k := range []string{"50", "90", "99", "99.9"} {
			r, peer := ratioToBest(fixed, k, func(a agg, k string) float64 { return a.Added[k] }, false)
			fmt.Fprintf(&w, " %s |", ratioCell(r, peer))
		}
		w.WriteString(" | |\n")
	}
	w.WriteString("\nAdded latency round by round (p50 / p99, µs):")
	for _, n := range names[1:] {
		a := fixed[n]
		fmt.Fprintf(&w, " %s %s / %s;", n, joinUS(a.RoundAdded["50"]), joinUS(a.RoundAdded["99"]))
	}
	w.WriteString("\n\n")

	fmt.Fprintf(&w, "## Proxy cost at %d rps\n\n", o.QPS)
	w.WriteString("CPU seconds per 1000 requests, from `/proc/<pid>/stat` (utime+stime of the proxy and its children) over the fixed-rate runs; the same number is vCPU per 1000 rps. Peak RSS is VmHWM after the fixed-rate rounds, summed over the side's processes (nginx: master + worker, which share their mapped files); in brackets the anonymous (private) part then (RssAnon), the rest being the mapped binary and libraries. Syscalls: read and write calls per request from `/proc/<pid>/io` (send/recv are not counted there, so HAProxy shows none).\n\n")
	w.WriteString("| pair | CPU client side | CPU server side | CPU pair | peak RSS client side | peak RSS server side | read+write syscalls per request (client / server) | backend CPU | load generator CPU |\n")
	w.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, n := range names {
		a := fixed[n]
		if !a.present {
			continue
		}
		r := rss.Fixed[n]
		if n == "direct" {
			fmt.Fprintf(&w, "| direct | – | – | – | – | – | – | %.3f | %.3f |\n", a.perK(a.BackendCPU), a.perK(a.LoadgenCPU))
			continue
		}
		sys := "–"
		if a.ClientSys+a.ServerSys > 0 {
			sys = fmt.Sprintf("%.1f / %.1f", a.perReq(a.ClientSys), a.perReq(a.ServerSys))
		}
		fmt.Fprintf(&w, "| %s | %.3f | %.3f | **%.3f** | %s | %s | %s | %.3f | %.3f |\n", n, a.perK(a.ClientCPU), a.perK(a.ServerCPU),
			a.perK(a.ClientCPU+a.ServerCPU), memCell(r[0]), memCell(r[1]), sys, a.perK(a.BackendCPU), a.perK(a.LoadgenCPU))
	}
	if t, ok := fixed["trellis"]; ok && t.present {
		cpuR, cpuPeer := ratioToBest(fixed, "", func(a agg, _ string) float64 { return a.perK(a.ClientCPU + a.ServerCPU) }, false)
		rssR, rssPeer := bestRSSRatio(rss.Fixed)
		fmt.Fprintf(&w, "| **Trellis ÷ best peer** | | | %s | %s | | | | |\n", ratioCell(cpuR, cpuPeer), ratioCell(rssR, rssPeer))
	}
	w.WriteString("\n")

	sat := map[string]agg{}
	if o.SatDuration > 0 {
		fmt.Fprintf(&w, "## Saturation: as fast as %d connections go, %s each\n\n", o.SatConns, o.SatDuration)
		w.WriteString("Percentiles from fortio's histogram. The client side's CPU is shared by the load generator and the client-side proxy.\n\n")
		w.WriteString("| target | achieved rps | ÷ direct | errors | p50 | p99 | CPU pair per 1000 req | peak RSS client / server (end of run) |\n")
		w.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		for _, n := range names {
			a := aggregate(records, "saturation", n)
			sat[n] = a
			if !a.present {
				continue
			}
			cpu, mem := "–", "–"
			if n != "direct" {
				cpu = fmt.Sprintf("%.3f", a.perK(a.ClientCPU+a.ServerCPU))
				mem = mb(rss.End[n][0].HWM) + " / " + mb(rss.End[n][1].HWM)
			}
			fmt.Fprintf(&w, "| %s | %.0f | %.2f | %d | %s | %s | %s | %s |\n", n, a.RPS, a.RPS/sat["direct"].RPS, a.Errors, usf(a.P["50"]), usf(a.P["99"]), cpu, mem)
		}
		if t, ok := sat["trellis"]; ok && t.present {
			r, peer := ratioToBest(sat, "", func(a agg, _ string) float64 { return a.RPS }, true)
			fmt.Fprintf(&w, "| **Trellis ÷ best peer** | %s | | | | | | |\n", ratioCell(r, peer))
		}
		w.WriteString("\n")
	}

	grpcAgg := map[string]agg{}
	if o.GhzBin != "" && o.GRPCDuration > 0 {
		for _, n := range names {
			grpcAgg[n] = aggregate(records, "grpc", n)
		}
		fmt.Fprintf(&w, "## gRPC: ghz, unary, 1 KiB responses, %d rps, %d connections, %s\n\n", o.GRPCRPS, o.GRPCConns, o.GRPCDuration)
		w.WriteString("nginx: `grpc_pass` over HTTP/2 and mTLS; HAProxy: HTTP/2 on both hops; Trellis: HTTP/2 between the sidecars. Exact percentiles from every request.\n\n")
		w.WriteString("| target | p50 | p90 | p99 | p99.9 | added p50 | added p99 | achieved rps | errors | CPU pair per 1000 req |\n")
		w.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		for _, n := range names {
			a := grpcAgg[n]
			if !a.present {
				continue
			}
			for k, v := range a.P {
				a.Added[k] = v - grpcAgg["direct"].P[k]
			}
			cpu := "–"
			if n != "direct" {
				cpu = fmt.Sprintf("%.3f", a.perK(a.ClientCPU+a.ServerCPU))
			}
			fmt.Fprintf(&w, "| %s | %s | %s | %s | %s | %s | %s | %.0f | %d | %s |\n", n, usf(a.P["50"]), usf(a.P["90"]), usf(a.P["99"]), usf(a.P["99.9"]),
				added(n, a.Added["50"]), added(n, a.Added["99"]), a.RPS, a.Errors, cpu)
		}
		w.WriteString("\n")
	}

	if t, ok := fixed["trellis"]; ok && t.present {
		writeTargets(&w, o, fixed, sat, rss)
	}

	w.WriteString("## Where and what\n\n")
	fmt.Fprintf(&w, "- Machine: %s, %d CPUs, kernel %s, %s.\n", env.CPU, env.CPUs, env.Kernel, env.Go)
	fmt.Fprintf(&w, "- Placement (taskset): load generator and client-side proxies on CPU %s; server-side proxies and backend on CPU %s. nginx runs that many workers, HAProxy that many threads, the Go sidecars and backend get GOMAXPROCS from the affinity.\n", orAny(o.ClientCPUs), orAny(o.ServerCPUs))
	fmt.Fprintf(&w, "- Network: %s.\n", env.Addresses)
	fmt.Fprintf(&w, "- Versions: %s.\n", strings.Join(env.Versions, "; "))
	fmt.Fprintf(&w, "- Machine busy before the runs: %.2f vCPU (load average %s), after: %.2f vCPU.", env.IdleBefore, env.LoadBefore, env.IdleAfter)
	if len(env.OtherCommandsSeen) > 0 {
		fmt.Fprintf(&w, " Other programs using CPU at the start: %s.", strings.Join(env.OtherCommandsSeen, ", "))
	}
	if fx := fixed["direct"]; fx.present {
		var busy, secs, ours float64
		for _, n := range names {
			a := fixed[n]
			busy += a.MachineBusy
			secs += a.Wall
			ours += a.ClientCPU + a.ServerCPU + a.BackendCPU + a.LoadgenCPU
		}
		fmt.Fprintf(&w, " During the fixed-rate runs the machine was %.2f vCPU busy on average, of which %.2f vCPU the measured processes (the rest: kernel network work, idle proxies, anything else).", busy/secs, ours/secs)
	}
	w.WriteString("\n")
	if env.Note != "" {
		fmt.Fprintf(&w, "- Note: %s\n", env.Note)
	}
	return report{Markdown: w.String(), Env: env}
}

func writeTargets(w *strings.Builder, o options, fixed, sat map[string]agg, rss rssAll) {
	t := fixed["trellis"]
	w.WriteString("## Targets (issue 7)\n\n")
	w.WriteString("| target | Trellis | requirement | status | gap |\n| --- | ---: | ---: | --- | --- |\n")
	for _, k := range []string{"50", "99"} {
		best, peer := math.Inf(1), ""
		for _, p := range peers {
			if a, ok := fixed[p]; ok && a.present && a.Added[k] < best {
				best, peer = a.Added[k], p
			}
		}
		if peer == "" {
			continue
		}
		limit := targetLatencyRatio * best
		fmt.Fprintf(w, "| added p%s ≤ 0.9 × best peer (%s, %s) | %s | ≤ %s | %s | %s |\n", k, peer, added(peer, best), added("trellis", t.Added[k]),
			strings.TrimPrefix(added(peer, limit), "+"), status(t.Added[k] <= limit), gapUS(t.Added[k], limit))
	}
	cpu := t.perK(t.ClientCPU + t.ServerCPU)
	fmt.Fprintf(w, "| proxy CPU, pair, at %d rps | %.3f vCPU per 1000 rps | ≤ %.2f | %s | %s |\n", o.QPS, cpu, targetCPU, status(cpu <= targetCPU), gapRel(cpu, targetCPU))
	r := rss.Fixed["trellis"]
	worst := max(r[0].HWM, r[1].HWM)
	fmt.Fprintf(w, "| peak RSS per sidecar at %d rps | client %s, server %s | ≤ 15 MB | %s | %s |\n", o.QPS, mb(r[0].HWM), mb(r[1].HWM), status(float64(worst) <= targetRSS), gapRel(float64(worst), targetRSS))
	if st, ok := sat["trellis"]; ok && st.present {
		if ng, ok := sat["nginx"]; ok && ng.present {
			fmt.Fprintf(w, "| saturation throughput ≥ nginx pair | %.0f rps | ≥ %.0f rps | %s | %s |\n", st.RPS, ng.RPS, status(st.RPS >= ng.RPS),
				fmt.Sprintf("%.2f× nginx", st.RPS/ng.RPS))
		}
	}
	w.WriteString("\n")
}

func status(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func gapUS(v, limit float64) string {
	d := (v - limit) * 1e6
	if d <= 0 {
		return fmt.Sprintf("%.0f µs to spare", -d)
	}
	return fmt.Sprintf("%.0f µs over", d)
}

func gapRel(v, limit float64) string {
	if v <= limit {
		return fmt.Sprintf("%.0f%% under", (1-v/limit)*100)
	}
	return fmt.Sprintf("%.0f%% over (%.2f×)", (v/limit-1)*100, v/limit)
}

// ratioToBest is Trellis's value over the best peer's (the lowest, or the highest when
// higherIsBetter) and that peer's name.
func ratioToBest(m map[string]agg, k string, val func(agg, string) float64, higherIsBetter bool) (float64, string) {
	t, ok := m["trellis"]
	if !ok || !t.present {
		return math.NaN(), ""
	}
	best, peer := math.NaN(), ""
	for _, p := range peers {
		a, ok := m[p]
		if !ok || !a.present {
			continue
		}
		v := val(a, k)
		if peer == "" || (higherIsBetter && v > best) || (!higherIsBetter && v < best) {
			best, peer = v, p
		}
	}
	return val(t, k) / best, peer
}

func bestRSSRatio(s rssSnapshot) (float64, string) {
	t, ok := s["trellis"]
	if !ok {
		return math.NaN(), ""
	}
	best, peer := int64(0), ""
	for _, p := range peers {
		if r, ok := s[p]; ok && (peer == "" || r[0].HWM+r[1].HWM < best) {
			best, peer = r[0].HWM+r[1].HWM, p
		}
	}
	return float64(t[0].HWM+t[1].HWM) / float64(best), peer + ", pair total"
}

func ratioCell(r float64, peer string) string {
	if peer == "" || math.IsNaN(r) || math.IsInf(r, 0) || r < 0 {
		return "–" // no peer, or a peer that added nothing (noise): no meaningful ratio
	}
	return fmt.Sprintf("**%.2f** (%s)", r, peer)
}

func usf(sec float64) string {
	if math.IsNaN(sec) {
		return "–"
	}
	return fmt.Sprintf("%.0f µs", sec*1e6)
}

func added(target string, sec float64) string {
	if target == "direct" {
		return "–"
	}
	if math.IsNaN(sec) {
		return "–"
	}
	return fmt.Sprintf("%+.0f µs", sec*1e6)
}

func joinUS(xs []float64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprintf("%+.0f", x*1e6)
	}
	return strings.Join(s, ",")
}

func memCell(m sideMem) string {
	if m.HWM == 0 {
		return "–"
	}
	return fmt.Sprintf("%s (%s)", mb(m.HWM), mb(m.Anon))
}

func mb(b int64) string {
	if b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f MB", float64(b)/1e6)
}

func orAny(cpus string) string {
	if cpus == "" {
		return "any (not pinned)"
	}
	return cpus
}

// writeReport writes dataplane-<date>.md, dataplane-latest.md and dataplane-<date>.json to
// dir, and prints the Markdown.
func writeReport(rep report, dir string, records []runRecord, stdout io.Writer) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	stamp := rep.Env.Date.Format("2006-01-02T1504Z")
	md := filepath.Join(dir, "dataplane-"+stamp+".md")
	for _, p := range []string{md, filepath.Join(dir, "dataplane-latest.md")} {
		if err := os.WriteFile(p, []byte(rep.Markdown), 0o644); err != nil {
			return err
		}
	}
	raw, err := json.MarshalIndent(struct {
		Env  environment `json:"environment"`
		Runs []runRecord `json:"runs"`
	}{rep.Env, records}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "dataplane-"+stamp+".json"), raw, 0o644); err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\nwritten: %s and dataplane-latest.md\n", rep.Markdown, md)
	return err
}
