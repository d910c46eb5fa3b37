// Package sniff detects the protocol a client speaks from the first bytes it sends, without
// consuming them: the bytes read while sniffing are replayed in front of the stream.
//
// It recognises an HTTP/1.1 request line, the HTTP/2 connection preface (h2c with prior
// knowledge) and a TLS ClientHello record. Everything else, including HTTP/1.0 (carried as
// TCP, as Envoy's http_inspector does), is Unknown. Silence is Unknown too: a server-first
// protocol (MySQL, SMTP) must reach its server, which speaks first, so the caller gives up
// sniffing at a deadline and treats the connection as opaque bytes.
package sniff

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"time"
)

// Protocol is what the first bytes of a connection look like.
type Protocol int

// The protocols.
const (
	// Unknown is anything else, or too few bytes before the deadline: carry it as TCP.
	Unknown Protocol = iota
	// HTTP1 is an HTTP/1.1 request line.
	HTTP1
	// HTTP2 is the HTTP/2 client connection preface (prior knowledge, h2c).
	HTTP2
	// TLS is a TLS handshake record (a ClientHello).
	TLS
)

func (p Protocol) String() string {
	switch p {
	case HTTP1:
		return "http/1.1"
	case HTTP2:
		return "h2c"
	case TLS:
		return "tls"
	default:
		return "unknown"
	}
}

// MaxPeek is the most a sniffer reads before giving up: a request line longer than this is
// carried as TCP (it still reaches the same destination).
const MaxPeek = 16 << 10

// Preface is the HTTP/2 client connection preface.
const Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

const maxMethod = 24 // longer than any method in use; bounds the token scan

// Classify looks at the bytes a client sent so far. final reports whether more bytes could
// change the answer: when it is false the caller should read more (until a deadline) and
// classify again; what it has then is Unknown.
func Classify(b []byte) (p Protocol, final bool) {
	if len(b) == 0 {
		return Unknown, false
	}
	if b[0] == 0x16 { // TLS handshake record
		return classifyTLS(b)
	}
	// The h2 preface starts like a request line with method PRI; check it first.
	if n := min(len(b), len(Preface)); bytes.Equal(b[:n], []byte(Preface)[:n]) {
		if n == len(Preface) {
			return HTTP2, true
		}
		return Unknown, false
	}
	return classifyRequestLine(b)
}

// classifyTLS: content type 22, legacy version 3.x, then (when present) a length and
// handshake type 1 (ClientHello).
func classifyTLS(b []byte) (Protocol, bool) {
	if len(b) < 2 {
		return Unknown, false
	}
	if b[1] != 0x03 {
		return Unknown, true
	}
	if len(b) < 3 {
		return Unknown, false
	}
	if b[2] > 0x04 {
		return Unknown, true
	}
	if len(b) < 6 {
		return Unknown, false
	}
	if b[5] != 0x01 {
		return Unknown, true
	}
	return TLS, true
}

// classifyRequestLine accepts "METHOD SP request-target SP HTTP/1.1 CRLF" where METHOD is a
// token of upper-case letters, '-' or '_', and the target has no control characters or
// spaces. HTTP/1.0 (and anything not 1.1) is Unknown.
func classifyRequestLine(b []byte) (Protocol, bool) {
	i := 0
	for ; i < len(b); i++ {
		c := b[i]
		if c == ' ' {
			break
		}
		if !(c >= 'A' && c <= 'Z' || c == '-' || c == '_') || i >= maxMethod {
			return Unknown, true
		}
	}
	if i == len(b) {
		return Unknown, false
	}
	if i == 0 {
		return Unknown, true
	}
	// request-target
	j := i + 1
	for ; j < len(b); j++ {
		c := b[j]
		if c == ' ' {
			break
		}
		if c < 0x21 || c == 0x7f {
			return Unknown, true
		}
	}
	if j == len(b) {
		return Unknown, false
	}
	if j == i+1 {
		return Unknown, true
	}
	const version = "HTTP/1.1\r\n"
	rest := b[j+1:]
	n := min(len(rest), len(version))
	if !bytes.Equal(rest[:n], []byte(version)[:n]) {
		return Unknown, true
	}
	if n < len(version) {
		return Unknown, false
	}
	return HTTP1, true
}

// Conn is a connection whose first bytes were read while sniffing; Read returns them
// before reading on.
type Conn struct {
	net.Conn
	buf []byte
	off int
}

// NewConn wraps c for sniffing.
func NewConn(c net.Conn) *Conn {
	if sc, ok := c.(*Conn); ok {
		return sc
	}
	return &Conn{Conn: c}
}

// Peeked is what was read while sniffing and not read back yet.
func (c *Conn) Peeked() []byte { return c.buf[c.off:] }

// Read returns the peeked bytes first, then reads from the connection.
func (c *Conn) Read(p []byte) (int, error) {
	if c.off < len(c.buf) {
		n := copy(p, c.buf[c.off:])
		c.off += n
		if c.off == len(c.buf) {
			c.buf, c.off = nil, 0
		}
		return n, nil
	}
	return c.Conn.Read(p)
}

// WriteTo lets io.Copy drain the peeked bytes, then copy from the connection.
func (c *Conn) WriteTo(w io.Writer) (int64, error) {
	var total int64
	if c.off < len(c.buf) {
		n, err := w.Write(c.buf[c.off:])
		total += int64(n)
		c.off += n
		if err != nil {
			return total, err
		}
		c.buf, c.off = nil, 0
	}
	n, err := io.Copy(w, c.Conn)
	return total + n, err
}

// CloseWrite half-closes the underlying connection when it supports it.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Result is the outcome of Sniff.
type Result struct {
	Protocol Protocol
	// TimedOut: the deadline came before the bytes decided (silence counts).
	TimedOut bool
	// Bytes is how many bytes were read while sniffing.
	Bytes int
}

// Sniff reads from c until classify decides, the timeout passes, the peer stops sending
// (EOF) or MaxPeek bytes were read. It never loses a byte: everything read is replayed by
// c.Read. A timeout or EOF is not an error: the result is then Unknown (TCP). The error is
// for other read failures, after which the connection is useless.
func (c *Conn) Sniff(timeout time.Duration, classify func([]byte) (Protocol, bool)) (Result, error) {
	if classify == nil {
		classify = Classify
	}
	if p, final := classify(c.Peeked()); final {
		return Result{Protocol: p, Bytes: len(c.Peeked())}, nil
	}
	if err := c.Conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return Result{}, err
	}
	defer c.Conn.SetReadDeadline(time.Time{})
	if c.off > 0 { // compact so that buf holds only unread bytes
		c.buf = append(c.buf[:0:0], c.buf[c.off:]...)
		c.off = 0
	}
	chunk := make([]byte, 2048)
	for len(c.buf) < MaxPeek {
		n, err := c.Conn.Read(chunk[:min(len(chunk), MaxPeek-len(c.buf))])
		c.buf = append(c.buf, chunk[:n]...)
		if n > 0 {
			if p, final := classify(c.buf); final {
				return Result{Protocol: p, Bytes: len(c.buf)}, nil
			}
		}
		if err != nil {
			var ne net.Error
			if errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
				return Result{Protocol: Unknown, TimedOut: true, Bytes: len(c.buf)}, nil
			}
			if errors.Is(err, io.EOF) {
				return Result{Protocol: Unknown, Bytes: len(c.buf)}, nil
			}
			return Result{Bytes: len(c.buf)}, err
		}
	}
	return Result{Protocol: Unknown, Bytes: len(c.buf)}, nil
}
