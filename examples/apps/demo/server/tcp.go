package server

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"
)

// TCP is a server-first line protocol, like SMTP: on connect the server sends
// "HELLO <version> <pod>\n" before it reads anything, then answers each line L with
// "ECHO L\n". The line QUIT gets "BYE\n" and the connection is closed.
type TCP struct {
	Common
	// Idle closes a connection that sends nothing for this long (default 5 min).
	Idle time.Duration
}

// MaxLine is the longest line the TCP server reads; a longer one closes the connection.
const MaxLine = 64 << 10

// Banner is the first line the TCP server sends.
func (s *TCP) Banner() string {
	pod := s.Info.Pod
	if pod == "" {
		pod = "-"
	}
	version := s.Info.Version
	if version == "" {
		version = "-"
	}
	return fmt.Sprintf("HELLO %s %s\n", version, pod)
}

// Serve accepts connections on ln until ctx ends. Open connections then get Drain to
// finish before they are closed.
func (s *TCP) Serve(ctx context.Context, ln net.Listener) error {
	log := s.logger()
	log.Info("serving the TCP line protocol", "addr", ln.Addr().String(), "service", s.Info.Service, "version", s.Info.Version)
	var (
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
		wg    sync.WaitGroup
	)
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					continue
				}
				return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
			}
			break
		}
		mu.Lock()
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.handle(c)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(s.drain())
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		mu.Lock()
		n := len(conns)
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		<-done
		log.Info("closed connections still open after the drain", "count", n)
	}
	log.Info("stopped", "addr", ln.Addr().String())
	return nil
}

func (s *TCP) handle(c net.Conn) {
	defer c.Close()
	start := time.Now()
	idle := s.Idle
	if idle <= 0 {
		idle = 5 * time.Minute
	}
	lines, reason := 0, "closed by the client"
	defer func() {
		if s.Verbose {
			s.logger().Info("connection", "remote", c.RemoteAddr().String(), "lines", lines, "end", reason, "duration", time.Since(start).String())
		}
	}()
	c.SetWriteDeadline(time.Now().Add(idle))
	if _, err := c.Write([]byte(s.Banner())); err != nil {
		reason = "write the banner: " + err.Error()
		return
	}
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 4096), MaxLine)
	for {
		c.SetReadDeadline(time.Now().Add(idle))
		if !sc.Scan() {
			if err := sc.Err(); err != nil {
				reason = err.Error()
			}
			return
		}
		lines++
		line := strings.TrimSuffix(sc.Text(), "\r")
		c.SetWriteDeadline(time.Now().Add(idle))
		if line == "QUIT" {
			c.Write([]byte("BYE\n"))
			reason = "QUIT"
			return
		}
		if _, err := c.Write([]byte("ECHO " + line + "\n")); err != nil {
			reason = "write: " + err.Error()
			return
		}
	}
}
