package sniff

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		want  Protocol
		final bool
	}{
		{"nothing yet needs more bytes", "", Unknown, false},
		{"a GET request line is HTTP/1.1", "GET / HTTP/1.1\r\n", HTTP1, true},
		{"a POST with a query is HTTP/1.1", "POST /a/b?c=d HTTP/1.1\r\nHost: x\r\n", HTTP1, true},
		{"HEAD is HTTP/1.1", "HEAD /x HTTP/1.1\r\n", HTTP1, true},
		{"PUT is HTTP/1.1", "PUT /x HTTP/1.1\r\n", HTTP1, true},
		{"DELETE is HTTP/1.1", "DELETE /x HTTP/1.1\r\n", HTTP1, true},
		{"OPTIONS * is HTTP/1.1", "OPTIONS * HTTP/1.1\r\n", HTTP1, true},
		{"PATCH is HTTP/1.1", "PATCH /x HTTP/1.1\r\n", HTTP1, true},
		{"CONNECT authority form is HTTP/1.1", "CONNECT a:443 HTTP/1.1\r\n", HTTP1, true},
		{"an extension method is HTTP/1.1", "M-SEARCH * HTTP/1.1\r\n", HTTP1, true},
		{"HTTP/1.0 is carried as TCP", "GET / HTTP/1.0\r\n", Unknown, true},
		{"a partial method needs more bytes", "GE", Unknown, false},
		{"a partial target needs more bytes", "GET /abc", Unknown, false},
		{"a partial version needs more bytes", "GET / HTT", Unknown, false},
		{"a version without CRLF needs more bytes", "GET / HTTP/1.1", Unknown, false},
		{"a lower-case method is not HTTP", "get / HTTP/1.1\r\n", Unknown, true},
		{"an empty method is not HTTP", " / HTTP/1.1\r\n", Unknown, true},
		{"an empty target is not HTTP", "GET  HTTP/1.1\r\n", Unknown, true},
		{"a control character in the target is not HTTP", "GET /\x00 HTTP/1.1\r\n", Unknown, true},
		{"a very long method is not HTTP", strings.Repeat("A", 40), Unknown, true},
		{"the full HTTP/2 preface is h2c", Preface, HTTP2, true},
		{"the preface and a frame is h2c", Preface + "\x00\x00\x00\x04\x00\x00\x00\x00\x00", HTTP2, true},
		{"a partial preface needs more bytes", Preface[:10], Unknown, false},
		{"PRI with another version is not h2c", "PRI * HTTP/1.1\r\n\r\n", HTTP1, true},
		{"a TLS ClientHello header is TLS", "\x16\x03\x01\x02\x00\x01", TLS, true},
		{"a TLS 1.3 record version is TLS", "\x16\x03\x03\x00\x10\x01", TLS, true},
		{"a partial TLS record needs more bytes", "\x16\x03", Unknown, false},
		{"a TLS record that is not a ClientHello is not TLS", "\x16\x03\x01\x00\x10\x02", Unknown, true},
		{"an SSLv2-looking record is not TLS", "\x16\x02\x00", Unknown, true},
		{"binary is unknown at once", "\x00\x01\x02\x03", Unknown, true},
		{"a MySQL-like packet is unknown", "\x4a\x00\x00\x00\x0a8.0", Unknown, true},
		{"an SSH banner is unknown", "SSH-2.0-OpenSSH\r\n", Unknown, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, final := Classify([]byte(tt.in))
			if got != tt.want || final != tt.final {
				t.Fatalf("Classify(%q) = %v, %v; want %v, %v", tt.in, got, final, tt.want, tt.final)
			}
		})
	}
}

func TestClassifyRealClientHello(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	go func() {
		_ = tls.Client(client, &tls.Config{ServerName: "x", MinVersion: tls.VersionTLS12}).Handshake()
	}()
	sc := NewConn(server)
	res, err := sc.Sniff(5*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Protocol != TLS {
		t.Fatalf("got %v for a real ClientHello, want tls", res.Protocol)
	}
}

// chunkConn delivers data in the given pieces, one per Read, then blocks until closed (or
// returns EOF when eof is set).
type chunkConn struct {
	net.Conn
	chunks [][]byte
	eof    bool
	done   chan struct{}
	dl     time.Time
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.chunks) > 0 {
		n := copy(p, c.chunks[0])
		c.chunks[0] = c.chunks[0][n:]
		if len(c.chunks[0]) == 0 {
			c.chunks = c.chunks[1:]
		}
		return n, nil
	}
	if c.eof {
		return 0, io.EOF
	}
	if !c.dl.IsZero() {
		select {
		case <-time.After(time.Until(c.dl)):
			return 0, timeoutErr{}
		case <-c.done:
			return 0, io.EOF
		}
	}
	<-c.done
	return 0, io.EOF
}

func (c *chunkConn) SetReadDeadline(t time.Time) error { c.dl = t; return nil }

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestSniff(t *testing.T) {
	tests := []struct {
		name     string
		chunks   []string
		eof      bool
		want     Protocol
		timedOut bool
	}{
		{"a request line in one read is HTTP", []string{"GET / HTTP/1.1\r\nHost: a\r\n\r\n"}, false, HTTP1, false},
		{"a request line split over reads is HTTP", []string{"G", "ET /", "x HTTP/", "1.1\r", "\n"}, false, HTTP1, false},
		{"the preface split over reads is h2c", []string{"PRI * HTTP", "/2.0\r\n\r\nSM", "\r\n\r\n"}, false, HTTP2, false},
		{"binary is TCP without waiting", []string{"\x00\x00"}, false, Unknown, false},
		{"silence times out as TCP", nil, false, Unknown, true},
		{"a stalled partial request line times out as TCP", []string{"GET /"}, false, Unknown, true},
		{"a client that closes at once is TCP", nil, true, Unknown, false},
		{"a partial request line then EOF is TCP", []string{"GET"}, true, Unknown, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var chunks [][]byte
			var all []byte
			for _, c := range tt.chunks {
				chunks = append(chunks, []byte(c))
				all = append(all, c...)
			}
			cc := &chunkConn{chunks: chunks, eof: tt.eof, done: make(chan struct{})}
			defer close(cc.done)
			sc := NewConn(cc)
			res, err := sc.Sniff(50*time.Millisecond, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.Protocol != tt.want || res.TimedOut != tt.timedOut {
				t.Fatalf("got %+v, want %v timedOut=%v", res, tt.want, tt.timedOut)
			}
			// Every byte read while sniffing comes back first.
			got := make([]byte, len(all))
			if _, err := io.ReadFull(sc, got); err != nil {
				t.Fatalf("read back: %v", err)
			}
			if !bytes.Equal(got, all) {
				t.Fatalf("read back %q, want %q", got, all)
			}
		})
	}
}

func TestSniffReplaysOverRealSocket(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			return
		}
		c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, c)
		c.Close()
	}()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc := NewConn(c)
	res, err := sc.Sniff(5*time.Second, nil)
	if err != nil || res.Protocol != HTTP1 {
		t.Fatalf("got %+v, %v", res, err)
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, sc); err != nil {
		t.Fatal(err)
	}
	if buf.String() != "GET / HTTP/1.1\r\nHost: x\r\n\r\n" {
		t.Fatalf("got %q", buf.String())
	}
}

func FuzzSniff(f *testing.F) {
	for _, s := range []string{"GET / HTTP/1.1\r\n", Preface, "\x16\x03\x01\x00\x05\x01", "\x00", "GET / HTTP/1.0\r\n", "M-SEARCH * HTTP/1.1\r\n"} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, data []byte, split uint8) {
		p, final := Classify(data)
		if p != Unknown && !final {
			t.Fatalf("a positive answer must be final: %v", p)
		}
		// Classifying byte by byte agrees with classifying all at once once final.
		for i := 0; i <= min(len(data), 256); i++ {
			pp, ff := Classify(data[:i])
			if ff {
				if p2, f2 := Classify(data); pp != p2 || !f2 {
					t.Fatalf("prefix %q decided %v but the whole gives %v final=%v", data[:i], pp, p2, f2)
				}
				break
			}
		}
		// Sniffing never loses or reorders bytes.
		var chunks [][]byte
		step := int(split%16) + 1
		for i := 0; i < len(data); i += step {
			chunks = append(chunks, append([]byte(nil), data[i:min(i+step, len(data))]...))
		}
		cc := &chunkConn{chunks: chunks, eof: true, done: make(chan struct{})}
		sc := NewConn(cc)
		if _, err := sc.Sniff(time.Second, nil); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(sc)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("read back %q, want %q", got, data)
		}
	})
}
