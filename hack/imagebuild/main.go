// Command imagebuild builds a single-layer container image from one static Go
// binary, without Docker or a registry, and writes it as a docker-archive
// tarball that `ctr -n k8s.io images import` accepts.
//
//	go run ./hack/imagebuild --name trellis/proxy:dev --binary bin/trellis-proxy \
//	    --entrypoint /usr/local/bin/trellis-proxy --user 1337 --out /tmp/proxy.tar
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
)

func main() {
	var o Options
	flag.StringVar(&o.Name, "name", "", "image reference, e.g. trellis/proxy:dev (required)")
	flag.StringVar(&o.Binary, "binary", "", "path of a static Go binary built with CGO_ENABLED=0 (required)")
	flag.StringVar(&o.Entrypoint, "entrypoint", "", "path of the binary in the image (default /usr/local/bin/<binary name>)")
	flag.StringVar(&o.User, "user", "65532", "numeric uid or uid:gid the image runs as; also the uid of user \"trellis\"")
	flag.StringVar(&o.Arch, "arch", runtime.GOARCH, "image architecture (GOARCH); the OS is always linux")
	flag.StringVar(&o.Version, "version", "dev", "value of the org.opencontainers.image.version label")
	flag.StringVar(&o.Out, "out", "", "tarball to write (required)")
	flag.Parse()

	if flag.NArg() != 0 || o.Name == "" || o.Binary == "" || o.Out == "" {
		fmt.Fprintln(os.Stderr, "usage: imagebuild --name REF --binary PATH --out FILE [--entrypoint PATH] [--user UID[:GID]] [--arch GOARCH] [--version V]")
		flag.PrintDefaults()
		os.Exit(2)
	}
	if o.Entrypoint == "" {
		o.Entrypoint = "/usr/local/bin/" + filepath.Base(o.Binary)
	}
	if err := BuildToFile(o); err != nil {
		fmt.Fprintln(os.Stderr, "imagebuild:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %s (%s, linux/%s)\n", o.Out, o.Name, o.Arch)
}
