package server_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/examples/apps/demo/server"
)

func dialTCP(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return c, bufio.NewReader(c)
}

func readLine(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read a line: %v (got %q)", err, line)
	}
	return line
}

func TestTCPServerSpeaksFirstThenEchoes(t *testing.T) {
	s := &server.TCP{Common: common()}
	addr, _ := serve(t, s.Serve)
	c, r := dialTCP(t, addr)

	// Nothing has been sent: the banner must come anyway.
	if got := readLine(t, r); got != "HELLO v2 backend-v2-abc\n" {
		t.Fatalf("banner %q, want %q", got, "HELLO v2 backend-v2-abc\n")
	}
	for _, line := range []string{"ping", "two words", "crlf\r", ""} {
		if _, err := io.WriteString(c, line+"\n"); err != nil {
			t.Fatal(err)
		}
		want := "ECHO " + strings.TrimSuffix(line, "\r") + "\n"
		if got := readLine(t, r); got != want {
			t.Errorf("echo of %q = %q, want %q", line, got, want)
		}
	}
	io.WriteString(c, "QUIT\n")
	if got := readLine(t, r); got != "BYE\n" {
		t.Errorf("answer to QUIT %q, want BYE", got)
	}
	if _, err := r.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("after BYE read = %v, want EOF (the server closes)", err)
	}
}

func TestTCPServerClosesOnALineTooLong(t *testing.T) {
	s := &server.TCP{Common: common()}
	addr, _ := serve(t, s.Serve)
	c, r := dialTCP(t, addr)
	readLine(t, r)
	go io.WriteString(c, strings.Repeat("x", server.MaxLine+10)+"\n")
	// EOF or a reset (the server closes with the rest of the line unread): not an answer.
	if line, err := r.ReadString('\n'); err == nil {
		t.Errorf("read after an oversized line = %q; want the connection closed", line)
	}
}

func TestTCPServerClosesIdleConnectionsAfterTheDrain(t *testing.T) {
	c := common()
	c.Drain = 200 * time.Millisecond
	s := &server.TCP{Common: c}
	addr, stop := serve(t, s.Serve)
	conn, r := dialTCP(t, addr)
	readLine(t, r)
	start := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("Serve returned %v", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond || d > 3*time.Second {
		t.Errorf("Serve returned after %s, want about the 200ms drain", d)
	}
	if _, err := r.ReadByte(); err == nil {
		t.Errorf("the idle connection is still open after the drain")
	}
	conn.Close()
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("the server still accepts connections after it stopped")
	}
}
