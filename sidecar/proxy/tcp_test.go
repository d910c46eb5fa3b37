package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/sidecar/config"
	"github.com/trellis-mesh/trellis/sidecar/proxy/sniff"
)

// echoAfterEOF reads everything until the client half-closes, then sends it back reversed
// and closes: the reply can only come if the half-close crossed both sidecars.
func echoAfterEOF(c net.Conn) {
	b, err := io.ReadAll(c)
	if err != nil {
		return
	}
	for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
		b[i], b[j] = b[j], b[i]
	}
	c.Write(b)
}

func TestTCPEchoWithHalfClose(t *testing.T) {
	p := newPair(t, tcpApp(t, echoAfterEOF), pairOpts{outProto: config.ProtocolTCP, inProto: config.ProtocolTCP, strict: true})
	c, err := net.Dial("tcp", p.client)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	payload := bytes.Repeat([]byte("0123456789abcdef"), 20000) // 320 KB: many reads and writes
	go func() {
		c.Write(payload)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(payload)
	for i, j := 0, len(want)-1; i < j; i, j = i+1, j-1 {
		want[i], want[j] = want[j], want[i]
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes back, want the %d sent, reversed", len(got), len(want))
	}
	waitFor(t, func() bool { return len(p.a.obs.connsSnapshot()) == 1 })
	ci := p.a.obs.connsSnapshot()[0]
	if ci.BytesSent != int64(len(payload)) || ci.BytesReceived != int64(len(payload)) || ci.Err != nil || ci.DestinationIdentity != p.b.id {
		t.Errorf("conn telemetry %+v", ci)
	}
}

func TestServerFirstProtocolOverDetectDoesNotStall(t *testing.T) {
	banner := "220 smtp.example ESMTP ready\r\n"
	appAddr := tcpApp(t, func(c net.Conn) {
		io.WriteString(c, banner) // the server speaks first
		io.Copy(c, c)
	})
	p := newPair(t, appAddr, pairOpts{outProto: config.ProtocolDetect, inProto: config.ProtocolDetect, httpCluster: true, strict: true})
	c, err := net.Dial("tcp", p.client)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second)) // generous: the sniff gives up after 100ms
	br := bufio.NewReader(c)
	if got := readLine(t, br); got != banner {
		t.Fatalf("banner %q, want %q", got, banner)
	}
	io.WriteString(c, "EHLO client\r\n")
	if got := readLine(t, br); got != "EHLO client\r\n" {
		t.Fatalf("echo %q", got)
	}
	sn := p.a.obs.sniffed()
	if len(sn) != 1 || sn[0].Protocol != sniff.Unknown || !sn[0].TimedOut {
		t.Errorf("sniff results %+v, want one timeout", sn)
	}
}

func TestDetectSendsHTTPToTheHTTPPathAndBinaryToTCP(t *testing.T) {
	httpApp := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "peer="+r.Header.Get(peerField))
	}))
	p := newPair(t, httpApp, pairOpts{outProto: config.ProtocolDetect, inProto: config.ProtocolHTTP, httpCluster: true, strict: true, upstream: config.UpstreamHTTP1})
	resp, body := get(t, clientTo(p.client), "http://web.default/")
	if resp.StatusCode != 200 || body != "peer="+p.a.id {
		t.Fatalf("HTTP over detect: %d %q", resp.StatusCode, body)
	}
	if sn := p.a.obs.sniffed(); len(sn) != 1 || sn[0].Protocol != sniff.HTTP1 || sn[0].TimedOut {
		t.Errorf("sniff results %+v", sn)
	}

	// A client-first binary protocol to the same kind of listener is spliced as TCP.
	bin := newPair(t, tcpApp(t, func(c net.Conn) { io.Copy(c, c) }), pairOpts{outProto: config.ProtocolDetect, inProto: config.ProtocolDetect, httpCluster: true, strict: true})
	c, err := net.Dial("tcp", bin.client)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := []byte{0x00, 0x01, 0x02, 0xff, 'x'}
	c.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo %q, %v", got, err)
	}
	if sn := bin.a.obs.sniffed(); len(sn) != 1 || sn[0].Protocol != sniff.Unknown || sn[0].TimedOut {
		t.Errorf("sniff results %+v, want unknown without a timeout", sn)
	}
}

func TestTCPIdleTimeoutClosesTheConnection(t *testing.T) {
	p := newPair(t, tcpApp(t, func(c net.Conn) { io.Copy(c, c) }), pairOpts{outProto: config.ProtocolTCP, inProto: config.ProtocolTCP, strict: true,
		modify: func(a, _ *config.Config) { a.Outbound[ap(vip)].TCP.IdleTimeout = 200 * time.Millisecond }})
	c, err := net.Dial("tcp", p.client)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "x")
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(b); err == nil {
		t.Fatal("the idle connection was not closed")
	}
}

func TestPassthroughForAnUnknownDestination(t *testing.T) {
	m := newMesh(t)
	a := m.node(clientSA)
	a.cfg.Store(&config.Config{Outbound: map[netip.AddrPort]*config.OutboundListener{}, Clusters: map[string]*config.Cluster{}})
	// The destination is a real server outside the mesh; the sidecar has no listener for it.
	echo := tcpApp(t, func(c net.Conn) { io.Copy(c, c) })
	c, err := net.Dial("tcp", a.outbound(ap(echo)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := "not HTTP, not TLS, untouched\r\n"
	io.WriteString(c, msg)
	if got := readLine(t, bufio.NewReader(c)); got != msg {
		t.Fatalf("echo %q", got)
	}

	web := app(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "direct, peer header: "+r.Header.Get(peerField))
	}))
	resp, body := get(t, clientTo(a.outbound(ap(web))), "http://outside/")
	if resp.StatusCode != 200 || body != "direct, peer header: " {
		t.Fatalf("HTTP passthrough: %d %q", resp.StatusCode, body)
	}
	if resp.Header.Get("X-Trellis-Error") != "" || strings.Contains(body, "spiffe") {
		t.Errorf("passthrough traffic was touched")
	}
}

func (r *recorder) connsSnapshot() []ConnInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]ConnInfo(nil), r.conns...)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
