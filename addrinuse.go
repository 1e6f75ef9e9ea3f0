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

	why    string // the diagnosis, made when the error was
	reason Reason
}

// Reason is what held the address of a failed bind, as far as the kernel's
// tables showed it.
type Reason uint8

const (
	// ReasonUnknown: the table was not read, could not be read, or this OS
	// has none that this package reads.
	ReasonUnknown Reason = iota
	// ReasonListener: a listening socket holds the address (for a unix
	// socket path: a server answers at it).
	ReasonListener
	// ReasonTimeWait: only TIME_WAIT entries hold the port.
	ReasonTimeWait
	// ReasonConnections: open or closing connections hold the port
	// (ESTABLISHED, FIN_WAIT2, CLOSE_WAIT, ...), TIME_WAIT entries perhaps
	// among them.
	ReasonConnections
	// ReasonBound: a socket is bound to the address without listening.
	ReasonBound
	// ReasonGone: nothing held the address any more when the table was read.
	ReasonGone
	// ReasonNotSocket: a unix socket path is taken by a file that is not a
	// socket.
	ReasonNotSocket
	// ReasonStale: a unix socket path is taken by a socket file that nobody
	// listens on, which Listen did not replace (the error says why).
	ReasonStale
)

// unixInUse is the error of a unix socket Listen that found path taken; r
// and why say by what, and what Listen did about it.
func unixInUse(network, path string, err error, r Reason, why string) error {
	return &AddrInUseError{Network: network, Address: path, Err: err, reason: r, why: why}
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
	addr      netip.AddrPort // the local address that failed; unspecified for ":port"
	v6only    bool           // an IPv6 socket that does not take IPv4 (tcp6, udp6)
	reuseAddr bool           // the failed socket had SO_REUSEADDR on
	reusePort bool
}

// explainAddrInUse returns err as an *AddrInUseError when it is an
// address-in-use error and the census can be taken, else err unchanged.
func explainAddrInUse(network, address string, b bindInfo, err error) error {
	if !haveCensus || !isAddrInUse(err) {
		return err
	}
	if b.addr = failedAddr(err); b.addr.Port() == 0 {
		return err
	}
	e := &AddrInUseError{Network: network, Address: address, Err: err}
	if b.kind == kindUDP {
		e.why = fmt.Sprintf("another UDP socket holds port %d; a UDP port is shared only when every socket on it has SO_REUSEADDR, or SO_REUSEPORT and the same user", b.addr.Port())
		return e
	}
	socks, cerr := Sockets(int(b.addr.Port()))
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
// not listening, or both have SO_REUSEPORT under the same user. The census
// does not show the other sockets' SO_REUSEADDR: where the message names it,
// it is inferred from this socket's.
func diagnose(b bindInfo, socks []Socket, self int) string {
	port := b.addr.Port()
	var listeners, bound, conns []Socket
	for _, s := range socks {
		if !overlaps(b.addr.Addr(), b.v6only, s.Local.Addr()) {
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
	if len(listeners) > 0 {
		l := listeners[0]
		msg := fmt.Sprintf("port %d is held by a LISTEN socket %s on %s", port, owner(l, self), l.Local)
		if len(listeners) > 1 {
			msg += fmt.Sprintf(" and %d more", len(listeners)-1)
		}
		if b.reusePort {
			return msg + "; SO_REUSEPORT shares a live port only when every listener on it has SO_REUSEPORT and the same user"
		}
		return msg + "; SO_REUSEADDR cannot share a live port"
	}
	if len(conns)+len(bound) == 0 {
		return fmt.Sprintf("no TCP socket on port %d shows in the kernel's table now: its holder has gone, or is bound without listening (shown only by Linux 6.8 and later)", port)
	}
	var held []string
	tw := 0
	if len(conns) > 0 {
		var counts string
		counts, tw = stateCounts(conns)
		held = append(held, counts+ownerOf(conns, self))
	}
	if len(bound) > 0 {
		what := "a socket"
		if len(bound) > 1 {
			what = strconv.Itoa(len(bound)) + " sockets"
		}
		held = append(held, what+ownerOf(bound, self)+" bound without listening")
	}
	msg := fmt.Sprintf("port %d is held by %s", port, strings.Join(held, " and "))
	switch {
	case !b.reuseAddr && tw == len(conns)+len(bound):
		return msg + ", and this socket has SO_REUSEADDR off; TIME_WAIT ends within 60 s"
	case !b.reuseAddr:
		return msg + ", and this socket has SO_REUSEADDR off; the port stays busy until they close"
	case tw == len(conns)+len(bound):
		// This socket had SO_REUSEADDR and only TIME_WAITs are in the way:
		// some of them must lack it.
		return msg + " left by a listener without SO_REUSEADDR (a TIME_WAIT keeps its listener's setting, and both need it); TIME_WAIT ends within 60 s"
	}
	return msg + ", at least one without SO_REUSEADDR (from a listener that ran without it, an outgoing connection from this port, or a plain bind); the port stays busy until they close"
}

// overlaps reports whether a bind to a (IPv6-only when v6only) collides with
// a socket on b: equal addresses, or a wildcard that covers the other. The
// census does not carry IPV6_V6ONLY, so a [::] socket in it is taken to be
// dual-stack, as Go makes them for "tcp".
func overlaps(a netip.Addr, v6only bool, b netip.Addr) bool {
	a, b = a.Unmap(), b.Unmap()
	switch {
	case a == b:
		return true
	case a.IsUnspecified():
		return b.Is4() == a.Is4() || (a.Is6() && !v6only)
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

// ownerOf names the first holder found among socks, as " of pid N (cmd)",
// or "" when none is visible (TIME_WAIT and orphans have none).
func ownerOf(socks []Socket, self int) string {
	for _, s := range socks {
		if s.PID != 0 {
			return " " + owner(s, self)
		}
	}
	return ""
}

// failedAddr returns the local address in err, the *net.OpError of a failed
// listen (Addr) or dial (Source), as Go resolved it: no second lookup. An
// empty host is the wildcard Go bound: [::] for "tcp" and "udp", which are
// dual-stack, and it binds "0.0.0.0" that way too; 0.0.0.0 for "tcp4".
func failedAddr(err error) netip.AddrPort {
	var op *net.OpError
	if !errors.As(err, &op) {
		return netip.AddrPort{}
	}
	a := op.Addr
	if op.Op == "dial" {
		a = op.Source
	}
	var ip net.IP
	var port int
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, port = a.IP, a.Port
	case *net.UDPAddr:
		ip, port = a.IP, a.Port
	default:
		return netip.AddrPort{}
	}
	addr, ok := netip.AddrFromSlice(ip)
	ipv4Only := strings.HasSuffix(op.Net, "4")
	switch {
	case !ok && ipv4Only:
		addr = netip.IPv4Unspecified()
	case !ok:
		addr = netip.IPv6Unspecified()
	case addr.Unmap().IsUnspecified() && !ipv4Only:
		addr = netip.IPv6Unspecified()
	}
	return netip.AddrPortFrom(addr.Unmap(), uint16(port))
}
