package reuse

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/safelisten/reuse/internal/census"
)

// AddrInUseError is the error Listen, ListenContext, ListenPacket and Dial
// return on Linux when the address is already in use. It keeps the stdlib's
// error in Err, so errors.Is(err, syscall.EADDRINUSE), errors.As with
// *net.OpError and IsAddrInUse all still hold, and its message adds what
// holds the port, as the kernel's socket table shows it, and what that
// means for the bind:
//
//	listen tcp4 127.0.0.1:8080: bind: address already in use: port 8080 is held by a LISTEN socket of pid 4242 (nginx) on 127.0.0.1:8080; SO_REUSEADDR cannot share a live port
//
// The table is read at the first call of Error or Diagnosis, not when the
// bind failed, so a failure that nobody looks at costs what net.Listen's
// costs; IsAddrInUse, errors.Is and errors.As never read it. What the
// message and Diagnosis report is the port as it was at that first call: a
// holder that has closed since is not seen, and the message says when the
// table was read long after the failure. The read is bounded (a second, and
// a few hundred sockets kept), done once, and shared by copies of the error;
// the error is safe for concurrent use.
type AddrInUseError struct {
	// Network and Address are the arguments of the call that failed; for
	// Dial, Address is the local address.
	Network, Address string
	// Err is the original error; Unwrap returns it.
	Err error

	x *explanation // nil in an AddrInUseError this package did not make
}

// Reason is what held the address of a failed bind, as far as the kernel's
// tables showed it.
type Reason uint8

const (
	// ReasonUnknown: the table was not read, could not be read (see
	// Diagnosis.Err), or this OS has none that this package reads.
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
	// ReasonBound: a socket is bound to the address without listening,
	// connections perhaps beside it.
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

var reasonNames = [...]string{
	ReasonUnknown:     "unknown",
	ReasonListener:    "listener",
	ReasonTimeWait:    "TIME_WAIT",
	ReasonConnections: "connections",
	ReasonBound:       "bound",
	ReasonGone:        "gone",
	ReasonNotSocket:   "not a socket",
	ReasonStale:       "stale",
}

// String returns the reason's name: "listener", "TIME_WAIT", "gone", ...
func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "Reason(" + strconv.Itoa(int(r)) + ")"
}

// Diagnosis is what the kernel's socket table showed on the port of a failed
// bind: the data behind AddrInUseError's message.
type Diagnosis struct {
	Reason Reason
	// Read is when the table was read: at the first call of Error or
	// Diagnosis, not at the failure; zero when it was not read. For a unix
	// socket path, it is when Listen looked at the path.
	Read time.Time
	// Holders are the TCP sockets that overlap the address of the failed
	// bind, listeners first, at most a few hundred of them.
	Holders []Holder
	// Count is how many sockets overlap it, Holders or not.
	Count int
	// Err says why the table was not read, or nil.
	Err error
}

// Holder is a socket that holds the address of a failed bind.
type Holder struct {
	// State is the socket's TCP state as the kernel names it: "LISTEN",
	// "TIME_WAIT", "ESTABLISHED", "CLOSE" (bound, not listening), ...
	State         string
	Local, Remote netip.AddrPort
	// UID is the user that created the socket; 0 for TIME_WAIT entries.
	UID uint32
	// PID is a process that holds the socket, or 0 when none is visible:
	// TIME_WAIT entries have none, and another user's processes are
	// visible only to root. Command is its name as that process set it,
	// unescaped: its owner chooses it, so quote it (%q) before printing.
	PID     int
	Command string
}

// explanation is the diagnosis of one failure, made once, shared by the
// copies of its error.
type explanation struct {
	once   sync.Once
	b      bindInfo
	failed time.Time // when the bind failed
	d      Diagnosis
	why    string // the message's diagnosis
	// given: d and why were set when the error was made (unix, UDP).
	given bool
}

func (x *explanation) get() *explanation {
	x.once.Do(func() {
		if !x.given {
			x.d, x.why = explain(x.b, x.failed)
		}
	})
	return x
}

// unixInUse is the error of a unix socket Listen that found path taken; r
// and why say by what, and what Listen did about it.
func unixInUse(network, path string, err error, r Reason, why string) error {
	x := &explanation{given: true, why: why, d: Diagnosis{Reason: r, Read: time.Now()}}
	return &AddrInUseError{Network: network, Address: path, Err: err, x: x}
}

// Error returns the stdlib's message followed by the diagnosis, reading the
// socket table first if no call has read it yet.
func (e *AddrInUseError) Error() string {
	if e == nil {
		return "<nil>"
	}
	msg := "address already in use"
	switch {
	case e.Err != nil:
		msg = e.Err.Error()
	case e.Address != "":
		msg = e.Network + " " + e.Address + ": " + msg
	}
	if e.x == nil {
		return msg
	}
	if why := e.x.get().why; why != "" {
		msg += ": " + why
	}
	return msg
}

// Unwrap returns Err.
func (e *AddrInUseError) Unwrap() error {
	if e == nil {
		return nil
	}
	return e.Err
}

// Diagnosis returns what held the address, reading the socket table first if
// no call has read it yet. Its Holders are the caller's to keep or change.
// An AddrInUseError this package did not make has Reason ReasonUnknown and
// an Err that says so.
func (e *AddrInUseError) Diagnosis() Diagnosis {
	if e == nil || e.x == nil {
		return Diagnosis{Err: errNotMade}
	}
	d := e.x.get().d
	d.Holders = slices.Clone(d.Holders)
	return d
}

var errNotMade = errors.New("reuse: no diagnosis: this AddrInUseError was not made by Listen, ListenPacket or Dial")

// bindInfo is what the failed socket asked for, which the diagnosis needs.
type bindInfo struct {
	kind      kind
	addr      netip.AddrPort // the local address that failed; unspecified for ":port"
	v6only    bool           // an IPv6 socket that does not take IPv4 (tcp6, udp6)
	reuseAddr bool           // the failed socket had SO_REUSEADDR on
	reusePort bool
}

// explainAddrInUse returns err as an *AddrInUseError when it is an
// address-in-use error that a census can explain, else err unchanged. It
// reads nothing: the diagnosis is made when first asked for.
func explainAddrInUse(network, address string, b bindInfo, err error) error {
	if !census.Supported || !isAddrInUse(err) {
		return err
	}
	if b.addr = failedAddr(err); b.addr.Port() == 0 {
		return err
	}
	e := &struct {
		e AddrInUseError
		x explanation
	}{}
	e.x.b, e.x.failed = b, time.Now()
	e.e = AddrInUseError{Network: network, Address: address, Err: err, x: &e.x}
	return &e.e
}

// readTable reads the census of a failed bind; tests count its calls.
var readTable = census.Read

// query asks for the sockets in the way of b, with their owners.
func (b bindInfo) query() census.Query {
	return census.Query{
		Port:   b.addr.Port(),
		Match:  func(s census.Socket) bool { return overlaps(b.addr.Addr(), b.v6only, s) },
		Owners: true,
	}
}

// explain reads the socket table on the port of b, which failed at failed,
// and says what holds it.
func explain(b bindInfo, failed time.Time) (Diagnosis, string) {
	port := b.addr.Port()
	if b.kind == kindUDP {
		return Diagnosis{Err: errors.New("reuse: UDP sockets are not looked up")},
			fmt.Sprintf("another UDP socket holds port %d; a UDP port is shared only when every socket on it has SO_REUSEADDR, or SO_REUSEPORT and the same user", port)
	}
	t, err := readTable(b.query())
	if err != nil {
		return Diagnosis{Err: err}, "the socket table could not be read: " + err.Error()
	}
	d, why := diagnose(b, &t, os.Getpid())
	if late := t.Read.Sub(failed); late >= time.Second {
		why += fmt.Sprintf(" (the table was read %v after the bind failed)", late.Round(time.Second))
	}
	return d, why
}

// diagnose says, from the census t of the sockets that overlap b's address,
// why a bind of b failed. It follows the kernel's rule (Linux
// inet_bind_conflict): a socket on an overlapping address blocks the bind
// unless both have SO_REUSEADDR and it is not listening, or both have
// SO_REUSEPORT under the same user. The table does not show the other
// sockets' SO_REUSEADDR: where the message names it, it is inferred from
// this socket's.
func diagnose(b bindInfo, t *census.Table, self int) (Diagnosis, string) {
	d := Diagnosis{Read: t.Read, Count: t.Total}
	for _, s := range t.Sockets {
		d.Holders = append(d.Holders, Holder{State: s.State.String(), Local: s.Local, Remote: s.Remote, UID: s.UID, PID: s.PID, Command: s.Command})
	}
	port := b.addr.Port()
	listeners, bound := t.Count(census.StateListen), t.Count(census.StateClose)
	conns, tw := t.Total-listeners-bound, t.Count(census.StateTimeWait)
	w := words{b: b, t: t, self: self}
	if listeners > 0 {
		d.Reason = ReasonListener
		i := slices.IndexFunc(t.Sockets, func(s census.Socket) bool { return s.State == census.StateListen })
		l := t.Sockets[i] // kept, as listeners are first
		msg := fmt.Sprintf("port %d is held by a LISTEN socket %s on %s%s", port, w.owner(l), l.Local, w.ifDualStack(l))
		if listeners > 1 {
			msg += fmt.Sprintf(" and %d more", listeners-1)
		}
		if b.reusePort {
			return d, msg + "; SO_REUSEPORT shares a live port only when every listener on it has SO_REUSEPORT and the same user"
		}
		return d, msg + "; SO_REUSEADDR cannot share a live port"
	}
	if t.Total == 0 {
		d.Reason = ReasonGone
		hidden := "or is bound without listening (shown only by Linux 6.8 and later)"
		if t.Source == census.SourceProc {
			hidden = "or is bound without listening, which /proc/net/tcp does not show"
		}
		return d, fmt.Sprintf("no TCP socket on port %d shows in the kernel's table now: its holder has gone, %s", port, hidden)
	}
	var held []string
	if conns > 0 {
		d.Reason = ReasonConnections
		if tw == conns {
			d.Reason = ReasonTimeWait
		}
		held = append(held, stateCounts(t, conns)+w.ownerOf(func(s census.State) bool { return s != census.StateClose }))
	}
	if bound > 0 {
		d.Reason = ReasonBound
		what := "a socket"
		if bound > 1 {
			what = strconv.Itoa(bound) + " sockets"
		}
		held = append(held, what+w.ownerOf(func(s census.State) bool { return s == census.StateClose })+" bound without listening")
	}
	msg := fmt.Sprintf("port %d is held by %s%s", port, strings.Join(held, " and "), w.dualStackNote())
	switch {
	case !b.reuseAddr && tw == t.Total:
		msg += ", and this socket has SO_REUSEADDR off; TIME_WAIT ends within 60 s"
	case !b.reuseAddr:
		msg += ", and this socket has SO_REUSEADDR off; the port is busy while they last"
	case tw == t.Total:
		// This socket had SO_REUSEADDR and only TIME_WAITs are in the way:
		// some of them must lack it. Which, and how they came to be, the
		// table does not show.
		msg += ", at least one left by a socket without SO_REUSEADDR (a TIME_WAIT keeps the setting of the socket that closed, and both need it); TIME_WAIT ends within 60 s"
	default:
		msg += ", at least one without SO_REUSEADDR (both sockets need it); the port is busy while they last"
	}
	return d, msg
}

// words names owners and doubts for one diagnosis.
type words struct {
	b    bindInfo
	t    *census.Table
	self int
}

// owner names who holds s, as far as the lookup could see.
func (w words) owner(s census.Socket) string {
	switch {
	case s.PID == w.self:
		return fmt.Sprintf("of this process (pid %d)", s.PID)
	case s.PID != 0:
		return fmt.Sprintf("of pid %d (%s)", s.PID, quoteComm(s.Command))
	case s.Inode == 0:
		return "(no process holds it)"
	case w.t.Owners.TimedOut:
		return fmt.Sprintf("of user %d (its process was not found before the lookup's deadline)", s.UID)
	case w.t.Owners.Hidden > 0:
		return fmt.Sprintf("of user %d (held by no process this user may inspect; perhaps by another user's)", s.UID)
	}
	return fmt.Sprintf("of user %d (held by no process in /proc: in flight over a unix socket, or in another PID namespace)", s.UID)
}

// ownerOf names the holders of the kept sockets whose state in picks, as
// " of pid N (cmd)" when one process holds them, else " of pid N (cmd) and K
// other processes", or why none is named. TIME_WAIT entries and orphans
// have no holder at all: then it is "".
func (w words) ownerOf(in func(census.State) bool) string {
	var first *census.Socket
	var pids []int
	for i, s := range w.t.Sockets {
		switch {
		case !in(s.State) || (s.PID == 0 && s.Inode == 0):
		case s.PID == 0:
			if first == nil {
				first = &w.t.Sockets[i]
			}
		case !slices.Contains(pids, s.PID):
			if len(pids) == 0 {
				first = &w.t.Sockets[i]
			}
			pids = append(pids, s.PID)
		}
	}
	switch {
	case first == nil:
		return ""
	case len(pids) > 1:
		return fmt.Sprintf(" %s and %d other processes", w.owner(*first), len(pids)-1)
	}
	return " " + w.owner(*first)
}

// unsure reports whether s counts only because the table does not say that
// it is IPv6-only: a socket on [::] read from /proc, in the way of an IPv4
// bind only if it is dual-stack.
func (w words) unsure(s census.Socket) bool {
	return s.V6Only == census.V6OnlyUnknown && s.Local.Addr() == netip.IPv6Unspecified() && w.b.addr.Addr().Unmap().Is4()
}

func (w words) ifDualStack(s census.Socket) string {
	if w.unsure(s) {
		return " (if it is dual-stack: /proc/net/tcp6 does not show IPV6_V6ONLY)"
	}
	return ""
}

func (w words) dualStackNote() string {
	n := 0
	for _, s := range w.t.Sockets {
		if w.unsure(s) {
			n++
		}
	}
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(" (%d of them on [::], counted as dual-stack: /proc/net/tcp6 does not show IPV6_V6ONLY)", n)
}

// quoteComm returns a process name as it can be printed: as it is when it
// is made of letters, digits and ._-+:@/, else quoted with Go's escapes. A
// process's owner picks its name, newlines and terminal escapes included.
func quoteComm(s string) string {
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("._-+:@/", c) >= 0) {
			return strconv.QuoteToASCII(s)
		}
	}
	if s == "" {
		return `""`
	}
	return s
}

// stateCounts formats "3 TIME_WAIT connections" or "1 ESTABLISHED, 2
// FIN_WAIT2 and 3 TIME_WAIT connections", in the kernel's order of states,
// leaving out listeners and bound sockets; n is their total.
func stateCounts(t *census.Table, n int) string {
	var parts []string
	for st := census.StateEstablished; st <= census.StateClosing; st++ {
		if k := t.Count(st); k > 0 && st != census.StateListen && st != census.StateClose {
			parts = append(parts, strconv.Itoa(k)+" "+st.String())
		}
	}
	list := strings.Join(parts, ", ")
	if i := strings.LastIndex(list, ", "); i >= 0 {
		list = list[:i] + " and " + list[i+2:]
	}
	if n == 1 {
		return list + " connection"
	}
	return list + " connections"
}

// overlaps reports whether a bind to a (IPv6-only when v6only) collides with
// socket s: equal addresses, or a wildcard that covers the other. A [::]
// socket whose IPV6_V6ONLY the table does not show is taken to be
// dual-stack, as Go makes them for "tcp".
func overlaps(a netip.Addr, v6only bool, s census.Socket) bool {
	b := s.Local.Addr()
	a, b = a.Unmap(), b.Unmap()
	switch {
	case a == b:
		return true
	case a.IsUnspecified() && a.Is4():
		return b.Is4() || b.IsUnspecified() && s.V6Only != census.V6OnlyOn
	case a.IsUnspecified():
		return b.Is6() || !v6only
	case b.IsUnspecified() && b.Is4():
		return a.Is4()
	case b.IsUnspecified():
		return a.Is6() || s.V6Only != census.V6OnlyOn
	}
	return false
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
