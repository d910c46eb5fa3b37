package svid

import (
	"crypto/tls"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/trellis-mesh/trellis/controlplane/identity"
)

// echoServer is a TLS echo server on 127.0.0.1 that records the serial of each client's
// certificate.
type echoServer struct {
	addr string

	mu      sync.Mutex
	serials []string
}

func newEchoServer(t *testing.T, cfg *tls.Config) *echoServer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &echoServer{addr: lis.Addr().String()}
	var wg sync.WaitGroup
	var connsMu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		_ = lis.Close()
		connsMu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		connsMu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			connsMu.Lock()
			conns = append(conns, c)
			connsMu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				tc := tls.Server(c, cfg)
				if err := tc.Handshake(); err != nil {
					return
				}
				e.mu.Lock()
				e.serials = append(e.serials, tc.ConnectionState().PeerCertificates[0].SerialNumber.Text(16))
				e.mu.Unlock()
				_, _ = io.Copy(tc, tc)
			}()
		}
	}()
	return e
}

func (e *echoServer) clientSerials() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.serials...)
}

func dialTLS(t *testing.T, addr string, cfg *tls.Config) *tls.Conn {
	t.Helper()
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func echo(t *testing.T, c *tls.Conn, msg string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write on an established connection: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read on an established connection: %v", err)
	}
	if string(buf) != msg {
		t.Fatalf("echo = %q, want %q", buf, msg)
	}
}

func peerSerial(c *tls.Conn) string {
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Text(16)
}

func TestRenewalKeepsConnectionsAndNewHandshakesPresentTheNewCertificate(t *testing.T) {
	ca := newCA(t)
	addr, _ := realCA(t, ca)
	clock, fs := newFakeClock(), newFakeSleep()
	opts := testOptions(t, addr, ca)
	opts.Now = clock.Now
	s := newSource(t, opts)
	s.sleep = fs.sleep
	start(t, s)
	waitReady(t, s)

	first := s.Status()
	t0 := clock.Now()
	if want := t0.Add(first.NotAfter.Sub(t0) / 2); !first.RenewAt.Equal(want) {
		t.Errorf("RenewAt = %s, want half of the life from now: %s", first.RenewAt, want)
	}
	wait := fs.next(t)
	if want := first.RenewAt.Sub(t0); wait.d != want {
		t.Errorf("Start waits %s, want %s (until RenewAt)", wait.d, want)
	}

	// The sidecar talks to itself: both ends read the Source at each handshake.
	serverCfg := tlsconfig.MTLSServerConfig(s, s, tlsconfig.AuthorizeMemberOf(td))
	serverCfg.MinVersion = tls.VersionTLS13
	clientCfg := tlsconfig.MTLSClientConfig(s, s, tlsconfig.AuthorizeID(cartID))
	clientCfg.MinVersion = tls.VersionTLS13
	srv := newEchoServer(t, serverCfg)
	before := dialTLS(t, srv.addr, clientCfg)
	echo(t, before, "before renewal")
	if got := peerSerial(before); got != first.SerialNumber {
		t.Fatalf("server presented serial %s, want %s", got, first.SerialNumber)
	}

	clock.Advance(wait.d + time.Second)
	close(wait.wake)
	wait = fs.next(t) // Start renewed and waits for the next renewal
	second := s.Status()
	if second.SerialNumber == first.SerialNumber || second.LastError != "" {
		t.Fatalf("after the renewal time Status = %+v, want a new serial and no error", second)
	}
	now := clock.Now()
	if want := now.Add(second.NotAfter.Sub(now) / 2); !second.RenewAt.Equal(want) || wait.d != want.Sub(now) {
		t.Errorf("next renewal at %s in %s, want %s", second.RenewAt, wait.d, want)
	}

	echo(t, before, "after renewal")
	if got := peerSerial(before); got != first.SerialNumber {
		t.Errorf("the established connection's peer changed to %s", got)
	}
	after := dialTLS(t, srv.addr, clientCfg)
	echo(t, after, "new handshake")
	if got := peerSerial(after); got != second.SerialNumber {
		t.Errorf("a new handshake got server serial %s, want the new %s", got, second.SerialNumber)
	}
	if got, want := srv.clientSerials(), []string{first.SerialNumber, second.SerialNumber}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("client serials seen by the server = %v, want %v", got, want)
	}
	echo(t, before, "still alive")
}

func TestAFailedRenewalKeepsTheSVIDAndRetries(t *testing.T) {
	clock, fs := newFakeClock(), newFakeSleep()
	ca := newCA(t, identity.WithClock(clock.Now))
	addr, _ := realCA(t, ca)
	g := &gate{}
	opts := testOptions(t, addr, ca)
	opts.Now = clock.Now
	opts.DialOptions = append(opts.DialOptions, g.option())
	s := newSource(t, opts)
	s.sleep = fs.sleep
	start(t, s)
	waitReady(t, s)
	first := s.Status()
	wait := fs.next(t)

	steps := []struct {
		name string
		down bool
		// advance the clock to this point before waking Start: "renew" (RenewAt),
		// "expiry" (past NotAfter of the first SVID), "" (do not move).
		at          string
		retry       [2]time.Duration // bounds of the next wait: a backoff
		wantSerial  string           // "" means a new one
		wantErr     string           // in Status().LastError
		wantSVIDErr string           // from GetX509SVID
	}{
		{"the CA is down at renewal: the SVID is kept and the request retried with backoff", true, "renew",
			[2]time.Duration{opts.InitialBackoff / 2, opts.InitialBackoff}, first.SerialNumber, "unreachable", ""},
		{"the retries back off further and the SVID still serves", true, "",
			[2]time.Duration{opts.InitialBackoff, 2 * opts.InitialBackoff}, first.SerialNumber, "unreachable", ""},
		{"once the SVID expires it is no longer served and the retries go on", true, "expiry",
			[2]time.Duration{2 * opts.InitialBackoff, opts.MaxBackoff}, first.SerialNumber, "unreachable", "expired"},
		{"the CA is back: a new SVID is obtained and the error cleared", false, "",
			[2]time.Duration{}, "", "", ""},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			g.down.Store(st.down)
			switch st.at {
			case "renew":
				clock.Advance(first.RenewAt.Sub(clock.Now()))
			case "expiry":
				clock.Advance(first.NotAfter.Sub(clock.Now()) + time.Second)
			}
			close(wait.wake)
			wait = fs.next(t)
			if st.retry != [2]time.Duration{} && (wait.d < st.retry[0] || wait.d > st.retry[1]) {
				t.Errorf("Start waits %s, want a backoff within [%s, %s]", wait.d, st.retry[0], st.retry[1])
			}
			status := s.Status()
			if st.wantSerial != "" && status.SerialNumber != st.wantSerial {
				t.Errorf("serial = %s, want the first SVID's %s kept", status.SerialNumber, st.wantSerial)
			}
			if st.wantSerial == "" && status.SerialNumber == first.SerialNumber {
				t.Errorf("serial is still the first SVID's")
			}
			if (st.wantErr == "") != (status.LastError == "") || !strings.Contains(status.LastError, st.wantErr) {
				t.Errorf("LastError = %q, want %q", status.LastError, st.wantErr)
			}
			if st.wantErr != "" && status.LastErrorTime.IsZero() {
				t.Error("LastErrorTime is not set")
			}
			sv, err := s.GetX509SVID()
			switch {
			case st.wantSVIDErr == "" && err != nil:
				t.Errorf("GetX509SVID: %v", err)
			case st.wantSVIDErr != "" && (err == nil || !strings.Contains(err.Error(), st.wantSVIDErr)):
				t.Errorf("GetX509SVID error = %v, want one containing %q", err, st.wantSVIDErr)
			case err == nil && sv.Certificates[0].SerialNumber.Text(16) != status.SerialNumber:
				t.Errorf("GetX509SVID serves serial %s, Status says %s", sv.Certificates[0].SerialNumber.Text(16), status.SerialNumber)
			}
		})
	}
}
