package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// sideMem is one side of a pair: peak RSS (VmHWM) and, at the time of the snapshot, the
// anonymous (private) part of the RSS (RssAnon: heap, stacks; the rest is mapped files,
// the binary and its libraries), in bytes, summed over the side's processes.
type sideMem struct{ HWM, Anon int64 }

// rssSnapshot is the memory of the client and server side of each pair.
type rssSnapshot map[string][2]sideMem

// rssAll holds the snapshot taken after the fixed-rate rounds (the "at 1000 rps" figure)
// and the one at the end (after saturation and gRPC).
type rssAll struct{ Fixed, End rssSnapshot }

func (b *bench) snapshotRSS() rssSnapshot {
	s := rssSnapshot{}
	mem := func(p *process) sideMem { return sideMem{HWM: treeHWM(p.pid()), Anon: treeAnon(p.pid())} }
	for _, t := range b.targets {
		if t.client != nil {
			s[t.name] = [2]sideMem{mem(t.client), mem(t.server)}
		}
	}
	return s
}

// measure runs the warm-up, the fixed-rate rounds, the saturation runs and the gRPC runs.
func (b *bench) measure(ctx context.Context) error {
	o := b.o
	raw := filepath.Join(b.work, "raw")
	if err := os.MkdirAll(raw, 0o755); err != nil {
		return err
	}
	b.env.IdleBefore = idleSample(3 * time.Second)
	b.log.Info("machine before the runs", "busy vCPU", fmt.Sprintf("%.2f", b.env.IdleBefore), "load", loadAvg())

	for _, t := range b.targets {
		f := b.fortio(t, o.QPS, o.Conns, o.Warmup, fileBase(raw, "warmup", t.name), false)
		if _, err := f.run(ctx); err != nil {
			return fmt.Errorf("warm-up of %s: %w", t.name, err)
		}
	}
	n := len(b.targets)
	for r := range o.Rounds {
		for i := range n {
			t := b.targets[(i+r)%n] // a rotating order: no target always runs first or last
			f := b.fortio(t, o.QPS, o.Conns, o.Duration, fileBase(raw, "fixed", t.name, strconv.Itoa(r+1)), true)
			if err := b.one(ctx, t, "fixed", r+1, f.run); err != nil {
				return err
			}
		}
	}
	b.rssData.Fixed = b.snapshotRSS()
	if o.ProfileDir != "" {
		if err := b.profile(ctx, raw); err != nil {
			b.log.Warn("profiling failed", "error", err)
		}
	}
	if o.SatDuration > 0 {
		for _, t := range b.targets {
			f := b.fortio(t, 0, o.SatConns, o.SatDuration, fileBase(raw, "saturation", t.name), false)
			if err := b.one(ctx, t, "saturation", 1, f.run); err != nil {
				return err
			}
		}
	}
	if o.GhzBin != "" && o.GRPCDuration > 0 {
		proto := filepath.Join(b.work, "bench.proto")
		for _, t := range b.targets {
			warm := ghzRun{bin: o.GhzBin, proto: proto, at: b.clientAt, addr: t.grpcAddr, rps: o.GRPCRPS, conns: o.GRPCConns,
				duration: min(o.Warmup, 2*time.Second), out: fileBase(raw, "grpc-warmup", t.name)}
			if _, err := warm.run(ctx); err != nil {
				return fmt.Errorf("gRPC warm-up of %s: %w", t.name, err)
			}
		}
		for _, t := range b.targets {
			g := ghzRun{bin: o.GhzBin, proto: proto, at: b.clientAt, addr: t.grpcAddr, rps: o.GRPCRPS, conns: o.GRPCConns,
				duration: o.GRPCDuration, out: fileBase(raw, "grpc", t.name)}
			if err := b.one(ctx, t, "grpc", 1, g.run); err != nil {
				return err
			}
		}
	}
	b.rssData.End = b.snapshotRSS()
	b.env.IdleAfter = idleSample(3 * time.Second)
	return nil
}

func (b *bench) fortio(t *target, qps, conns int, d time.Duration, out string, accessLog bool) fortioRun {
	return fortioRun{bin: b.o.FortioBin, at: b.clientAt, url: t.url, qps: qps, conns: conns, duration: d, out: out, accessLog: accessLog}
}

// one runs fn against t and records it with the CPU the proxies, the backend and the
// machine used meanwhile.
func (b *bench) one(ctx context.Context, t *target, kind string, round int, fn func(context.Context) (loadResult, error)) error {
	for _, p := range []*process{t.client, t.server, b.backend} {
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited before the %s run of %s: %v\n%s", p.name, kind, t.name, p.err, tail(p.out.String(), 3000))
		}
	}
	cpu := func() (c, s, be float64) {
		if t.client != nil {
			c, s = treeCPU(t.client.pid()), treeCPU(t.server.pid())
		}
		return c, s, treeCPU(b.backend.pid())
	}
	sys := func() (c, s uint64) {
		if t.client != nil {
			c, s = treeSyscalls(t.client.pid()), treeSyscalls(t.server.pid())
		}
		return c, s
	}
	c0, s0, be0 := cpu()
	cs0, ss0 := sys()
	busy0, _ := machineCPU()
	startAt := time.Now()
	res, err := fn(ctx)
	if err != nil {
		return fmt.Errorf("%s run %d of %s: %w", kind, round, t.name, err)
	}
	busy1, _ := machineCPU()
	c1, s1, be1 := cpu()
	cs1, ss1 := sys()
	rec := runRecord{Target: t.name, Kind: kind, Round: round, Start: startAt, loadResult: res,
		ClientCPU: c1 - c0, ServerCPU: s1 - s0, BackendCPU: be1 - be0, MachineBusy: float64(busy1-busy0) / clockTicks, Wall: time.Since(startAt).Seconds(),
		ClientSyscalls: cs1 - cs0, ServerSyscalls: ss1 - ss0}
	b.records = append(b.records, rec)
	b.log.Info("run", "kind", kind, "round", round, "target", t.name,
		"rps", fmt.Sprintf("%.0f", res.RPS), "errors", res.Errors,
		"p50", us(res.P["50"]), "p99", us(res.P["99"]), "p99.9", us(res.P["99.9"]),
		"proxyCPU", fmt.Sprintf("%.2fs+%.2fs", rec.ClientCPU, rec.ServerCPU), "machineBusy", fmt.Sprintf("%.1fs", rec.MachineBusy))
	time.Sleep(500 * time.Millisecond)
	return nil
}

// profile takes CPU and heap profiles of both sidecars during an extra fixed-rate trellis
// run (not in the report's tables): the sidecars must be test/bench/proxyprof builds.
func (b *bench) profile(ctx context.Context, raw string) error {
	var t *target
	for _, x := range b.targets {
		if x.name == "trellis" {
			t = x
		}
	}
	if t == nil {
		return nil
	}
	if err := os.MkdirAll(b.o.ProfileDir, 0o755); err != nil {
		return err
	}
	secs := max(int(b.o.Duration.Seconds())-2, 1)
	errc := make(chan error, 2)
	for _, side := range []struct {
		name string
		at   placement
	}{{"client", b.clientAt}, {"server", b.serverAt}} {
		go func() {
			at := placement{ns: side.at.ns}
			url := fmt.Sprintf("http://127.0.0.1:6060/debug/pprof/profile?seconds=%d", secs)
			out, _, err := runOnce(ctx, at, nil, b.self, "fetch", url, filepath.Join(b.o.ProfileDir, "trellis-"+side.name+".cpu.pprof"))
			if err != nil {
				err = fmt.Errorf("%s: %w: %s", side.name, err, out)
			}
			errc <- err
		}()
	}
	f := b.fortio(t, b.o.QPS, b.o.Conns, b.o.Duration, fileBase(raw, "profile", t.name), false)
	if _, err := f.run(ctx); err != nil {
		return err
	}
	for range 2 {
		if err := <-errc; err != nil {
			return err
		}
	}
	for _, side := range []struct {
		name string
		at   placement
	}{{"client", b.clientAt}, {"server", b.serverAt}} {
		for _, kind := range []string{"heap", "allocs"} {
			url := "http://127.0.0.1:6060/debug/pprof/" + kind
			if out, _, err := runOnce(ctx, placement{ns: side.at.ns}, nil, b.self, "fetch", url, filepath.Join(b.o.ProfileDir, "trellis-"+side.name+"."+kind+".pprof")); err != nil {
				return fmt.Errorf("%s %s: %w: %s", side.name, kind, err, out)
			}
		}
	}
	b.log.Info("profiles written", "dir", b.o.ProfileDir)
	return nil
}

// idleSample is the machine's busy vCPUs over d.
func idleSample(d time.Duration) float64 {
	b0, _ := machineCPU()
	time.Sleep(d)
	b1, _ := machineCPU()
	return float64(b1-b0) / clockTicks / d.Seconds()
}

func us(sec float64) string { return fmt.Sprintf("%.0fµs", sec*1e6) }
