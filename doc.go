// Package reuse builds listeners that a server can restart at once, on every
// OS Go supports, without sharing a live port behind anyone's back.
//
//	ln, err := reuse.Listen("tcp", ":8080") // a drop-in for net.Listen
//	if err != nil { ... }
//	http.Serve(ln, handler)
//
// Listen, ListenPacket and Dial take Options (WithReuseAddr, WithReusePort,
// WithExclusiveAddr, WithRSTOnClose, WithControl) and apply them through
// net.ListenConfig.Control before bind. Control and ListenConfig give the same
// options to code that builds its own net.ListenConfig.
//
// # TIME_WAIT, and who ends up in it
//
// The side of a TCP connection that closes first, the active closer, keeps
// the connection in TIME_WAIT for twice the maximum segment lifetime: 60
// seconds on Linux (TCP_TIMEWAIT_LEN; tcp_fin_timeout does not change it).
// TIME_WAIT makes sure the last ACK can be sent again if it was lost, and
// that late segments of the old connection die before a new connection with
// the same four-tuple could take them for its own.
//
// If the client closes first, the TIME_WAIT sits on the client's ephemeral
// port and the server is unaffected. If the server closes first, as an HTTP
// server does for idle keep-alive connections or on shutdown, the TIME_WAIT
// holds the server's own port. A server that closed first while its client is
// still open waits in FIN_WAIT2 instead, which holds the port the same way.
// When that server restarts, bind fails with "address already in use".
//
// # Why SO_REUSEADDR is the fix
//
// SO_REUSEADDR lets a listening socket bind a local address and port that
// TIME_WAIT or FIN_WAIT2 connections still use. On Linux it never admits a
// second live listener: two listeners on one port need SO_REUSEPORT on both.
// On FreeBSD, macOS and the other BSDs it does let a socket of the same user
// (or root) bind a specific address under another socket's wildcard, which Go
// allows by default there too, since it sets SO_REUSEADDR itself. On Linux a
// TIME_WAIT keeps the SO_REUSEADDR setting of
// the listener it came from, and the kernel lets a new listener past it only
// when both have it on: a server that ran without it blocks its successor for
// up to 60 seconds, whatever the successor sets.
//
// Go's net package already sets SO_REUSEADDR on TCP listeners on Unix, and
// Listen keeps it (without a second system call); WithReuseAddr(false) turns
// it off. On Windows SO_REUSEADDR means something else, that any socket may
// bind a port in use, so this package never sets it there for TCP and sets
// SO_EXCLUSIVEADDRUSE instead, so that no other socket can take the port.
// Several projects report that a Windows listener binds past TIME_WAIT with
// neither option. Microsoft documents that a new SO_EXCLUSIVEADDRUSE socket
// cannot bind while a connection accepted by the previous exclusive listener
// is still active, and reports differ on whether TIME_WAIT counts (libuv says
// it does; Twisted and Trio restart fine). This project has not run Windows:
// if a restart there fails with WSAEADDRINUSE, WithExclusiveAddr(false) gives
// Go's plain behaviour.
//
// # The five-tuple caveat
//
// SO_REUSEADDR reuses only the local address and port. Every connection is
// still identified by its protocol and four-tuple (local address and port,
// remote address and port), and the kernel keeps those unique: a new
// connection with the four-tuple of one still in TIME_WAIT is let in only when
// its sequence number or timestamp shows that it is newer (RFC 6191). A restarted
// server can still receive stray segments of its old connections. Sequence
// numbers outside the window, and TCP timestamps (PAWS, RFC 7323), make the
// kernel drop them, and RFC 1337 describes what TIME_WAIT protects against
// when those checks are not enough.
//
// # RST on close is a last resort
//
// WithRSTOnClose and Abort set SO_LINGER to {on, 0}: Close sends RST instead
// of FIN and leaves no TIME_WAIT anywhere. Data not yet sent is discarded,
// the peer's next Read fails with "connection reset by peer" (then io.EOF),
// its Write with EPIPE, and the protection TIME_WAIT gives against old
// duplicate segments is gone. It is for servers that churn through so many
// short connections that TIME_WAIT entries themselves are the problem, and for
// dropping a misbehaving peer. It is not the fix for "address already in
// use": SO_REUSEADDR is.
//
// # SO_REUSEPORT
//
// WithReusePort lets several listeners bind one port and has the kernel
// spread connections over them by four-tuple hash. On Linux only sockets of
// the same effective user ID can join a group: any process running as that
// user can take a share of the connections. Closing one listener of the
// group resets the connections waiting in its accept queue, unless the sysctl
// net.ipv4.tcp_migrate_req is 1 (Linux 5.14 and later).
//
// # MPTCP
//
// With go 1.24 or later in the main module's go.mod, Go opens TCP listeners as
// MPTCP where the kernel supports it, and on any error, a Control error
// included, closes that socket and tries plain TCP. Control may therefore run
// twice for one Listen; every step this package takes sets a value, so it is
// idempotent, and functions given to WithControl must be too. The options work
// the same on MPTCP and plain TCP listeners, and a plain client's connection
// is accepted as TCP. Use ListenConfig(...).SetMultipathTCP to choose.
//
// # What each option does, per OS
//
// Measured here on Linux. The Windows code runs under Wine 8.0 in CI
// (.ci/wine/run), where getsockopt reads back what it set: SO_EXCLUSIVEADDRUSE
// on TCP listeners unless WithExclusiveAddr(false), SO_REUSEADDR never on
// TCP, SO_LINGER {1, 0} on each connection that Accept or AcceptTCP returns
// with WithRSTOnClose and none on the listener; a failed bind there is
// WSAEADDRINUSE, which IsAddrInUse reports. Wine carries these calls out on
// Linux sockets and decides bind conflicts in its own table, so it cannot show
// what Windows itself does with them. Not verified on Windows, which this
// project has not run: that an exclusive listener keeps other sockets off its
// port, whether it binds past TIME_WAIT on a restart, whether accepted sockets
// inherit SO_LINGER, what a client reads after a reset, and anything on UDP
// (Wine 8.0 fails every Go UDP socket). Every other row is read from the
// systems' documentation and source and has not been run by this project.
//
//	OS                        WithReuseAddr (TCP)       WithReusePort          WithExclusiveAddr  WithRSTOnClose (Listen)
//	Linux, Android            default on (Go's own)     SO_REUSEPORT           no effect          SO_LINGER on listener, inherited
//	DragonFly                 default on (Go's own)     SO_REUSEPORT           no effect          SO_LINGER on listener, inherited
//	FreeBSD                   default on (Go's own)     SO_REUSEPORT_LB        no effect          SO_LINGER on listener, inherited
//	macOS, iOS, NetBSD,       default on (Go's own)     ErrUnsupported (no     no effect          SO_LINGER on listener, inherited
//	OpenBSD                                             balancing)
//	Solaris, illumos, AIX     default on (Go's own)     ErrUnsupported         no effect          SO_LINGER per accepted conn
//	Windows                   off, on: ErrUnsupported   ErrUnsupported         default on         SO_LINGER per accepted conn
//	Plan 9, js/wasm, wasip1   ErrUnsupported if asked   ErrUnsupported         ErrUnsupported     ErrUnsupported
//
// For UDP (ListenPacket, Dial) SO_REUSEADDR is off unless asked, on every OS:
// with it, another socket, even another user's, can bind the same port and
// receive its datagrams. WithRSTOnClose does not apply to UDP, and no reuse
// option applies to unix or ip networks: asking for one is an error reported
// before any socket is created.
//
// # Why is my port busy?
//
// On Linux, when a bind fails with "address already in use", Listen,
// ListenPacket and Dial return an *AddrInUseError that says what holds the
// port as the kernel's socket table shows it: a live listener (with its
// process, where this user may see it), TIME_WAIT or FIN_WAIT2 entries and
// whether SO_REUSEADDR can pass them, open connections, or a socket bound
// without listening. Its Diagnosis method gives the same as data. The table
// is read when the message or the diagnosis is first asked for, not at the
// failure: a failed bind that nobody looks at costs what net.Listen's
// failure costs, and a Listen that succeeds never reads it.
//
// # Stale unix sockets
//
// A server killed with SIGKILL leaves its unix socket file behind, and its
// restart fails with "address already in use". Listen first binds exactly as
// net.Listen does. Only when that fails does it look at the path, and on
// Linux it removes a stale file and binds again. A file is stale when a
// connect to it is refused (on Linux a live server whose queue is full gives
// EAGAIN, never ECONNREFUSED) and the kernel's table of unix sockets
// (netlink sock_diag) shows no socket bound to it: a server between its bind
// and its listen refuses connects too.
//
// Listen replaces a file only where no user but this one and root can change
// what the path leads to: every directory on the way belongs to this user or
// root and no one else can write it. A sticky directory that others can
// write, such as /tmp, may be on the way when what Listen takes from it (a
// directory or a symbolic link) belongs to this user or root, but may not
// hold the socket. POSIX ACLs need no separate look: the mode's group bits
// are the ACL's mask, which bounds every named entry. The path is resolved
// once; the connect, the checks and the unlink then work on what was found,
// so a link swapped meanwhile cannot redirect them, and the unlink never
// removes a directory. The socket must be this user's. Where any of this
// does not hold, Listen fails at once as net.Listen does, removes nothing,
// and says why in its *AddrInUseError, whose Reason is ReasonStale.
//
// Two processes that replace the same file at once take turns on an flock of
// path+".lock": it is created (mode 0600) only to replace a stale file, and
// removed before it is released, so nothing is left beside the socket; a
// crash in between leaves it, and the next replacement removes it. A lock
// file that is not this user's regular file, or that others could open, is
// not used, and the stale file is not replaced. The wait for the other
// process lasts until ListenContext's deadline, 3 seconds without one.
//
// Not covered: a socket of another network namespace on the same filesystem
// that is bound but not listening (the table shows only this namespace's; a
// connect reaches listeners anywhere); programs that remove and bind the path
// themselves without this lock, which only this user or root can run there;
// processes with capabilities such as CAP_DAC_OVERRIDE, as strong as root.
// The table holds only the low 32 bits of an inode: a socket bound to another
// file with the same low bits on the same device keeps a stale file from
// being replaced. This was run on Linux 6.18, on ext4, tmpfs and overlayfs.
// On other systems the bind's error is returned: on macOS and the BSDs a live
// server whose queue is full refuses connects too, so a refused connect
// proves nothing there.
//
// # Errors
//
// Every error wraps a *net.OpError (errors.As finds it), as the stdlib's do;
// on Linux an address in use comes as an *AddrInUseError around it. A wrong
// network or option is reported before a socket exists. An option the OS
// cannot honour gives an error for which errors.Is(err, errors.ErrUnsupported)
// holds: this package never quietly does something less safe. A failed
// setsockopt names the option ("setsockopt SO_REUSEPORT: ...") and keeps the
// errno for errors.Is, and Go closes the socket. IsAddrInUse tells "address
// already in use" on every OS (tested on Linux; on Windows it checks
// WSAEADDRINUSE, on Plan 9 the error text).
package reuse
