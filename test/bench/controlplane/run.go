package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	splitv1alpha4 "github.com/trellis-mesh/trellis/api/split/v1alpha4"
	"github.com/trellis-mesh/trellis/controlplane/identity"
	"github.com/trellis-mesh/trellis/controlplane/meshstate"
	"github.com/trellis-mesh/trellis/controlplane/meshstate/meshstatetest"
	"github.com/trellis-mesh/trellis/internal/kubetest"
	"github.com/trellis-mesh/trellis/internal/memlimit"
)

const (
	controlPlaneNamespace = "trellis-system"
	caSecret              = "trellis-ca"
	serverName            = "trellis-controlplane.trellis-system.svc"
)

func run(ctx context.Context, opts options, stdout, stderr io.Writer) error {
	if opts.Proxies > opts.Services*opts.EndpointsPerService {
		return fmt.Errorf("--proxies %d: there are only %d pods (services × endpoints-per-service)", opts.Proxies, opts.Services*opts.EndpointsPerService)
	}
	if opts.Splits < 1 || opts.Services < 2*opts.Namespaces+1 {
		return errors.New("the benchmark updates a TrafficSplit: it needs --splits ≥ 1 and --services > 2 × --namespaces")
	}
	progress := func(format string, a ...any) {
		if !opts.Quiet {
			fmt.Fprintf(stderr, "bench-controlplane: "+format+"\n", a...)
		}
	}
	dir, err := os.MkdirTemp("", "bench-controlplane-")
	if err != nil {
		return err
	}
	success := false
	defer func() {
		if success {
			os.RemoveAll(dir)
		} else {
			fmt.Fprintf(stderr, "bench-controlplane: kept %s (the control plane's log and kubeconfig)\n", dir)
		}
	}()
	var cpEnv []string
	pprofAddr := ""
	if opts.Profile != "" {
		if err := os.MkdirAll(opts.Profile, 0o755); err != nil {
			return err
		}
		progress("building the control plane with pprof")
		if opts.ControlPlane, err = buildProfiled(kubetest.RepoRoot(), dir); err != nil {
			return err
		}
		if pprofAddr, err = freeAddr(); err != nil {
			return err
		}
		cpEnv = append(cpEnv, "TRELLIS_PPROF_ADDR="+pprofAddr)
	}
	if _, err := os.Stat(opts.ControlPlane); err != nil {
		return fmt.Errorf("control plane binary %s: %w (run `make build`, or pass --controlplane)", opts.ControlPlane, err)
	}
	rep := &report{opts: opts, started: time.Now(), loadStart: loadAvg()}
	if err := raiseFileLimit(); err != nil {
		return err
	}

	// The mesh, as meshstatetest generates it for BenchmarkRebuild.
	size := meshstatetest.Size{
		Namespaces: opts.Namespaces, Services: opts.Services, EndpointsPerService: opts.EndpointsPerService,
		Splits: opts.Splits, Policies: opts.Policies, AuthorizationsPerPod: opts.Policies > 0,
	}
	st := meshstatetest.Build(size)
	rep.model = st
	nodes := meshstatetest.ProxyPods(size, opts.Proxies)

	progress("starting kube-apiserver and etcd (envtest)")
	env, c, kubeVersion, err := startAPIServer()
	if err != nil {
		return err
	}
	defer func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintf(stderr, "bench-controlplane: stop envtest: %v\n", err)
		}
	}()

	progress("writing %d services, %d endpoints, %d pods, %d splits, %d policies", len(st.Services), opts.Services*opts.EndpointsPerService, len(st.Pods), len(st.Splits), len(st.TrafficPolicies))
	t := time.Now()
	n, err := populate(ctx, c, st, opts.Writers)
	if err != nil {
		return fmt.Errorf("write the mesh into the apiserver: %w", err)
	}
	rep.objects, rep.setup, rep.kubeVersion = n, time.Since(t), kubeVersion
	progress("wrote %d objects in %s", n, rep.setup.Round(time.Millisecond))

	td := spiffeid.RequireTrustDomainFromString(meshstate.DefaultTrustDomain)
	ca, err := newUserCA(td)
	if err != nil {
		return err
	}
	if err := ca.install(ctx, c, controlPlaneNamespace, caSecret); err != nil {
		return err
	}
	ids := make([]spiffeid.ID, len(nodes))
	for i, k := range nodes {
		if ids[i], err = identity.WorkloadID(td, k.Namespace, st.Pods[k].ServiceAccount); err != nil {
			return err
		}
	}
	t = time.Now()
	certs, err := ca.workloadCerts(ids, runtime.GOMAXPROCS(0))
	if err != nil {
		return err
	}
	progress("signed %d workload certificates in %s", len(certs), time.Since(t).Round(time.Millisecond))

	if opts.MemoryLimit != "" {
		q, err := resource.ParseQuantity(opts.MemoryLimit)
		if err != nil {
			return fmt.Errorf("--memory-limit %q: %w", opts.MemoryLimit, err)
		}
		cpEnv = append(cpEnv, fmt.Sprintf("GOMEMLIMIT=%d", int64(float64(q.Value())*memlimit.Fraction)))
	}
	cp, err := startControlPlane(opts, env.KubeConfig, dir, cpEnv...)
	if err != nil {
		return err
	}
	defer cp.stop(stderr)
	rep.cpLog = cp.logPath
	progress("control plane pid %d, log %s", cp.pid, cp.logPath)
	t = time.Now()
	if err := cp.waitReady(ctx, 5*time.Minute); err != nil {
		return err
	}
	rep.cpReady = time.Since(t)
	rep.memIdle, _ = readMemory(cp.pid)
	progress("control plane ready (model primed, xDS served) in %s; RSS %s", rep.cpReady.Round(time.Millisecond), mib(rep.memIdle.rss))

	// Connect every proxy.
	d := dialer{addr: cp.grpcAddr, serverName: serverName, roots: ca.pool}
	proxies := make([]*proxy, len(nodes))
	connectTimes := make([]time.Duration, len(nodes))
	defer func() {
		for _, p := range proxies {
			if p != nil {
				p.close()
			}
		}
	}()
	cpu0, _ := cpuSeconds(cp.pid)
	t = time.Now()
	cctx, ccancel := context.WithTimeout(ctx, opts.ConnectTimeout)
	err = forEach(cctx, len(nodes), opts.Dialers, func(i int) error {
		start := time.Now()
		p, err := d.connect(ctx, i, nodes[i].String(), certs[i])
		if err != nil {
			return err
		}
		proxies[i] = p
		if err := p.waitReady(cctx); err != nil {
			return err
		}
		connectTimes[i] = time.Since(start)
		return nil
	}, func(done int) { progress("connected %d/%d proxies", done, len(nodes)) })
	ccancel()
	if err != nil {
		return fmt.Errorf("connect the proxies: %w (control plane log: %s)", err, cp.logPath)
	}
	rep.connect = time.Since(t)
	rep.connectEach = summarize(connectTimes)
	cpu1, _ := cpuSeconds(cp.pid)
	rep.connectCPU = cpu1 - cpu0
	rep.memConnected, _ = readMemory(cp.pid)
	progress("all %d proxies have ACKed their initial configuration in %s; control plane RSS %s", len(nodes), rep.connect.Round(time.Millisecond), mib(rep.memConnected.rss))

	profile := func(name, query string, timeout time.Duration) {
		if pprofAddr == "" {
			return
		}
		path := filepath.Join(opts.Profile, name)
		if err := saveProfile("http://"+pprofAddr+"/debug/pprof/"+query, path, timeout); err != nil {
			progress("profile %s: %v", name, err)
			return
		}
		progress("saved %s", path)
	}
	profile("heap-connected.pb.gz", "heap", time.Minute)

	// Measured rounds.
	split := st.Splits[meshstate.Key{Namespace: "ns-0", Name: "split-0"}]
	if split == nil {
		return errors.New("the model has no split ns-0/split-0")
	}
	time.Sleep(opts.Settle)
	metrics0, _ := scrape("http://"+cp.metricsAddr+"/metrics", xdsMetricNames...)
	cpuProfile := make(chan struct{})
	go func() {
		defer close(cpuProfile)
		profile("cpu-rounds.pb.gz", fmt.Sprintf("profile?seconds=%d", opts.ProfileSeconds), time.Duration(opts.ProfileSeconds+60)*time.Second)
	}()
	for r := range opts.Rounds {
		res, err := measureRound(ctx, opts, c, cp, proxies, split, r)
		if err != nil {
			return err
		}
		rep.rounds = append(rep.rounds, res)
		progress("round %d: p50 %s p99 %s max %s, control plane CPU %.2fs, RSS %s", r+1,
			ms(res.latency.p50), ms(res.latency.p99), ms(res.latency.max), res.cpCPU, mib(res.mem.rss))
		if r+1 < opts.Rounds {
			time.Sleep(opts.Settle)
		}
	}
	metrics1, _ := scrape("http://"+cp.metricsAddr+"/metrics", xdsMetricNames...)
	<-cpuProfile
	profile("heap-end.pb.gz", "heap", time.Minute)
	rep.metricsDelta(metrics0, metrics1)
	rep.memEnd, _ = readMemory(cp.pid)
	rep.sizes, rep.lastSizes = proxies[0].responseSizes()
	for _, p := range proxies {
		if p.streamErr() != nil {
			rep.streamsEnded++
		}
	}
	rep.loadEnd = loadAvg()
	rep.finished = time.Now()

	text := rep.markdown()
	fmt.Fprint(stdout, text)
	if opts.Results != "" {
		paths, err := rep.write(text)
		if err != nil {
			return err
		}
		progress("wrote %v", paths)
	}
	success = true
	return nil
}

var xdsMetricNames = []string{"trellis_xds_rebuild_duration_seconds_sum", "trellis_xds_rebuild_duration_seconds_count",
	"trellis_xds_push_latency_seconds_sum", "trellis_xds_push_latency_seconds_count", "trellis_xds_pushes_total"}

// roundResult is one measured TrafficSplit update.
type roundResult struct {
	weights    [2]uint32
	latency    summary // per proxy: update returned → new RDS version ACKed
	perProxy   []time.Duration
	missing    int // proxies that did not ACK within the round timeout
	cpCPU      float64
	selfCPU    float64 // the benchmark process (the simulated proxies)
	machineCPU float64 // busy CPU seconds of the whole machine
	wall       time.Duration
	mem        memory
	verified   int64
	mismatched int64
}

func measureRound(ctx context.Context, opts options, c client.Client, cp *controlPlane, proxies []*proxy, split *meshstate.Split, r int) (*roundResult, error) {
	// Weights differ from the current ones every round: 80/20, 70/30, ..., 20/80, 80/20, ...
	// (the splits start at 90/10).
	w1 := uint32(80 - (r%7)*10)
	res := &roundResult{weights: [2]uint32{w1, 100 - w1}}
	ns := split.Key.Namespace
	cluster := func(svc string) string { return "outbound|80||" + svc + "." + ns + ".svc.cluster.local" }
	want := map[string]uint32{cluster(split.Backends[0].Service): w1, cluster(split.Backends[1].Service): 100 - w1}
	rd := newRound(len(proxies), opts.VerifyEvery, "outbound|"+split.Service+"."+ns+"|80", want)
	for i, p := range proxies {
		rd.baseline[i] = p.rdsVersion()
	}
	for _, p := range proxies {
		p.round.Store(rd)
	}
	defer func() {
		for _, p := range proxies {
			p.round.Store(nil)
		}
	}()
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"backends": []splitv1alpha4.TrafficSplitBackend{
		{Service: split.Backends[0].Service, Weight: int(w1)}, {Service: split.Backends[1].Service, Weight: int(100 - w1)},
	}}})
	cpu0, _ := cpuSeconds(cp.pid)
	self0, _ := cpuSeconds(os.Getpid())
	busy0, _, _ := machineCPU()
	ts := &splitv1alpha4.TrafficSplit{}
	ts.Namespace, ts.Name = ns, split.Key.Name
	if err := c.Patch(ctx, ts, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return nil, fmt.Errorf("update TrafficSplit %s/%s: %w", ns, split.Key.Name, err)
	}
	t0 := time.Now()
	timer := time.NewTimer(opts.RoundTimeout)
	defer timer.Stop()
	select {
	case <-rd.done:
	case <-timer.C:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	res.wall = time.Since(t0)
	cpu1, _ := cpuSeconds(cp.pid)
	self1, _ := cpuSeconds(os.Getpid())
	busy1, _, _ := machineCPU()
	res.cpCPU, res.selfCPU, res.machineCPU = cpu1-cpu0, self1-self0, busy1-busy0
	res.mem, _ = readMemory(cp.pid)
	for i := range proxies {
		if !rd.reported[i].Load() {
			res.missing++
			continue
		}
		res.perProxy = append(res.perProxy, rd.ackedAt[i].Sub(t0))
	}
	res.latency = summarize(res.perProxy)
	res.verified, res.mismatched = rd.verified.Load(), rd.mismatched.Load()
	return res, nil
}

// forEach runs fn(0..n-1) on workers goroutines, stops at the first error, and calls
// progress every 10% of the way.
func forEach(ctx context.Context, n, workers int, fn func(int) error, progress func(done int)) error {
	var (
		next, done atomic.Int64
		wg         sync.WaitGroup
		once       sync.Once
		first      error
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	step := int64(max(n/10, 1))
	for range max(workers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					once.Do(func() { first = err; cancel() })
					return
				}
				if d := done.Add(1); d%step == 0 {
					progress(int(d))
				}
			}
		}()
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return first
}

// raiseFileLimit lifts RLIMIT_NOFILE to its hard limit: every proxy holds a connection, and
// the control plane (which inherits the limit) holds the other end.
func raiseFileLimit() error {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return fmt.Errorf("read the open-files limit: %w", err)
	}
	l.Cur = l.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return fmt.Errorf("raise the open-files limit to %d: %w", l.Max, err)
	}
	return nil
}

// httpOK says whether GET url answers 200.
func httpOK(url string) bool {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
