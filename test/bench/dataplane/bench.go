package main

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

//go:embed bench.proto
var benchProto []byte

// target is one way from the load generator to the backend.
type target struct {
	name     string
	url      string // HTTP URL the load generator requests
	grpcAddr string // host:port for ghz; "" when the target has no gRPC path
	// client and server are the proxies of the pair (nil for direct).
	client, server *process
}

// runRecord is one measured run of one target.
type runRecord struct {
	Target string    `json:"target"`
	Kind   string    `json:"kind"` // fixed, saturation, grpc
	Round  int       `json:"round"`
	Start  time.Time `json:"start"`
	loadResult
	// CPU seconds during the run: client-side proxy, server-side proxy, backend, and the
	// whole machine (everything, this benchmark and anything else running).
	ClientCPU   float64 `json:"clientCPU"`
	ServerCPU   float64 `json:"serverCPU"`
	BackendCPU  float64 `json:"backendCPU"`
	MachineBusy float64 `json:"machineBusy"`
	Wall        float64 `json:"wall"` // seconds the run took, start to exit of the load generator
	// Read and write system calls of the client-side and server-side proxies (/proc/<pid>/io).
	ClientSyscalls uint64 `json:"clientSyscalls"`
	ServerSyscalls uint64 `json:"serverSyscalls"`
}

// bench is one benchmark run in progress.
type bench struct {
	o        options
	log      *slog.Logger
	work     string
	self     string
	clean    *cleanup
	clientAt placement
	serverAt placement
	backend  *process
	targets  []*target
	records  []runRecord
	rssData  rssAll
	env      environment
}

func runBench(ctx context.Context, o options, stdout, stderr io.Writer) (err error) {
	if err := o.validate(); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	b := &bench{o: o, log: log}
	if b.self, err = os.Executable(); err != nil {
		return err
	}
	if b.work = o.WorkDir; b.work == "" {
		if b.work, err = os.MkdirTemp("", "trellis-bench-"); err != nil {
			return err
		}
		defer os.RemoveAll(b.work)
	}
	if err := os.MkdirAll(b.work, 0o755); err != nil {
		return err
	}
	_ = os.Chmod(b.work, 0o755) // the sidecars run as UID 1337
	if b.clean, err = newCleanup(o.CleanupScript, log); err != nil {
		return err
	}
	defer func() {
		log.Info("cleaning up: stopping the processes and deleting the namespaces and the bridge")
		b.clean.run()
	}()
	b.env = collectEnvironment(o)
	if err := b.setup(ctx); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	if err := b.measure(ctx); err != nil {
		return err
	}
	rep := buildReport(b.o, b.env, b.records, b.rssData)
	return writeReport(rep, o.ResultsDir, b.records, stdout)
}

// setup builds the topology and starts every process, then waits until each target
// answers with 1 KiB.
func (b *bench) setup(ctx context.Context) error {
	tp, err := newTopology(b.clean)
	if err != nil {
		return err
	}
	clientNS, clientIP, err := tp.namespace("client")
	if err != nil {
		return err
	}
	serverNS, serverIP, err := tp.namespace("server")
	if err != nil {
		return err
	}
	b.env.Addresses = fmt.Sprintf("bridge %s (%s, no uplink), client %s, server %s, VIPs %s", tp.bridge, tp.prefix, clientIP, serverIP, tp.vips)
	b.clientAt = placement{ns: clientNS, cpus: b.o.ClientCPUs}
	b.serverAt = placement{ns: serverNS, cpus: b.o.ServerCPUs}
	httpVIP, grpcVIP := tp.vip(0), tp.vip(1)
	cp, err := startControlPlane(b.clean, tp.host, clientIP, serverIP, httpVIP, grpcVIP)
	if err != nil {
		return err
	}
	certs, err := writeCerts(b.work, cp.ca)
	if err != nil {
		return err
	}
	protoPath := filepath.Join(b.work, "bench.proto")
	if err := os.WriteFile(protoPath, benchProto, 0o644); err != nil {
		return err
	}

	b.backend, err = start(b.clean, "backend", b.serverAt, nil, b.self, "backend")
	if err != nil {
		return err
	}
	b.targets = append(b.targets, &target{name: "direct",
		url:      fmt.Sprintf("http://%s/", netip.AddrPortFrom(serverIP, directHTTP)),
		grpcAddr: netip.AddrPortFrom(serverIP, directGRPC).String()})
	for _, name := range b.o.Targets {
		var t *target
		switch name {
		case "trellis":
			t, err = b.startTrellis(ctx, cp, certs.CA, httpVIP, grpcVIP)
		case "nginx":
			t, err = b.startNginx(certs, serverIP)
		case "haproxy":
			t, err = b.startHAProxy(certs, serverIP)
		default:
			continue
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		b.targets = append(b.targets, t)
	}
	for _, t := range b.targets {
		if err := b.waitServing(ctx, t); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) startTrellis(ctx context.Context, cp *controlPlane, caPath string, httpVIP, grpcVIP netip.Addr) (*target, error) {
	ports := make([]string, len(excludedPorts))
	for i, p := range excludedPorts {
		ports[i] = strconv.Itoa(p)
	}
	excl := strings.Join(ports, ",")
	for _, init := range []struct {
		at   placement
		flag string
	}{{b.clientAt, "--outbound-exclude-ports=" + excl}, {b.serverAt, "--inbound-exclude-ports=" + excl}} {
		at := init.at
		at.cpus = ""
		if out, _, err := runOnce(ctx, at, nil, b.o.ProxyBin, "init", init.flag); err != nil {
			return nil, fmt.Errorf("trellis-proxy init in %s: %w\n%s", at.ns, err, out)
		}
	}
	t := &target{name: "trellis", url: fmt.Sprintf("http://%s/", httpVIP), grpcAddr: netip.AddrPortFrom(grpcVIP, appGRPC).String()}
	for _, pod := range []struct {
		at       placement
		name, sa string
		proc     **process
	}{{b.clientAt, "client-1", clientSA, &t.client}, {b.serverAt, "server-1", serverSA, &t.server}} {
		token := filepath.Join(b.work, pod.name+".token")
		if err := os.WriteFile(token, []byte("token-"+pod.sa), 0o644); err != nil {
			return nil, err
		}
		at := pod.at
		at.uid = 1337
		var env []string
		if b.o.ProfileDir != "" {
			env = append(env, "TRELLIS_BENCH_PPROF_ADDR=127.0.0.1:6060")
		}
		p, err := start(b.clean, "trellis-proxy "+pod.name, at, env, b.o.ProxyBin, "run",
			"--pod-name", pod.name, "--pod-namespace", meshNS, "--service-account", pod.sa,
			"--control-plane-addr", cp.addr, "--token-path", token, "--root-cert-path", caPath,
			"--drain-duration", "1s", "--log-level", "warn")
		if err != nil {
			return nil, err
		}
		*pod.proc = p
		if err := b.retry(ctx, p, 60*time.Second, pod.at, "http://127.0.0.1:15000/ready", -1); err != nil {
			return nil, fmt.Errorf("sidecar %s never turned ready: %w\n%s", pod.name, err, tail(p.out.String(), 3000))
		}
	}
	return t, nil
}

func (b *bench) workers(cpus string) int {
	if n := cpuCount(cpus); n > 0 {
		return n
	}
	return runtime.NumCPU()
}

func (b *bench) startNginx(certs certFiles, serverIP netip.Addr) (*target, error) {
	t := &target{name: "nginx", url: fmt.Sprintf("http://127.0.0.1:%d/", nginxClientHTTP), grpcAddr: fmt.Sprintf("127.0.0.1:%d", nginxClientGRPC)}
	for _, s := range []struct {
		side, tmpl string
		at         placement
		proc       **process
	}{{"server", nginxServerConf, b.serverAt, &t.server}, {"client", nginxClientConf, b.clientAt, &t.client}} {
		dir := filepath.Join(b.work, "nginx-"+s.side)
		conf, err := writePeerConfig(s.tmpl, "nginx.conf", peerConfig{Dir: dir, ServerIP: serverIP.String(), Workers: b.workers(s.at.cpus), Certs: certs, Name: serverDNS})
		if err != nil {
			return nil, err
		}
		if *s.proc, err = start(b.clean, "nginx "+s.side, s.at, nil, "nginx", "-e", "stderr", "-p", dir, "-c", conf); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func (b *bench) startHAProxy(certs certFiles, serverIP netip.Addr) (*target, error) {
	t := &target{name: "haproxy", url: fmt.Sprintf("http://127.0.0.1:%d/", haproxyClientHTTP), grpcAddr: fmt.Sprintf("127.0.0.1:%d", haproxyClientGRPC)}
	for _, s := range []struct {
		side, tmpl string
		at         placement
		proc       **process
	}{{"server", haproxyServerConf, b.serverAt, &t.server}, {"client", haproxyClientConf, b.clientAt, &t.client}} {
		dir := filepath.Join(b.work, "haproxy-"+s.side)
		conf, err := writePeerConfig(s.tmpl, "haproxy.cfg", peerConfig{Dir: dir, ServerIP: serverIP.String(), Workers: b.workers(s.at.cpus), Certs: certs, Name: serverDNS})
		if err != nil {
			return nil, err
		}
		if *s.proc, err = start(b.clean, "haproxy "+s.side, s.at, nil, "haproxy", "-db", "-f", conf); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// waitServing waits until the target's HTTP path answers with the 1 KiB body.
func (b *bench) waitServing(ctx context.Context, t *target) error {
	var watch *process
	if t.client != nil {
		watch = t.client
	}
	if err := b.retry(ctx, watch, 60*time.Second, placement{ns: b.clientAt.ns}, t.url, payloadSize); err != nil {
		msg := fmt.Sprintf("%s never served %s: %v", t.name, t.url, err)
		for _, p := range []*process{t.client, t.server, b.backend} {
			if p != nil {
				msg += fmt.Sprintf("\n--- %s ---\n%s", p.name, tail(p.out.String(), 3000))
			}
		}
		return errors.New(msg)
	}
	b.log.Info("target serving", "target", t.name, "url", t.url)
	return nil
}

// retry runs `self get url` at `at` until it succeeds, the process p (if any) exits, or
// the time is up.
func (b *bench) retry(ctx context.Context, p *process, limit time.Duration, at placement, url string, want int) error {
	deadline := time.Now().Add(limit)
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		out, _, err := runOnce(cctx, at, nil, b.self, "get", "--", url, strconv.Itoa(want))
		cancel()
		if err == nil {
			return nil
		}
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited: %v", p.name, p.err)
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("%w: %s", err, strings.TrimSpace(out))
		}
		time.Sleep(300 * time.Millisecond)
	}
}
