// Command pause is the sandbox ("pause") container of the local cluster that
// hack/cluster.sh brings up. It holds a pod's namespaces open, reaps the
// orphaned children it inherits when it is PID 1 of a shared PID namespace, and
// exits 0 on SIGTERM or SIGINT. It is built static and turned into a
// single-layer image by hack/imagebuild; nothing else in the project uses it.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-v" || os.Args[1] == "--version") {
		fmt.Println("trellis pause 1")
		return
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s == syscall.SIGCHLD {
			reap()
			continue
		}
		os.Exit(0)
	}
}

// reap collects every child that has exited, so that none is left a zombie.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}
