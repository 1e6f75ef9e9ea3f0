//go:build unix

package reuse

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// The environment of a process started by Upgrade. Go cannot set LISTEN_PID
// for a child (it has no hook between fork and exec), so the handoff has a
// variable of its own: "1:<parent pid>:<flags>", one flag a socket: 'u' for
// a unix listener that removes its path on Close, 'z' for a socket its
// Listen asked port 0 for, '-' for any other. Fd 3 carries "ready\n" to the
// parent and fd 4 its answer, "ok\n" or nothing; the sockets follow from fd
// 5, in the order the parent made them.
const (
	envHandoff    = "REUSE_HANDOFF"
	handoffToFD   = 3
	handoffFromFD = 4
	handoffFirst  = 5
)

// systemd's variables (sd_listen_fds(3)): sockets from fd 3.
var systemdEnv = []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PIDFDID"}

// inheritedFile is an inherited socket and the one os.File that wraps its fd.
type inheritedFile struct {
	inherited
	f       *os.File
	claimed bool // a Listen is taking it
}

// inheritance is what this process was given when it started.
var inheritance struct {
	mu                   sync.Mutex
	socks                []*inheritedFile // not yet taken, in the order given
	open                 atomic.Int32     // len(socks): Listen's check when nothing was inherited
	parent               int              // the pid whose Upgrade started this process, or 0
	toParent, fromParent *os.File
	readied              bool                // Ready ran
	answered             bool                // the parent said "ok"
	unlinkLater          []*net.UnixListener // handed over with 'u', until the parent says "ok"

	readyOnce sync.Once
	readyErr  error
}

func init() { inherit() }

// inherit takes the sockets of the handoff or of systemd, and removes their
// variables from the environment, so that no child of this process takes
// them for its own. Every fd it takes is made close-on-exec at once.
func inherit() {
	handoff := os.Getenv(envHandoff)
	systemd := false
	for _, v := range systemdEnv {
		if _, ok := os.LookupEnv(v); ok {
			systemd = true
		}
	}
	if handoff != "" {
		os.Unsetenv(envHandoff)
		unsetSystemd() // Upgrade passes none: any are stale
		inheritHandoff(handoff)
		return
	}
	if systemd {
		inheritSystemd()
	}
}

func unsetSystemd() {
	for _, v := range systemdEnv {
		os.Unsetenv(v)
	}
}

// inheritHandoff takes the sockets of the Upgrade that started this process.
func inheritHandoff(v string) {
	ppid, flags, ok := parseHandoff(v)
	if !ok {
		// A handoff this version cannot read: take nothing, but pass
		// nothing on either, as far as it goes.
		for fd := handoffToFD; fd < handoffToFD+maxInherited && isOpen(fd); fd++ {
			unix.CloseOnExec(fd)
		}
		return
	}
	for fd := handoffToFD; fd < handoffFirst+len(flags); fd++ {
		if isOpen(fd) {
			unix.CloseOnExec(fd)
		}
	}
	if ppid == os.Getppid() {
		inheritance.parent = ppid
		inheritance.toParent = os.NewFile(handoffToFD, "reuse handoff to parent")
		inheritance.fromParent = os.NewFile(handoffFromFD, "reuse handoff from parent")
	} else {
		// The parent died before this process got here, or a wrapper
		// that forks stands between them: nobody waits for Ready, so the
		// pipes go. The sockets may be the only copies left, with clients
		// in their queues: take them.
		unix.Close(handoffToFD)
		unix.Close(handoffFromFD)
	}
	for i, fl := range []byte(flags) {
		if s, ok := inspect(handoffFirst + i); ok {
			s.from, s.unlink, s.zero = "the parent's Upgrade", fl == flagUnlink, fl == flagZero
			addInherited(s, "")
		}
	}
}

// parseHandoff reads "1:<pid>:<flags>".
func parseHandoff(v string) (ppid int, flags string, ok bool) {
	parts := strings.Split(v, ":")
	if len(parts) != 3 || parts[0] != "1" {
		return 0, "", false
	}
	ppid, err := strconv.Atoi(parts[1])
	if err != nil || ppid <= 0 || strings.Trim(parts[2], "uz-") != "" || len(parts[2]) > maxInherited {
		return 0, "", false
	}
	return ppid, parts[2], true
}

// maxInherited bounds the fds read from the environment, so that a bad
// count cannot make the program spin at start.
const maxInherited = 1 << 12

// inheritSystemd takes systemd's sockets (sd_listen_fds(3)) when they are
// for this process and Listen can take every one of them. A program that
// was also given a connection (Accept=yes), a FIFO or another kind of
// socket reads them itself, with another library: then they, and the
// variables, are left as they are.
func inheritSystemd() {
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) || err != nil || n <= 0 || n > maxInherited {
		unsetSystemd() // not for this process: its parent's, passed on
		return
	}
	var socks []inherited
	for fd := 3; fd < 3+n; fd++ {
		s, ok := inspect(fd)
		if !ok {
			return
		}
		socks = append(socks, s)
	}
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	unsetSystemd()
	for i, s := range socks {
		unix.CloseOnExec(s.fd)
		s.from = "systemd"
		name := ""
		if i < len(names) {
			name = names[i]
		}
		addInherited(s, name)
	}
}

func isOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}

// inspect reads what fd is, and reports whether it is a socket that Listen
// or ListenPacket can take: a listening stream or seqpacket socket, or a
// datagram one, of an inet or unix family.
func inspect(fd int) (s inherited, ok bool) {
	s.fd = fd
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return s, false // not open, or not a socket
	}
	switch typ {
	case unix.SOCK_STREAM:
		s.typ = typeStream
	case unix.SOCK_DGRAM:
		s.typ = typeDgram
	case unix.SOCK_SEQPACKET:
		s.typ = typeSeqpacket
	default:
		return s, false
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return s, false
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		s.family, s.addr = familyInet4, netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		s.family, s.addr = familyInet6, netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
		v, err := unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
		s.v6only = err == nil && v != 0
	case *unix.SockaddrUnix:
		s.family, s.path = familyUnix, sa.Name
		if s.path != "" && s.path[0] != '@' {
			s.pathFile, _ = os.Stat(s.path)
		}
	default:
		return s, false // netlink and the like: not for Listen
	}
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	s.listening = err == nil && v != 0
	return s, s.listening == (s.typ != typeDgram)
}

// addInherited keeps s, wrapped in its one os.File, for a Listen to take.
func addInherited(s inherited, name string) {
	s.name = name
	// Go's FileListener wants a non-blocking fd; systemd may pass blocking
	// ones. Set it here, on the fd, not later through os.File's Fd.
	unix.SetNonblock(s.fd, true)
	fname := "fd " + strconv.Itoa(s.fd)
	if name != "" {
		fname = name
	}
	inheritance.socks = append(inheritance.socks, &inheritedFile{inherited: s, f: os.NewFile(uintptr(s.fd), fname)})
	inheritance.open.Add(1)
}

// claim returns the inherited socket that network and address ask for, marked
// as claimed, or nil when none is. It returns an error when an inherited
// socket holds that port on an overlapping address but differs from what was
// asked: binding anew would only fail against it.
func claim(ctx context.Context, network, address string) (*inheritedFile, error) {
	if inheritance.open.Load() == 0 {
		return nil, nil
	}
	w, ok := wantOf(network)
	if !ok {
		return nil, nil
	}
	if err := w.resolve(ctx, address); err != nil {
		return nil, nil // net.Listen reports it as it would
	}
	if w.any && w.family == 0 {
		w.noDualStack = !dualStack()
	}
	inheritance.mu.Lock()
	defer inheritance.mu.Unlock()
	var near *inheritedFile
	var diff string
	for _, s := range inheritance.socks {
		if s.claimed {
			continue
		}
		ok, d := w.match(&s.inherited)
		if ok {
			s.claimed = true
			return s, nil
		}
		if d != "" && near == nil {
			near, diff = s, d
		}
	}
	if near != nil {
		return nil, fmt.Errorf("reuse: the inherited socket %v holds this port, but %s", near, diff)
	}
	return nil, nil
}

// release gives s back after a Listen failed to take it, or removes it from
// the inherited sockets once taken. Once Ready has run, one given back is
// closed, as Ready closes those that no Listen took.
func (s *inheritedFile) release(taken bool) {
	inheritance.mu.Lock()
	defer inheritance.mu.Unlock()
	s.claimed = false
	if !taken && !inheritance.readied {
		return
	}
	for i, t := range inheritance.socks {
		if t == s {
			inheritance.socks = append(inheritance.socks[:i], inheritance.socks[i+1:]...)
			inheritance.open.Add(-1)
			break
		}
	}
	s.f.Close() // a taken one's listener has its own dup
}

// fit makes the inherited socket what a new one with o would be, where that
// can change after bind, and returns an error naming the option where it
// cannot. SO_LINGER on a listener that the parent shares (it accepts until it
// drains) is not changed under it: perConn then says what Accept must set on
// each connection instead.
func (s *inheritedFile) fit(network string, c syscall.Conn, k kind, o *options) (perConn *bool, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	t := traitsOf(runtime.GOOS)
	if rp, ok := reusePortOption(t.reusePort); ok && k != kindLocal {
		var v int
		var gerr error
		if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, rp) }); err != nil {
			return nil, err
		}
		if gerr != nil {
			return nil, os.NewSyscallError("getsockopt "+t.reusePort.String(), gerr)
		}
		if want := o.reusePort == on; (v != 0) != want {
			return nil, fmt.Errorf("reuse: the inherited socket %v was bound with %v=%d, which cannot change after bind; ask for WithReusePort(%v), or restart without it", s, t.reusePort, v, v != 0)
		}
	}
	var set []step
	if k != kindLocal {
		set = append(set, step{soReuseAddr, reuseAddrOnUnix(k, o)})
	}
	if k == kindTCPListen && t.lingerInherited {
		want := o.rstOnClose
		l, err := lingerOf(rc)
		if err != nil {
			return nil, err
		}
		switch {
		case (l.Onoff != 0 && l.Linger == 0) == want:
		case s.from == "systemd":
			set = append(set, step{soLinger, want})
		default:
			perConn = &want
		}
	}
	if err := apply(rc, set); err != nil {
		return nil, err
	}
	for _, fn := range o.controls {
		if err := fn(goNetwork(network, s.family), s.address(), rc); err != nil {
			return nil, err
		}
	}
	return perConn, nil
}

func lingerOf(rc syscall.RawConn) (*unix.Linger, error) {
	var l *unix.Linger
	var gerr error
	if err := rc.Control(func(fd uintptr) { l, gerr = unix.GetsockoptLinger(int(fd), unix.SOL_SOCKET, unix.SO_LINGER) }); err != nil {
		return nil, err
	}
	if gerr != nil {
		return nil, os.NewSyscallError("getsockopt SO_LINGER", gerr)
	}
	return l, nil
}

// address is the socket's address as Control is told it.
func (s *inherited) address() string {
	if s.family == familyUnix {
		return s.path
	}
	return s.addr.String()
}

// goNetwork names the network as Go tells Control: "tcp4", "udp6", "unix".
func goNetwork(network string, f family) string {
	switch {
	case f == familyUnix:
		return network
	case f == familyInet4:
		return network[:3] + "4"
	}
	return network[:3] + "6"
}

// take returns the inherited socket that network and address ask for, as
// open makes it from its file, fitted to o; or nil, nil when there is none.
func take(ctx context.Context, network, address string, o *options, open func(*os.File) (io.Closer, error)) (io.Closer, *inheritedFile, *bool, error) {
	s, err := claim(ctx, network, address)
	if s == nil || err != nil {
		return nil, nil, nil, err
	}
	k, _ := kindOf(network, false)
	var perConn *bool
	c, err := open(s.f)
	if err == nil {
		if perConn, err = s.fit(network, c.(syscall.Conn), k, o); err != nil {
			c.Close()
		}
	}
	if err != nil {
		s.release(false)
		return nil, nil, nil, err
	}
	s.release(true)
	return c, s, perConn, nil
}

// takeListener is take for Listen. It wraps the listener when its accepted
// connections need SO_LINGER set one by one: where they do not inherit it
// (wrapRST), or where the listener is shared with the parent (see fit).
func takeListener(ctx context.Context, network, address string, o *options, wrapRST bool) (net.Listener, byte, error) {
	c, s, perConn, err := take(ctx, network, address, o, func(f *os.File) (io.Closer, error) { return net.FileListener(f) })
	if c == nil {
		return nil, 0, err
	}
	flag := byte(flagNone)
	switch {
	case s.unlink:
		flag = flagUnlink
	case s.zero:
		flag = flagZero
	}
	if ul, ok := c.(*net.UnixListener); ok {
		// Not until the parent said "ok": if this process fails before, the
		// parent goes on serving on that path.
		inheritance.mu.Lock()
		ul.SetUnlinkOnClose(s.unlink && inheritance.answered)
		if s.unlink && !inheritance.answered {
			inheritance.unlinkLater = append(inheritance.unlinkLater, ul)
		}
		inheritance.mu.Unlock()
	}
	ln := c.(net.Listener)
	if perConn != nil {
		return &lingerListener{ln.(*net.TCPListener), *perConn}, flag, nil
	}
	if wrapRST {
		return &lingerListener{ln.(*net.TCPListener), true}, flag, nil
	}
	return ln, flag, nil
}

// takePacketConn is take for ListenPacket.
func takePacketConn(ctx context.Context, network, address string, o *options) (net.PacketConn, byte, error) {
	c, s, _, err := take(ctx, network, address, o, func(f *os.File) (io.Closer, error) { return net.FilePacketConn(f) })
	if c == nil {
		return nil, 0, err
	}
	flag := byte(flagNone)
	if s.zero {
		flag = flagZero
	}
	return c.(net.PacketConn), flag, nil
}

// dualStack reports whether Go's "tcp" and "udp" listen on [::] for both
// IPv4 and IPv6 here: not where there are no IPv4-mapped addresses, nor on
// a host without IPv6.
var dualStack = sync.OnceValue(func() bool {
	return !traitsOf(runtime.GOOS).noMappedV4 && haveIPv6()
})

var haveIPv6 = sync.OnceValue(func() bool {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM, 0)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
})
