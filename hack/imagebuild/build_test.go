package main

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

var (
	staticOnce sync.Once
	staticPath string
	staticErr  error
)

// staticBinary compiles a tiny main with CGO_ENABLED=0 for the host arch, once per test run.
func staticBinary(t *testing.T) string {
	t.Helper()
	staticOnce.Do(func() {
		dir, err := os.MkdirTemp("", "imagebuild-test-")
		if err != nil {
			staticErr = err
			return
		}
		src := "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello from the mesh\") }\n"
		if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
			staticErr = err
			return
		}
		if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module hello\n\ngo 1.21\n"), 0o644); err != nil {
			staticErr = err
			return
		}
		staticPath = filepath.Join(dir, "hello")
		cmd := exec.Command("go", "build", "-o", staticPath, ".")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH, "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			staticErr = &buildError{err: err, out: string(out)}
		}
	})
	if staticErr != nil {
		t.Fatalf("building the static test binary: %v", staticErr)
	}
	return staticPath
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + ": " + e.out }

func TestMain(m *testing.M) {
	code := m.Run()
	if staticPath != "" {
		os.RemoveAll(filepath.Dir(staticPath))
	}
	os.Exit(code)
}

// buildAndRead builds the image to a tarball and reads it back as a consumer would.
func buildAndRead(t *testing.T, o Options) (v1.Image, *v1.ConfigFile, map[string]layerEntry) {
	t.Helper()
	o.Out = filepath.Join(t.TempDir(), "image.tar")
	if err := BuildToFile(o); err != nil {
		t.Fatalf("BuildToFile: %v", err)
	}
	img, err := tarball.ImageFromPath(o.Out, nil)
	if err != nil {
		t.Fatalf("ImageFromPath: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatalf("ConfigFile: %v", err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatalf("Layers: %v", err)
	}
	if len(layers) != 1 {
		t.Fatalf("image has %d layers, want exactly 1", len(layers))
	}
	return img, cf, readLayer(t, layers[0])
}

type layerEntry struct {
	hdr  *tar.Header
	data []byte
}

func readLayer(t *testing.T, l v1.Layer) map[string]layerEntry {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatalf("Uncompressed: %v", err)
	}
	defer rc.Close()
	entries := map[string]layerEntry{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading layer tar: %v", err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("reading %s: %v", hdr.Name, err)
		}
		entries["/"+strings.TrimSuffix(hdr.Name, "/")] = layerEntry{hdr: hdr, data: data}
	}
	return entries
}

func TestBuildProducesARunnableSingleLayerImage(t *testing.T) {
	bin := staticBinary(t)
	binBytes, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name        string
		opts        Options
		wantUser    string
		wantUID     string // uid:gid field pair in the trellis passwd line
		wantVersion string
	}{
		{
			name:        "the proxy image runs as uid 1337 with gid defaulting to the uid",
			opts:        Options{Name: "trellis/proxy:dev", Entrypoint: "/usr/local/bin/trellis-proxy", User: "1337"},
			wantUser:    "1337:1337",
			wantUID:     "trellis:x:1337:1337:",
			wantVersion: "dev",
		},
		{
			name:        "the control plane image runs as nonroot 65532 with an explicit gid and version",
			opts:        Options{Name: "trellis/controlplane:v0.1.0", Entrypoint: "/trellis-controlplane", User: "65532:65533", Version: "v0.1.0"},
			wantUser:    "65532:65533",
			wantUID:     "trellis:x:65532:65533:",
			wantVersion: "v0.1.0",
		},
		{
			name:        "the demo image runs /trellis-demo at the root as 10001, not the proxy's uid",
			opts:        Options{Name: "trellis/demo:dev", Entrypoint: "/trellis-demo", User: "10001", Version: "dev"},
			wantUser:    "10001:10001",
			wantUID:     "trellis:x:10001:10001:",
			wantVersion: "dev",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Binary = bin
			tc.opts.Arch = runtime.GOARCH
			_, cf, entries := buildAndRead(t, tc.opts)

			ep, ok := entries[tc.opts.Entrypoint]
			if !ok {
				t.Fatalf("layer has no %s; entries: %v", tc.opts.Entrypoint, keys(entries))
			}
			if ep.hdr.Typeflag != tar.TypeReg || ep.hdr.Mode&0o7777 != 0o755 {
				t.Errorf("%s: type %c mode %o, want regular file 0755", tc.opts.Entrypoint, ep.hdr.Typeflag, ep.hdr.Mode)
			}
			if !bytes.Equal(ep.data, binBytes) {
				t.Errorf("%s: %d bytes differ from the %d-byte input binary", tc.opts.Entrypoint, len(ep.data), len(binBytes))
			}

			passwd := string(entries["/etc/passwd"].data)
			for _, want := range []string{"root:x:0:0:", "nobody:x:65534:65534:", tc.wantUID} {
				if !strings.Contains(passwd, want) {
					t.Errorf("/etc/passwd lacks %q:\n%s", want, passwd)
				}
			}
			group := string(entries["/etc/group"].data)
			if !strings.Contains(group, "trellis:x:"+strings.Split(tc.wantUser, ":")[1]+":") {
				t.Errorf("/etc/group lacks the trellis group:\n%s", group)
			}
			if tmp, ok := entries["/tmp"]; !ok || tmp.hdr.Typeflag != tar.TypeDir || tmp.hdr.Mode&0o7777 != 0o1777 {
				t.Errorf("/tmp missing or not a 1777 directory: %+v", tmp.hdr)
			}
			for p := range entries {
				if strings.Contains(p, "certs") || strings.HasSuffix(p, ".crt") || strings.HasSuffix(p, ".pem") {
					t.Errorf("image must carry no CA bundle, found %s", p)
				}
			}

			c := cf.Config
			if !slices.Equal(c.Entrypoint, []string{tc.opts.Entrypoint}) {
				t.Errorf("Entrypoint = %v, want [%s]", c.Entrypoint, tc.opts.Entrypoint)
			}
			if c.User != tc.wantUser {
				t.Errorf("User = %q, want %q", c.User, tc.wantUser)
			}
			if !slices.ContainsFunc(c.Env, func(e string) bool { return strings.HasPrefix(e, "PATH=") }) {
				t.Errorf("Env = %v, want a PATH", c.Env)
			}
			if c.WorkingDir != "/" {
				t.Errorf("WorkingDir = %q, want /", c.WorkingDir)
			}
			title := strings.SplitN(tc.opts.Name, ":", 2)[0]
			if got := c.Labels["org.opencontainers.image.title"]; got != title {
				t.Errorf("title label = %q, want %q", got, title)
			}
			if got := c.Labels["org.opencontainers.image.version"]; got != tc.wantVersion {
				t.Errorf("version label = %q, want %q", got, tc.wantVersion)
			}
			if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
				t.Errorf("platform = %s/%s, want linux/%s", cf.OS, cf.Architecture, runtime.GOARCH)
			}
		})
	}
}

func TestBuildIsReproducible(t *testing.T) {
	o := Options{Name: "trellis/proxy:dev", Binary: staticBinary(t), Entrypoint: "/usr/local/bin/trellis-proxy", User: "1337", Arch: runtime.GOARCH}
	a, err := Build(o)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Build(o)
	if err != nil {
		t.Fatal(err)
	}
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Errorf("two builds of the same inputs differ: %s vs %s", da, db)
	}
}

func TestBuildRefusesUnusableInput(t *testing.T) {
	static := staticBinary(t)
	otherArch := "arm64"
	if runtime.GOARCH == "arm64" {
		otherArch = "amd64"
	}
	notELF := filepath.Join(t.TempDir(), "script.sh")
	if err := os.WriteFile(notELF, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		binary  string
		arch    string
		user    string
		ep      string
		wantErr string
		skipIf  func() bool
	}{
		{
			name:   "a dynamically linked binary from the OS is refused with the CGO_ENABLED=0 advice",
			binary: "/bin/true", arch: runtime.GOARCH, user: "1337", ep: "/true",
			wantErr: "CGO_ENABLED=0",
			skipIf:  func() bool { return !hasInterp("/bin/true") },
		},
		{
			name:   "a missing binary is refused",
			binary: filepath.Join(t.TempDir(), "does-not-exist"), arch: runtime.GOARCH, user: "1337", ep: "/x",
			wantErr: "does-not-exist",
		},
		{
			name:   "a binary for another architecture is refused",
			binary: static, arch: otherArch, user: "1337", ep: "/x",
			wantErr: "CGO_ENABLED=0",
		},
		{
			name:   "a shell script is refused as not ELF",
			binary: notELF, arch: runtime.GOARCH, user: "1337", ep: "/x",
			wantErr: "not an ELF binary",
		},
		{
			name:   "a non-numeric user is refused",
			binary: static, arch: runtime.GOARCH, user: "trellis", ep: "/x",
			wantErr: "numeric uid",
		},
		{
			name:   "a relative entrypoint is refused",
			binary: static, arch: runtime.GOARCH, user: "1337", ep: "usr/bin/x",
			wantErr: "absolute",
		},
		{
			name:   "an entrypoint over the generated /etc/passwd is refused",
			binary: static, arch: runtime.GOARCH, user: "1337", ep: "/etc/passwd",
			wantErr: "/etc",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.skipIf != nil && tc.skipIf() {
				t.Skip("precondition not met on this machine")
			}
			out := filepath.Join(t.TempDir(), "image.tar")
			err := BuildToFile(Options{Name: "trellis/proxy:dev", Binary: tc.binary, Entrypoint: tc.ep, User: tc.user, Arch: tc.arch, Out: out})
			if err == nil {
				t.Fatalf("BuildToFile succeeded, want an error containing %q", tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not mention %q", err, tc.wantErr)
			}
			if _, statErr := os.Stat(out); statErr == nil {
				t.Errorf("a refused build still wrote %s", out)
			}
		})
	}
}

// hasInterp reports whether p is an ELF file for the host arch with a PT_INTERP header.
func hasInterp(p string) bool {
	b, err := os.ReadFile(p)
	if err != nil {
		return false
	}
	err = checkStaticELF(p, b, runtime.GOARCH)
	return err != nil && strings.Contains(err.Error(), "PT_INTERP")
}

func keys(m map[string]layerEntry) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
