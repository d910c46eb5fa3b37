package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// loadResult is what one load-generator run measured.
type loadResult struct {
	Requests int     `json:"requests"` // completed (ok or not)
	Errors   int     `json:"errors"`   // not HTTP 200 / gRPC OK, connection errors included
	Seconds  float64 `json:"seconds"`  // actual duration
	RPS      float64 `json:"rps"`      // achieved, all requests
	// Latencies in seconds, sorted; kept out of the JSON record (percentiles are there).
	Latencies []float64 `json:"-"`
	// Percentiles (50, 90, 99, 99.9) in seconds, exact from every request's latency when
	// Latencies is set, else the load generator's histogram.
	P map[string]float64 `json:"p"`
	// LoadgenCPU is the CPU seconds the load generator itself used.
	LoadgenCPU float64 `json:"loadgenCPU"`
}

var percentiles = []float64{50, 90, 99, 99.9}

func pkey(p float64) string { return strconv.FormatFloat(p, 'f', -1, 64) }

// percentile of sorted xs by linear interpolation between closest ranks.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	r := p / 100 * float64(len(xs)-1)
	lo := int(math.Floor(r))
	hi := min(lo+1, len(xs)-1)
	return xs[lo] + (xs[hi]-xs[lo])*(r-float64(lo))
}

func percentilesOf(sorted []float64) map[string]float64 {
	m := map[string]float64{}
	for _, p := range percentiles {
		m[pkey(p)] = percentile(sorted, p)
	}
	return m
}

// fortioRun is one `fortio load`: fixed rate (qps > 0) with every request's latency from
// its access log, or saturation (qps 0: as fast as the connections go) with the histogram.
type fortioRun struct {
	bin       string
	at        placement
	url       string
	qps       int
	conns     int
	duration  time.Duration
	out       string // file prefix for the JSON result and the access log
	accessLog bool
}

func (f fortioRun) run(ctx context.Context) (loadResult, error) {
	jsonPath, logPath := f.out+".json", f.out+".access.jsonl"
	argv := []string{f.bin, "load", "-quiet", "-json", jsonPath,
		"-qps", strconv.Itoa(f.qps), "-c", strconv.Itoa(f.conns), "-t", f.duration.String(),
		"-r", "0.00001", "-p", "50,90,99,99.9", "-timeout", "5s", "-allow-initial-errors"}
	if f.accessLog {
		argv = append(argv, "-access-log-file", logPath, "-access-log-format", "json")
	}
	argv = append(argv, f.url)
	rctx, cancel := context.WithTimeout(ctx, f.duration+time.Minute)
	defer cancel()
	out, ru, err := runOnce(rctx, f.at, nil, argv...)
	if err != nil {
		return loadResult{}, fmt.Errorf("fortio %s: %w\n%s", f.url, err, tail(out, 2000))
	}
	var res struct {
		ActualQPS         float64
		ActualDuration    int64 // ns
		RetCodes          map[string]int
		DurationHistogram struct {
			Count       int
			Percentiles []struct{ Percentile, Value float64 }
		}
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		return loadResult{}, err
	}
	if err := json.Unmarshal(b, &res); err != nil {
		return loadResult{}, fmt.Errorf("fortio's %s: %w", jsonPath, err)
	}
	r := loadResult{
		Requests: res.DurationHistogram.Count, Errors: res.DurationHistogram.Count - res.RetCodes["200"],
		Seconds: float64(res.ActualDuration) / 1e9, RPS: res.ActualQPS, P: map[string]float64{},
		LoadgenCPU: rusageSeconds(ru),
	}
	for _, p := range res.DurationHistogram.Percentiles {
		r.P[pkey(p.Percentile)] = p.Value
	}
	if f.accessLog {
		if r.Latencies, err = readAccessLog(logPath); err != nil {
			return r, err
		}
		r.P = percentilesOf(r.Latencies)
		_ = os.Remove(logPath) // 30k lines a round; the percentiles are kept
	}
	return r, nil
}

// readAccessLog returns the sorted latencies of fortio's JSON access log.
func readAccessLog(path string) ([]float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lat []float64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e struct {
			Latency float64 `json:"latency"`
		}
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		lat = append(lat, e.Latency)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	slices.Sort(lat)
	return lat, nil
}

// ghzRun is one ghz run of trellis.bench.Bench/Get at a fixed rate (rps > 0) or as fast as
// it goes, plaintext (h2c) to the client side.
type ghzRun struct {
	bin, proto string
	at         placement
	addr       string
	rps        int
	conns      int
	duration   time.Duration
	out        string
}

func (g ghzRun) run(ctx context.Context) (loadResult, error) {
	jsonPath := g.out + ".json"
	argv := []string{g.bin, "--insecure", "--proto", g.proto, "--call", "trellis.bench.Bench.Get",
		"-d", `{"value":""}`, "-c", strconv.Itoa(g.conns), "--connections", strconv.Itoa(g.conns),
		"-z", g.duration.String(), "--duration-stop", "wait", "-t", "5s", "-O", "json", "-o", jsonPath}
	if g.rps > 0 {
		argv = append(argv, "--rps", strconv.Itoa(g.rps))
	}
	argv = append(argv, g.addr)
	rctx, cancel := context.WithTimeout(ctx, g.duration+time.Minute)
	defer cancel()
	out, ru, err := runOnce(rctx, g.at, nil, argv...)
	if err != nil {
		return loadResult{}, fmt.Errorf("ghz %s: %w\n%s", g.addr, err, tail(out, 2000))
	}
	var res struct {
		Count   int     `json:"count"`
		Total   int64   `json:"total"` // ns
		RPS     float64 `json:"rps"`
		Details []struct {
			Latency int64  `json:"latency"` // ns
			Status  string `json:"status"`
		} `json:"details"`
		StatusCodeDistribution map[string]int `json:"statusCodeDistribution"`
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		return loadResult{}, err
	}
	if err := json.Unmarshal(b, &res); err != nil {
		return loadResult{}, fmt.Errorf("ghz's %s: %w", jsonPath, err)
	}
	r := loadResult{Requests: res.Count, Errors: res.Count - res.StatusCodeDistribution["OK"],
		Seconds: float64(res.Total) / 1e9, RPS: res.RPS, LoadgenCPU: rusageSeconds(ru)}
	for _, d := range res.Details {
		r.Latencies = append(r.Latencies, float64(d.Latency)/1e9)
	}
	slices.Sort(r.Latencies)
	r.P = percentilesOf(r.Latencies)
	// The details are every request; keep the summary only.
	_ = os.WriteFile(jsonPath, []byte(strings.TrimSpace(fmt.Sprintf(`{"count":%d,"rps":%f,"errors":%d}`, r.Requests, r.RPS, r.Errors))+"\n"), 0o644)
	return r, nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

func fileBase(dir string, parts ...string) string {
	return filepath.Join(dir, strings.Join(parts, "-"))
}
