// Package census reads the kernel's table of TCP sockets on one local port:
// listeners, connections in every state, TIME_WAIT entries, and the process
// that holds each socket where the caller may see it. It is the data behind
// reuse's AddrInUseError and cmd/closeorder's table.
//
// A read is bounded: in time by a deadline, and in memory by counting every
// socket it matches but keeping only a few of them. Only Linux has a table
// it can read (netlink sock_diag, or /proc/net/tcp and tcp6 where netlink is
// refused); elsewhere Read returns an error for which
// errors.Is(err, errors.ErrUnsupported) holds.
package census

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"strconv"
	"time"
)

// Supported reports whether Read can work on this OS at all.
const Supported = runtime.GOOS == "linux" || runtime.GOOS == "android"

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

	numStates = StateClosing + 1
)

var stateNames = [numStates]string{
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
	if s >= StateEstablished && s < numStates {
		return stateNames[s]
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// V6Only is an IPv6 socket's IPV6_V6ONLY as the table shows it.
type V6Only uint8

const (
	// V6OnlyUnknown: the table does not say. The kernel tells it, through
	// netlink only, for IPv6 sockets that listen or are bound without
	// listening, the only ones that can have the wildcard [::] as their
	// local address; every other socket's address says which family it
	// takes.
	V6OnlyUnknown V6Only = iota
	V6OnlyOff            // dual-stack: a socket on [::] that takes IPv4 as well
	V6OnlyOn             // IPv6 only
)

// Socket is one entry of the kernel's TCP socket table.
//
// Addresses are reported as the kernel holds them: an IPv6 socket that
// carries IPv4 traffic (a dual-stack listener's accepted connections, or a
// socket bound to ::ffff:a.b.c.d) has IPv4-mapped IPv6 addresses such as
// [::ffff:127.0.0.1]:8080. They are not unmapped, so IPv4 and IPv6 sockets
// on the same port stay apart; call [netip.Addr.Unmap] to compare them with
// IPv4 addresses. IPv6 addresses carry no zone.
type Socket struct {
	// Local and Remote are the socket's two ends. A listener's Remote is
	// the unspecified address with port 0 (0.0.0.0:0 or [::]:0).
	Local, Remote netip.AddrPort
	State         State
	V6Only        V6Only
	// UID is the user ID that created the socket. It is 0 for TIME_WAIT
	// entries and for orphaned FIN_WAIT2 ones, which Linux keeps in the
	// same reduced form. Half-open (SYN_RECV) connections report 0 through
	// netlink and their listener's UID through /proc.
	UID uint32
	// Inode is the socket's inode number, the N in the "socket:[N]" link
	// under /proc/PID/fd. It is 0 for entries no file refers to: TIME_WAIT,
	// orphaned FIN_WAIT2 and half-open (SYN_RECV) connections.
	Inode uint64
	// PID is a process that holds the socket open, or 0 when none was
	// found (see Owners). When several processes share the socket (after a
	// fork), PID is the first one found, the caller itself if it is one.
	PID int
	// Command is that process's command name (/proc/PID/comm, at most 15
	// bytes) as the process set it: its owner chooses it, control
	// characters included, so quote it before printing it.
	Command string
}

// Query says which sockets Read reports, and how long it may take.
type Query struct {
	// Port is the local port to read; Read fails for port 0.
	Port uint16
	// Match picks the sockets that Read counts and keeps; nil picks every
	// socket on Port, on any local address.
	Match func(Socket) bool
	// Keep bounds how many matching sockets Read returns: listeners and
	// bound sockets first, then the others in the kernel's order. Zero
	// means DefaultKeep.
	Keep int
	// Owners asks for the PID and Command of each socket returned.
	Owners bool
	// Deadline bounds the whole read, owner lookup included. Zero means
	// DefaultTimeout from the start of Read.
	Deadline time.Time
}

// DefaultKeep and DefaultTimeout are the bounds of a Query that sets none.
const (
	DefaultKeep    = 256
	DefaultTimeout = time.Second
)

// Source is where a Table was read from.
type Source uint8

const (
	SourceNetlink Source = iota + 1 // netlink sock_diag: every state, and IPV6_V6ONLY of listeners
	SourceProc                      // /proc/net/tcp{,6}: no bound-only sockets, no IPV6_V6ONLY
)

// String returns "netlink sock_diag" or "/proc/net/tcp".
func (s Source) String() string {
	switch s {
	case SourceNetlink:
		return "netlink sock_diag"
	case SourceProc:
		return "/proc/net/tcp"
	}
	return "Source(" + strconv.Itoa(int(s)) + ")"
}

// Table is what Read found on the port.
type Table struct {
	Read   time.Time // when Read began
	Source Source
	// Sockets are the matching sockets kept: all of them when there are
	// at most Query.Keep, else that many, listeners and bound sockets
	// first. IPv4 sockets come before IPv6 ones of the same kind.
	Sockets []Socket
	// Total counts every matching socket, kept or not.
	Total int
	// Owners tells how the owner lookup went, when Query.Owners asked for it.
	Owners Owners
	counts [numStates]int
}

// Count returns how many matching sockets, kept or not, are in state s.
func (t *Table) Count(s State) int {
	if s < numStates {
		return t.counts[s]
	}
	return 0
}

// Owners tells why a kept socket with an inode may have no PID: the
// lookup reads every process's /proc/PID/fd, the caller's first, and a
// socket that no process in the caller's view holds has none.
type Owners struct {
	// TimedOut: the deadline passed before every process was looked at.
	TimedOut bool
	// Hidden counts the processes whose open files the caller may not
	// read: other users' processes, unless the caller is root. Sockets
	// without a PID may be theirs.
	Hidden int
}

// Read reads the TCP sockets on q.Port, IPv4 and IPv6, and returns those q
// picks, within the bounds q sets. It tries netlink sock_diag first, which
// needs no privileges and whose filter skips other ports in the kernel, and
// falls back to /proc/net/tcp and tcp6 where netlink fails or does not
// answer within half the time (a sandbox that refuses it, a kernel without
// sock_diag); those show no sockets bound without listening and no
// IPV6_V6ONLY, and on a table that changes fast during the read they may
// list a socket twice.
//
// Read returns an error when q.Port is 0, when the table cannot be read
// (errors.Is(err, os.ErrDeadlineExceeded) when the deadline passed first),
// and, on systems other than Linux, one for which
// errors.Is(err, errors.ErrUnsupported) holds. A deadline that passes during
// the owner lookup is no error: Owners.TimedOut says so.
func Read(q Query) (Table, error) {
	if q.Port == 0 {
		return Table{}, errors.New("census: port 0")
	}
	if !Supported {
		return Table{}, fmt.Errorf("census: no socket table on %s: %w", runtime.GOOS, errors.ErrUnsupported)
	}
	start := time.Now()
	if q.Deadline.IsZero() {
		q.Deadline = start.Add(DefaultTimeout)
	}
	if q.Keep <= 0 {
		q.Keep = DefaultKeep
	}
	// Half the time for netlink, which the kernel answers at once: a
	// sandbox that never answers leaves the rest to /proc.
	c := collector{q: &q, t: Table{Read: start, Source: SourceNetlink}}
	err := readNetlink(q.Port, start.Add(q.Deadline.Sub(start)/2), c.add)
	if err != nil {
		c = collector{q: &q, t: Table{Read: start, Source: SourceProc}}
		if perr := readProc(q.Port, q.Deadline, c.add); perr != nil {
			return Table{}, fmt.Errorf("census: port %d: %w; fallback: %w", q.Port, err, perr)
		}
	}
	t := c.table()
	if q.Owners {
		t.Owners = lookupOwners(t.Sockets, q.Deadline)
	}
	return t, nil
}

// TableOf returns the Table that Read would return for q if the kernel
// listed socks on q.Port, without owner lookup: for tests of what callers
// make of a table that the kernel cannot be made to show on demand.
func TableOf(q Query, socks []Socket) Table {
	if q.Keep <= 0 {
		q.Keep = DefaultKeep
	}
	c := collector{q: &q, t: Table{Read: time.Now(), Source: SourceNetlink}}
	for _, s := range socks {
		c.add(s)
	}
	return c.table()
}

// collector counts the sockets a read reports and keeps the first
// q.Keep of them, listeners and bound sockets before the others.
type collector struct {
	q           *Query
	t           Table
	first, rest []Socket
}

func (c *collector) add(s Socket) {
	if c.q.Match != nil && !c.q.Match(s) {
		return
	}
	c.t.Total++
	if s.State < numStates {
		c.t.counts[s.State]++
	}
	full := len(c.first)+len(c.rest) >= c.q.Keep
	switch {
	case s.State == StateListen || s.State == StateClose:
		if full && len(c.rest) == 0 {
			return
		}
		if full {
			c.rest = c.rest[:len(c.rest)-1]
		}
		c.first = append(c.first, s)
	case !full:
		c.rest = append(c.rest, s)
	}
}

func (c *collector) table() Table {
	t := c.t
	t.Sockets = append(c.first, c.rest...)
	return t
}
