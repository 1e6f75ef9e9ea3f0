// Package reuse builds listeners for servers that restart: a drop-in for
// net.Listen that sets the socket options a restart needs on every OS, hands
// its sockets to the next version of the program with no gap (Upgrade,
// Ready, and systemd socket activation), and says what holds a port when a
// bind fails.
//
//	ln, err := reuse.Listen("tcp", ":8080")
//
// Listen, ListenPacket and Dial take Options (WithReuseAddr, WithReusePort,
// WithExclusiveAddr, WithRSTOnClose, WithControl) and apply them through
// net.ListenConfig.Control before bind. Control and ListenConfig give the same
// options to code that builds its own net.ListenConfig.
//
// # TIME_WAIT, and who ends up in it
//
// The side of a TCP connection that closes first keeps the connection in
// TIME_WAIT for twice the maximum segment lifetime, 60 seconds on Linux
// (TCP_TIMEWAIT_LEN; tcp_fin_timeout does not change it), so that its last
// ACK can be sent again and late segments die before a new connection with
// the same four-tuple could take them. If the client closes first, the
// TIME_WAIT sits on its ephemeral port and the server is unaffected. If the
// server closes first, as net/http does with idle keep-alive connections and
// on shutdown, it holds the server's port; a server that closed while its
// client is still open waits in FIN_WAIT2, which holds the port the same way.
// A restart then fails with "address already in use".
//
// # Why SO_REUSEADDR is the fix
//
// SO_REUSEADDR lets a listener bind an address and port that TIME_WAIT and
// FIN_WAIT2 connections still use; it never admits a second live listener on
// Linux. A TIME_WAIT keeps the setting of the socket that closed, and the
// kernel lets a new listener past it only when both have it: a server that
// ran without it blocks its successor for up to 60 seconds. Go's net package
// sets SO_REUSEADDR on TCP listeners on Unix itself, so on Unix a plain
// net.Listen restarts as Listen does, and Listen keeps Go's setting without
// a second system call. What this package adds on Unix is everything after
// the bind: no gap in a restart, RST-on-close set once, stale unix sockets
// replaced, and a diagnosis of a failed bind. On Windows SO_REUSEADDR means
// that any socket may take a port in use, so this package never sets it for
// TCP and sets SO_EXCLUSIVEADDRUSE instead.
//
// # The five-tuple caveat
//
// SO_REUSEADDR reuses the local address and port only. A connection is still
// identified by its protocol and four-tuple, which the kernel keeps unique: a
// new connection with the four-tuple of one in TIME_WAIT is let in only when
// its sequence number or timestamp shows it is newer (RFC 6191). A restarted
// server can still receive stray segments of its old connections; the
// receive window and TCP timestamps (PAWS, RFC 7323) drop them, and RFC 1337
// describes what TIME_WAIT protects against where those are not enough.
//
// # RST on close is a last resort
//
// WithRSTOnClose and Abort set SO_LINGER to {on, 0}: Close sends RST instead
// of FIN and leaves no TIME_WAIT. Data not yet sent is discarded, the peer's
// next Read fails with "connection reset by peer" (then io.EOF) and its Write
// with EPIPE, and TIME_WAIT's protection against old duplicate segments is
// gone. It is for servers whose TIME_WAIT entries are themselves the problem,
// and for dropping a misbehaving peer; it is not the fix for "address
// already in use".
//
// # SO_REUSEPORT
//
// WithReusePort lets several listeners bind one port, the kernel spreading
// connections over them by four-tuple hash. On Linux only sockets of the same
// effective user ID can join: any process of that user can take a share of
// the connections. Closing one listener of the group resets the connections
// in its accept queue, unless net.ipv4.tcp_migrate_req is 1 (Linux 5.14+).
//
// # Restarts that no client notices
//
// A restart that stops the old process before the new one listens refuses
// connects for the whole gap, and http.Server.Shutdown closes idle keep-alive
// connections under clients that are sending on them. Upgrade starts the new
// version of the program with the listening sockets themselves, whose accept
// queues never close; the new process's Listen takes them, its Ready lets
// the old one's Upgrade return, and the old one drains (package
// github.com/safelisten/reuse/drain does that for net/http) and exits:
//
//	// On SIGHUP:
//	if err := reuse.Upgrade(ctx); err != nil {
//		log.Print(err) // the new version failed; this one serves on
//	} else {
//		d.Drain(ctx, time.Second) // d := drain.New(srv), before Serve
//	}
//
// Listen also takes the sockets of systemd's socket activation. Inherited
// sockets are matched by what the kernel says they are (family, type,
// address and port, IPV6_V6ONLY, the unix path), not by the address's
// spelling; see Listen. Under systemd, use Type=notify: the old main process
// tells systemd the new one's MAINPID before the new one's Ready returns.
//
// The handoff is the package's own: Go cannot set LISTEN_PID for a child, as
// it has no hook between fork and exec. The new process's environment has
// REUSE_HANDOFF=1:<parent pid>:<a flag a socket>; fds 3 and 4 are pipes for
// Ready and its answer, and the sockets follow from fd 5, in the order the
// parent made them. The package reads and removes these variables, and
// LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PIDFDID, when the
// program starts, and makes every fd it takes close-on-exec, so no child of
// the program sees them. A program that systemd also gave what Listen cannot
// take (a connection of Accept=yes, a FIFO) gets all of systemd's fds and
// variables left as they are, for its own code. Upgrade and Ready were run on
// Linux only; other Unix systems build and are expected to work.
//
// # Why is my port busy?
//
// On Linux, a bind that fails with "address already in use" returns an
// *AddrInUseError that says what holds the port, as the kernel's socket
// table shows it, in its message and as data.
//
// # Stale unix sockets
//
// A server killed with SIGKILL leaves its unix socket file behind. When a
// bind fails on such a path, Listen removes the file and binds again, on
// Linux, and only where nothing can fool it: the path's directories can be
// changed by no user but this one and root (a sticky directory such as /tmp
// may be on the way, not hold the socket); the file is a socket of this
// user's; a connect to it is refused (on Linux a live server with a full
// queue gives EAGAIN instead); and the kernel's table of unix sockets shows
// none bound to it, as it would for a server between its bind and its
// listen. The path is resolved once and the rest works on what was found, so
// a link swapped meanwhile redirects nothing, and nothing but that socket
// file is ever removed. Two processes replacing the same file take turns on
// an flock of path+".lock", which is made only then, by this user, and
// removed before it is released: nothing is left beside the socket. Where
// any of this does not hold, Listen fails at once as net.Listen does and its
// *AddrInUseError says why. Not covered: a socket of another network
// namespace that is bound but not listening; programs that remove and bind
// the path without the lock; processes with capabilities as strong as root.
// On other systems a refused connect proves nothing (a full queue refuses
// too), and the bind's error is returned.
//
// # MPTCP
//
// With go 1.24 or later in the main module's go.mod, Go opens TCP listeners
// as MPTCP where the kernel has it and, on any error, closes that socket and
// tries plain TCP: Control may run twice for one Listen, so every step this
// package takes sets a value (see WithControl for the caller's functions).
// The options work alike on both; ListenConfig(...).SetMultipathTCP chooses.
//
// # Per OS
//
//	OS                        WithReuseAddr (TCP)       WithReusePort          WithExclusiveAddr  WithRSTOnClose (Listen)     Upgrade
//	Linux, Android            on (Go's own)             SO_REUSEPORT           no effect          SO_LINGER on the listener   yes
//	DragonFly                 on (Go's own)             SO_REUSEPORT           no effect          SO_LINGER on the listener   yes
//	FreeBSD                   on (Go's own)             SO_REUSEPORT_LB        no effect          SO_LINGER on the listener   yes
//	macOS, iOS, NetBSD,       on (Go's own)             unsupported (no        no effect          SO_LINGER on the listener   yes
//	OpenBSD                                             balancing)
//	Solaris, illumos, AIX     on (Go's own)             unsupported            no effect          SO_LINGER per connection    yes
//	Windows                   off; on is unsupported    unsupported            on by default      SO_LINGER per connection    unsupported
//	Plan 9, js/wasm, wasip1   unsupported if asked      unsupported            unsupported        unsupported                 unsupported
//
// "Unsupported" is an error for which errors.Is(err, errors.ErrUnsupported)
// holds: this package never quietly does something else than asked. "On the
// listener": accepted sockets inherit SO_LINGER there, so Accept makes no
// system call for it; "per connection": the listener Listen returns sets it
// on each accepted connection, which Control and ListenConfig cannot do, so
// for them it is unsupported there. No reuse option applies to unix or ip
// networks, nor WithRSTOnClose to UDP: asking is an error.
//
// What ran: everything on Linux. The Windows code runs under Wine 8.0 in CI,
// where getsockopt reads back what it set (SO_EXCLUSIVEADDRUSE on listeners,
// SO_REUSEADDR never on TCP, SO_LINGER {1, 0} on each accepted connection)
// and IsAddrInUse sees WSAEADDRINUSE; Wine decides bind conflicts in its own
// table and fails every Go UDP socket, so what Windows itself does with the
// options is not verified: that an exclusive listener keeps others off its
// port, whether it binds past TIME_WAIT on a restart (Microsoft documents
// that it cannot while a connection of the previous exclusive listener is
// active; WithExclusiveAddr(false) is the way out if it fails), and UDP. The
// other rows are read from the systems' documentation and source. On macOS
// and the BSDs, Go's own SO_REUSEADDR lets a socket of the same user bind a
// specific address under another's wildcard, which nothing here prevents.
//
// # Errors
//
// Every error of Listen, ListenPacket, Dial and their Context forms wraps a
// *net.OpError, as the stdlib's do; on Linux an address in use comes as an
// *AddrInUseError around it. A wrong network or option is
// reported before a socket exists. A failed setsockopt names the option
// ("setsockopt SO_REUSEPORT: ...") and keeps its errno for errors.Is.
// IsAddrInUse tells "address already in use" on every OS.
package reuse
