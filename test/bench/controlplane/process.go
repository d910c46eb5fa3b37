package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/trellis-mesh/trellis/test/bench/internal/benchio"
)

// controlPlane is the trellis-controlplane binary running as a child process, so that its
// CPU time and memory are its own.
type controlPlane struct {
	cmd                               *exec.Cmd
	pid                               int
	exited                            chan struct{}
	waitErr                           error
	logPath                           string
	grpcAddr, metricsAddr, healthAddr string
}

func startControlPlane(opts options, kubeconfig []byte, dir string, env ...string) (*controlPlane, error) {
	kc := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kc, kubeconfig, 0o600); err != nil {
		return nil, err
	}
	addrs := make([]string, 4)
	for i := range addrs {
		a, err := freeAddr()
		if err != nil {
			return nil, err
		}
		addrs[i] = a
	}
	_, webhookPort, _ := net.SplitHostPort(addrs[3])
	cp := &controlPlane{
		grpcAddr: addrs[0], metricsAddr: addrs[1], healthAddr: addrs[2],
		logPath: filepath.Join(dir, "controlplane.log"), exited: make(chan struct{}),
	}
	logFile, err := os.Create(cp.logPath)
	if err != nil {
		return nil, err
	}
	bin, err := filepath.Abs(opts.ControlPlane)
	if err != nil {
		return nil, err
	}
	cp.cmd = exec.Command(bin, "run",
		"--kubeconfig", kc,
		"--namespace", controlPlaneNamespace,
		"--ca-secret", caSecret, "--ca-user-supplied",
		"--grpc-addr", cp.grpcAddr, "--metrics-addr", cp.metricsAddr, "--health-addr", cp.healthAddr,
		"--webhook-port", webhookPort,
		"--debounce", opts.Debounce.String(),
	)
	cp.cmd.Stdout, cp.cmd.Stderr = logFile, logFile
	cp.cmd.Env = append(append(os.Environ(), "POD_NAMESPACE="+controlPlaneNamespace), env...)
	// If the benchmark dies, the control plane goes with it.
	cp.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cp.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	cp.pid = cp.cmd.Process.Pid
	go func() {
		cp.waitErr = cp.cmd.Wait()
		logFile.Close()
		close(cp.exited)
	}()
	return cp, nil
}

// waitReady waits for /readyz: the caches synced, the model primed, xDS served.
func (cp *controlPlane) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if httpOK("http://" + cp.healthAddr + "/readyz") {
			return nil
		}
		select {
		case <-cp.exited:
			return fmt.Errorf("the control plane exited before it was ready (%v); its log: %s%s", cp.waitErr, cp.logPath, tail(cp.logPath))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the control plane was not ready within %s; its log: %s%s", timeout, cp.logPath, tail(cp.logPath))
		}
	}
}

// stop ends the control plane with SIGTERM (its graceful stop), then SIGKILL after 30s.
func (cp *controlPlane) stop(stderr io.Writer) {
	select {
	case <-cp.exited:
		return
	default:
	}
	_ = cp.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-cp.exited:
	case <-time.After(30 * time.Second):
		fmt.Fprintf(stderr, "bench-controlplane: the control plane (pid %d) did not stop within 30s; killing it\n", cp.pid)
		_ = cp.cmd.Process.Kill()
		<-cp.exited
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// tail is the end of a log file, for error messages.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	const n = 2000
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return "\n--- last lines ---\n" + string(b)
}

// buildProfiled builds the control plane with pprof (./profiled) into dir.
func buildProfiled(repoRoot, dir string) (string, error) {
	out := filepath.Join(dir, "trellis-controlplane-profiled")
	cmd := exec.Command("go", "build", "-o", out, "./test/bench/controlplane/profiled")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the profiled control plane: %w\n%s", err, b)
	}
	return out, nil
}

// saveProfile stores what GET url answers (a pprof profile) in path.
func saveProfile(url, path string, timeout time.Duration) error {
	return benchio.SaveURL(url, path, timeout)
}
