package reuse

import (
	"fmt"
	"math"
	"net/netip"
	"strconv"
)

// State is a TCP state, numbered as Linux numbers them (include/net/tcp_states.h).
// String gives its name as netstat prints it: ESTABLISHED, TIME_WAIT, ...
type State uint8

// The TCP states, as Linux numbers them. Linux has no state 0.
const (
	StateEstablished State = 1 + iota // ESTABLISHED: the connection is open.
	StateSynSent                      // SYN_SENT: connect() sent a SYN and waits for the answer.
	StateSynRecv                      // SYN_RECV: a half-open connection waiting in a listener's queue.
	StateFinWait1                     // FIN_WAIT1: this side closed first and its FIN is not yet acknowledged.
	StateFinWait2                     // FIN_WAIT2: this side closed first; it waits for the peer's FIN.
	StateTimeWait                     // TIME_WAIT: this side closed first; the entry holds the 4-tuple for 60 s on Linux.
	StateClose                        // CLOSE: bound, neither listening nor connected (reported by Linux 6.8+ through netlink only).
	StateCloseWait                    // CLOSE_WAIT: the peer closed first; this side has not closed yet.
	StateLastAck                      // LAST_ACK: the peer closed first, then this side; waiting for the last ACK.
	StateListen                       // LISTEN: a listening socket.
	StateClosing                      // CLOSING: both sides closed at once.
)

var stateNames = [...]string{
	StateEstablished: "ESTABLISHED",
	StateSynSent:     "SYN_SENT",
	StateSynRecv:     "SYN_RECV",
	StateFinWait1:    "FIN_WAIT1",
	StateFinWait2:    "FIN_WAIT2",
	StateTimeWait:    "TIME_WAIT",
	StateClose:       "CLOSE",
	StateCloseWait:   "CLOSE_WAIT",
	StateLastAck:     "LAST_ACK",
	StateListen:      "LISTEN",
	StateClosing:     "CLOSING",
}

// String returns the state's kernel name ("ESTABLISHED", "TIME_WAIT",
// "LISTEN", ...), or "State(N)" for a number Linux does not name.
func (s State) String() string {
	if s >= StateEstablished && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// Socket is one entry of the kernel's TCP socket table.
//
// Addresses are reported as the kernel holds them: an IPv6 socket that
// carries IPv4 traffic (a dual-stack listener's accepted connections, or a
// socket bound to ::ffff:a.b.c.d) has IPv4-mapped IPv6 addresses such as
// [::ffff:127.0.0.1]:8080, 16 bytes long. They are not unmapped, so IPv4
// and IPv6 sockets on the same port stay apart; call [netip.Addr.Unmap] to
// compare them with IPv4 addresses. IPv6 addresses carry no zone.
type Socket struct {
	// Local and Remote are the socket's two ends. A listener's Remote is
	// the unspecified address with port 0 (0.0.0.0:0 or [::]:0).
	Local, Remote netip.AddrPort
	// State is the socket's TCP state.
	State State
	// UID is the user ID that created the socket. It is 0 for TIME_WAIT
	// entries and for orphaned FIN_WAIT2 ones, which Linux keeps in the
	// same reduced form. Half-open (SYN_RECV) connections report 0 through
	// netlink and their listener's UID through the /proc fallback.
	UID uint32
	// Inode is the socket's inode number, the N in the "socket:[N]" link
	// under /proc/PID/fd. It is 0 for entries no file refers to: TIME_WAIT,
	// orphaned FIN_WAIT2 and half-open (SYN_RECV) connections.
	Inode uint64
	// PID is a process that holds the socket open, or 0 when none can be
	// seen: the entry has no inode, the process belongs to another user and
	// the caller is not root, it is in another PID namespace, or /proc is
	// not mounted. When several processes share the socket (after a fork),
	// PID is the first one found, the caller itself if it is one of them.
	PID int
	// Command is that process's command name (/proc/PID/comm, at most 15
	// bytes), or "" when PID is 0.
	Command string
}

// Sockets returns every TCP socket, IPv4 and IPv6, whose local port is port,
// on any local address: listeners, connections in every state, the
// TIME_WAIT entries that keep a port busy after a restart and, on Linux 6.8
// and later, sockets bound to the port but neither listening nor connected
// (as StateClose). The result is empty when nothing uses the port. IPv4
// sockets come first, each family in the kernel's table order.
//
// On Linux, Sockets asks the kernel through netlink sock_diag, which needs
// no privileges and skips other ports in the kernel; where netlink fails (a
// sandbox that refuses it, a kernel without sock_diag) it reads
// /proc/net/tcp and /proc/net/tcp6 instead, which cannot show bound-only
// sockets. Every user sees every socket of its network namespace with its
// UID and inode, but PID and Command are filled in only for processes the
// caller may inspect: its own user's, or all of them when the caller is
// root. Finding them costs a system call per open file of each process
// searched. TIME_WAIT entries have UID 0 and inode 0: no owner can be named
// for them.
//
// Sockets returns an error when port is not in 1-65535, and when the socket
// table cannot be read at all. On systems other than Linux, the error
// satisfies errors.Is(err, errors.ErrUnsupported).
func Sockets(port int) ([]Socket, error) {
	if port < 1 || port > math.MaxUint16 {
		return nil, fmt.Errorf("reuse: Sockets: port %d out of range 1-%d", port, math.MaxUint16)
	}
	return sockets(uint16(port))
}
