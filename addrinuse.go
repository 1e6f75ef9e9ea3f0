package reuse

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// AddrInUseError is the error Listen, ListenContext, ListenPacket and Dial
// return on Linux when the address is already in use. It keeps the stdlib's
// error in Err, so errors.Is(err, syscall.EADDRINUSE), errors.As with
// *net.OpError and IsAddrInUse all still hold, and its message adds what the
// kernel's socket table showed on the port right after the failed bind, and
// what to do about it:
//
//	listen tcp 127.0.0.1:8080: bind: address already in use: port 8080 is held by a LISTEN socket of pid 4242 (nginx) on 0.0.0.0:8080; SO_REUSEADDR cannot share a live port
//
// The table is read only on this failure path; a Listen that succeeds pays
// nothing for it.
type AddrInUseError struct {
	// Network and Address are the arguments of the call that failed; for
	// Dial, Address is the local address.
	Network, Address string
	// Sockets is every TCP socket on the port, taken right after the failed
	// bind with Sockets, including those on other local addresses of that
	// port. It is nil for UDP, unix networks, and when the table could not
	// be read.
	Sockets []Socket
	// Err is the original error; Unwrap returns it.
	Err error

	why string // the diagnosis, made when the error was
}

// Error returns the stdlib's message followed by the diagnosis.
func (e *AddrInUseError) Error() string {
	if e.why == "" {
		return e.Err.Error()
	}
	return e.Err.Error() + ": " + e.why
}

// Unwrap returns Err.
func (e *AddrInUseError) Unwrap() error { return e.Err }

// Count returns how many of Sockets are in state s.
func (e *AddrInUseError) Count(s State) int {
	n := 0
	for _, sk := range e.Sockets {
		if sk.State == s {
			n++
		}
	}
	return n
}

// bindInfo is what the failed socket asked for, which the diagnosis needs.
type bindInfo struct {
	kind      kind
	addr      netip.AddrPort // the resolved local address; unspecified for ":port"
	reuseAddr bool           // the failed socket had SO_REUSEADDR on
	reusePort bool
}

// explainAddrInUse returns err as an *AddrInUseError when it is an
// address-in-use error and the census can be taken, else err unchanged.
func explainAddrInUse(network, address string, b bindInfo, err error) error {
	if !isAddrInUse(err) || b.addr.Port() == 0 {
		return err
	}
	e := &AddrInUseError{Network: network, Address: address, Err: err}
	if b.kind == kindUDP {
		e.why = fmt.Sprintf("another UDP socket holds port %d; a UDP port is shared only when every socket on it has SO_REUSEADDR, or SO_REUSEPORT and the same user", b.addr.Port())
		return e
	}
	socks, cerr := Sockets(int(b.addr.Port()))
	if errors.Is(cerr, errors.ErrUnsupported) {
		return err
	}
	if cerr != nil {
		e.why = "the socket table could not be read: " + cerr.Error()
		return e
	}
	e.Sockets = socks
	e.why = diagnose(b, socks, os.Getpid())
	return e
}

// diagnose says, from the census of the port, why a bind of b failed. It
// follows the kernel's rule (Linux inet_bind_conflict): a socket on an
// overlapping address blocks the bind unless both have SO_REUSEADDR and it is
// not listening, or both have SO_REUSEPORT under the same user.
func diagnose(b bindInfo, socks []Socket, self int) string {
	port := b.addr.Port()
	var listeners, bound, conns []Socket
	for _, s := range socks {
		if !overlaps(b.addr.Addr(), s.Local.Addr()) {
			continue
		}
		switch s.State {
		case StateListen:
			listeners = append(listeners, s)
		case StateClose:
			bound = append(bound, s)
		default:
			conns = append(conns, s)
		}
	}
	switch {
	case len(listeners) > 0:
		l := listeners[0]
		msg := fmt.Sprintf("port %d is held by a LISTEN socket %s on %s", port, owner(l, self), l.Local)
		if len(listeners) > 1 {
			msg += fmt.Sprintf(" and %d more", len(listeners)-1)
		}
		if b.reusePort {
			return msg + "; SO_REUSEPORT shares a live port only when every listener on it has SO_REUSEPORT and the same user"
		}
		return msg + "; SO_REUSEADDR cannot share a live port"
	case len(conns) > 0:
		counts, tw := stateCounts(conns)
		msg := fmt.Sprintf("port %d is held by %s", port, counts)
		for _, s := range conns {
			if s.PID != 0 {
				msg += " " + owner(s, self)
				break
			}
		}
		switch {
		case !b.reuseAddr && tw == len(conns):
			return msg + ", and this socket has SO_REUSEADDR off; TIME_WAIT ends within 60 s"
		case !b.reuseAddr:
			return msg + ", and this socket has SO_REUSEADDR off; the port stays busy until both ends have closed, then for the 60 s of TIME_WAIT"
		case tw == len(conns):
			return msg + " left by a listener without SO_REUSEADDR (a TIME_WAIT keeps its listener's setting, and both need it); TIME_WAIT ends within 60 s"
		}
		return msg + " without SO_REUSEADDR (from a listener that ran without it, or outgoing connections from this port); the port stays busy until both ends have closed"
	case len(bound) > 0:
		return fmt.Sprintf("port %d is bound by a socket %s that neither listens nor connects", port, owner(bound[0], self))
	}
	return fmt.Sprintf("no TCP socket on port %d shows in the kernel's table now: its holder has gone, or is bound without listening (shown only by Linux 6.8 and later)", port)
}

// overlaps reports whether binds to a and b collide: equal addresses, or a
// wildcard that covers the other. [::] covers IPv4 too, as a dual-stack
// socket does; an IPV6_V6ONLY one does not, which the table does not show.
func overlaps(a, b netip.Addr) bool {
	a, b = a.Unmap(), b.Unmap()
	switch {
	case a == b:
		return true
	case a.IsUnspecified():
		return a.Is6() || b.Is4()
	case b.IsUnspecified():
		return b.Is6() || a.Is4()
	}
	return false
}

// stateCounts formats "3 TIME_WAIT and 1 FIN_WAIT2 connections" and returns
// the TIME_WAIT count.
func stateCounts(socks []Socket) (string, int) {
	n := map[State]int{}
	var order []State
	for _, s := range socks {
		if n[s.State] == 0 {
			order = append(order, s.State)
		}
		n[s.State]++
	}
	parts := make([]string, len(order))
	for i, st := range order {
		parts[i] = strconv.Itoa(n[st]) + " " + st.String()
	}
	noun := "connections"
	if len(socks) == 1 {
		noun = "connection"
	}
	return strings.Join(parts, " and ") + " " + noun, n[StateTimeWait]
}

// owner names who holds s, as far as the census could see.
func owner(s Socket, self int) string {
	switch {
	case s.PID == self:
		return fmt.Sprintf("of this process (pid %d)", s.PID)
	case s.PID != 0:
		return fmt.Sprintf("of pid %d (%s)", s.PID, s.Command)
	case s.Inode != 0:
		return fmt.Sprintf("of user %d (its process is not visible to this user)", s.UID)
	}
	return "(no process holds it)"
}

// bindAddr resolves the local address a failed call asked for, with the
// wildcard Go binds for an empty host: [::] for "tcp" and "udp", which are
// dual-stack, 0.0.0.0 for the IPv4-only networks.
func bindAddr(network, address string) netip.AddrPort {
	var ip net.IP
	var port int
	switch network {
	case "tcp", "tcp4", "tcp6":
		a, err := net.ResolveTCPAddr(network, address)
		if err != nil {
			return netip.AddrPort{}
		}
		ip, port = a.IP, a.Port
	case "udp", "udp4", "udp6":
		a, err := net.ResolveUDPAddr(network, address)
		if err != nil {
			return netip.AddrPort{}
		}
		ip, port = a.IP, a.Port
	default:
		return netip.AddrPort{}
	}
	addr, ok := netip.AddrFromSlice(ip)
	switch {
	case !ok && strings.HasSuffix(network, "4"):
		addr = netip.IPv4Unspecified()
	case !ok:
		addr = netip.IPv6Unspecified()
	case addr.Unmap().IsUnspecified() && !strings.HasSuffix(network, "4"):
		addr = netip.IPv6Unspecified() // Go binds "0.0.0.0" as dual-stack [::] too
	}
	return netip.AddrPortFrom(addr.Unmap(), uint16(port))
}
