//go:build !linux

package redirect

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

var errNotLinux = fmt.Errorf("traffic redirection uses Linux nftables and conntrack: %w", errors.ErrUnsupported)

// Apply programs the redirect rules; only on Linux.
func Apply(r Rules) error { return errNotLinux }

// Remove deletes the redirect rules; only on Linux.
func Remove() error { return errNotLinux }

// OriginalDestination returns a redirected connection's destination; only on Linux.
func OriginalDestination(c *net.TCPConn) (netip.AddrPort, error) {
	return netip.AddrPort{}, errNotLinux
}
