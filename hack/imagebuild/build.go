package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Options describes one single-layer image built from one static binary.
type Options struct {
	Name       string // image reference written into the tarball, e.g. trellis/proxy:dev
	Binary     string // path of a static (CGO_ENABLED=0) Go binary on this machine
	Entrypoint string // absolute path of the binary inside the image
	User       string // numeric "uid" or "uid:gid"
	Arch       string // GOARCH of the image; OS is always linux
	Version    string // org.opencontainers.image.version label
	Out        string // tarball path (docker-archive, importable by ctr)
}

const (
	imageOS   = "linux"
	pathEnv   = "PATH=/usr/local/bin:/usr/bin:/bin"
	userName  = "trellis"
	labelName = "org.opencontainers.image.title"
	labelVer  = "org.opencontainers.image.version"
)

// elfMachines maps GOARCH to the ELF machine and class a binary for it must have.
var elfMachines = map[string]struct {
	machine elf.Machine
	class   elf.Class
}{
	"amd64":   {elf.EM_X86_64, elf.ELFCLASS64},
	"arm64":   {elf.EM_AARCH64, elf.ELFCLASS64},
	"arm":     {elf.EM_ARM, elf.ELFCLASS32},
	"386":     {elf.EM_386, elf.ELFCLASS32},
	"ppc64le": {elf.EM_PPC64, elf.ELFCLASS64},
	"s390x":   {elf.EM_S390, elf.ELFCLASS64},
	"riscv64": {elf.EM_RISCV, elf.ELFCLASS64},
}

// BuildToFile builds the image described by o and writes it to o.Out.
func BuildToFile(o Options) error {
	ref, err := name.NewTag(o.Name)
	if err != nil {
		return fmt.Errorf("--name %q: %w", o.Name, err)
	}
	img, err := Build(o)
	if err != nil {
		return err
	}
	if o.Out == "" {
		return errors.New("--out is required")
	}
	if err := tarball.WriteToFile(o.Out, ref, img); err != nil {
		return fmt.Errorf("write %s: %w", o.Out, err)
	}
	return nil
}

// Build returns the image: empty base plus one layer holding the binary,
// /etc/passwd, /etc/group and /tmp, with a config that runs the binary as o.User.
func Build(o Options) (v1.Image, error) {
	if o.Binary == "" {
		return nil, errors.New("--binary is required")
	}
	if !path.IsAbs(o.Entrypoint) || path.Clean(o.Entrypoint) != o.Entrypoint || o.Entrypoint == "/" {
		return nil, fmt.Errorf("--entrypoint %q must be a clean absolute file path", o.Entrypoint)
	}
	if o.Arch == "" {
		return nil, errors.New("--arch is required")
	}
	uid, gid, err := parseUser(o.User)
	if err != nil {
		return nil, err
	}
	bin, err := os.ReadFile(o.Binary)
	if err != nil {
		return nil, fmt.Errorf("read binary: %w", err)
	}
	if err := checkStaticELF(o.Binary, bin, o.Arch); err != nil {
		return nil, err
	}

	layerTar, err := layerBytes(o.Entrypoint, bin, uid, gid)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer:   layer,
		History: v1.History{CreatedBy: "trellis hack/imagebuild", Created: v1.Time{Time: time.Unix(0, 0).UTC()}},
	})
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS = imageOS
	cf.Architecture = o.Arch
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	version := o.Version
	if version == "" {
		version = "dev"
	}
	cf.Config = v1.Config{
		Entrypoint: []string{o.Entrypoint},
		User:       fmt.Sprintf("%d:%d", uid, gid),
		Env:        []string{pathEnv},
		WorkingDir: "/",
		Labels: map[string]string{
			labelName: imageTitle(o.Name),
			labelVer:  version,
		},
	}
	return mutate.ConfigFile(img, cf)
}

// imageTitle is the repository part of a reference: "trellis/proxy:dev" -> "trellis/proxy".
func imageTitle(ref string) string {
	if t, err := name.NewTag(ref); err == nil {
		return t.RepositoryStr()
	}
	return ref
}

// parseUser accepts "uid" or "uid:gid", numeric only; gid defaults to uid.
func parseUser(s string) (uid, gid int, err error) {
	uidStr, gidStr, hasGID := strings.Cut(s, ":")
	if !hasGID {
		gidStr = uidStr
	}
	uid, err1 := strconv.Atoi(uidStr)
	gid, err2 := strconv.Atoi(gidStr)
	if err1 != nil || err2 != nil || uid < 0 || gid < 0 || uid > 1<<31-1 || gid > 1<<31-1 {
		return 0, 0, fmt.Errorf("--user %q must be a numeric uid or uid:gid, e.g. 1337 or 65532:65532", s)
	}
	return uid, gid, nil
}

// checkStaticELF refuses anything but a statically linked ELF executable for arch:
// the machine and class must match, and there must be no PT_INTERP program header
// (a dynamic loader cannot exist in an image with no libc).
func checkStaticELF(p string, bin []byte, arch string) error {
	want, ok := elfMachines[arch]
	if !ok {
		return fmt.Errorf("--arch %q is not supported", arch)
	}
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return fmt.Errorf("%s is not an ELF binary (%v); build it for linux/%s with CGO_ENABLED=0", p, err, arch)
	}
	defer f.Close()
	if f.Machine != want.machine || f.Class != want.class {
		return fmt.Errorf("%s is built for %s/%s, not linux/%s; build it with GOOS=linux GOARCH=%s CGO_ENABLED=0",
			p, f.Machine, f.Class, arch, arch)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("%s is not an executable (ELF type %s); build it with CGO_ENABLED=0", p, f.Type)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked (has a PT_INTERP program header) and cannot run in an image without libc; build it with CGO_ENABLED=0", p)
		}
	}
	return nil
}

// layerBytes returns the uncompressed layer tar. Entries are in a fixed order
// with a fixed timestamp so the same inputs give the same digest.
func layerBytes(entrypoint string, bin []byte, uid, gid int) ([]byte, error) {
	mtime := time.Unix(0, 0).UTC()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(p string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: p + "/", Mode: mode, ModTime: mtime, Format: tar.FormatPAX})
	}
	file := func(p string, mode int64, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: mode, Size: int64(len(data)), ModTime: mtime, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}

	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\n"+
		"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"+
		"%s:x:%d:%d:%s:/nonexistent:/sbin/nologin\n", userName, uid, gid, userName)
	group := fmt.Sprintf("root:x:0:\nnobody:x:65534:\n%s:x:%d:\n", userName, gid)

	ep := strings.TrimPrefix(entrypoint, "/")
	if ep == "etc" || ep == "tmp" || strings.HasPrefix(ep, "etc/") || strings.HasPrefix(ep, "tmp/") {
		return nil, fmt.Errorf("--entrypoint %q must not be under /etc or /tmp", entrypoint)
	}
	if err := dir("etc", 0o755); err != nil {
		return nil, err
	}
	if err := file("etc/group", 0o644, []byte(group)); err != nil {
		return nil, err
	}
	if err := file("etc/passwd", 0o644, []byte(passwd)); err != nil {
		return nil, err
	}
	if err := dir("tmp", 0o1777); err != nil {
		return nil, err
	}
	// Parent directories of the entrypoint, outermost first.
	var parents []string
	for d := path.Dir(ep); d != "."; d = path.Dir(d) {
		parents = append([]string{d}, parents...)
	}
	for _, d := range parents {
		if err := dir(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := file(ep, 0o755, bin); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
