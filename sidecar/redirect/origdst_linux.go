package redirect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The getsockopt options conntrack answers with a connection's destination before NAT.
// Neither is in x/sys/unix. Both are served by nf_conntrack itself, so they work for
// connections NATed by nftables as well as by iptables.
const (
	soOriginalDst     = 80 // SO_ORIGINAL_DST, level SOL_IP (linux/netfilter_ipv4.h)
	ip6tSoOriginalDst = 80 // IP6T_SO_ORIGINAL_DST, level SOL_IPV6 (linux/netfilter_ipv6/ip6_tables.h)
)

// OriginalDestination returns where a redirected connection was going before the redirect
// rules sent it to the proxy: the service or peer address the application dialled (outbound),
// or the pod address and application port a client dialled (inbound).
//
// The connection's IP version decides the question asked: SO_ORIGINAL_DST for IPv4, also for
// IPv4 clients of a dual-stack [::] listener, and IP6T_SO_ORIGINAL_DST for IPv6.
//
// For a connection that conntrack saw but that was not redirected, the answer is the
// connection's own local address: callers that must detect "not redirected" compare the two.
// Where conntrack is not running at all (no NAT rules in the namespace), the error wraps
// ENOENT.
func OriginalDestination(c *net.TCPConn) (netip.AddrPort, error) {
	local, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok || local == nil {
		return netip.AddrPort{}, errors.New("original destination: the connection has no local TCP address")
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination of %s: %w", local, err)
	}
	is4 := local.AddrPort().Addr().Unmap().Is4()
	var dst netip.AddrPort
	var serr error
	cerr := rc.Control(func(fd uintptr) {
		if is4 {
			dst, serr = origDst4(fd)
		} else {
			dst, serr = origDst6(fd)
		}
	})
	if cerr != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination of %s: %w", local, cerr)
	}
	if serr != nil {
		if errors.Is(serr, unix.ENOENT) {
			return netip.AddrPort{}, fmt.Errorf("original destination of %s: conntrack has no entry for the connection (is it redirected by nftables in this network namespace?): %w", local, serr)
		}
		return netip.AddrPort{}, fmt.Errorf("original destination of %s: %w", local, serr)
	}
	return dst, nil
}

func origDst4(fd uintptr) (netip.AddrPort, error) {
	var sa unix.RawSockaddrInet4
	if err := getsockopt(fd, unix.SOL_IP, soOriginalDst, unsafe.Pointer(&sa), unsafe.Sizeof(sa)); err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt SO_ORIGINAL_DST: %w", err)
	}
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), netPort(sa.Port)), nil
}

func origDst6(fd uintptr) (netip.AddrPort, error) {
	var sa unix.RawSockaddrInet6
	if err := getsockopt(fd, unix.SOL_IPV6, ip6tSoOriginalDst, unsafe.Pointer(&sa), unsafe.Sizeof(sa)); err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt IP6T_SO_ORIGINAL_DST: %w", err)
	}
	addr := netip.AddrFrom16(sa.Addr)
	if sa.Scope_id != 0 {
		addr = addr.WithZone(strconv.FormatUint(uint64(sa.Scope_id), 10))
	}
	return netip.AddrPortFrom(addr, netPort(sa.Port)), nil
}

// netPort reads a sockaddr port, which is stored in network byte order.
func netPort(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return binary.BigEndian.Uint16(b[:])
}

func getsockopt(fd uintptr, level, opt int, val unsafe.Pointer, size uintptr) error {
	l := uint32(size)
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(opt), uintptr(val), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}
