//go:build unix

package reuse

import (
	"context"
	"errors"
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
	"weak"

	"golang.org/x/sys/unix"
)

// The environment of a process started by Upgrade. Go cannot set LISTEN_PID
// for a child (it has no hook between fork and exec), so the handoff has a
// variable of its own: "1:<parent pid>:<flags>", one flag a socket, 'u' for a
// unix listener that removes its path on Close and '-' for any other. Fd 3
// carries "ready\n" to the parent and fd 4 its answer, "ok\n" or nothing;
// the sockets follow from fd 5, in the order the parent made them.
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

	readyOnce sync.Once
	readyErr  error
}

func init() { inherit() }

// inherit takes the sockets of the handoff or of systemd, and removes their
// variables from the environment, so that no child of this process takes
// them for its own. Every inherited fd is made close-on-exec at once.
func inherit() {
	handoff, systemdPID := os.Getenv(envHandoff), os.Getenv("LISTEN_PID")
	if handoff == "" && systemdPID == "" {
		return
	}
	os.Unsetenv(envHandoff)
	fds, names := os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_FDNAMES")
	for _, v := range systemdEnv {
		os.Unsetenv(v)
	}
	if ppid, flags, ok := parseHandoff(handoff); ok && ppid == os.Getppid() {
		inheritance.parent = ppid
		inheritance.toParent = inheritFD(handoffToFD, "reuse handoff to parent")
		inheritance.fromParent = inheritFD(handoffFromFD, "reuse handoff from parent")
		for i, fl := range []byte(flags) {
			addInherited(handoffFirst+i, "", "the parent's Upgrade", fl == 'u')
		}
		return
	}
	n, err := strconv.Atoi(fds)
	if systemdPID != strconv.Itoa(os.Getpid()) || err != nil || n <= 0 {
		return // not for this process: a parent's, passed on by mistake
	}
	nameList := strings.Split(names, ":")
	for i := range n {
		name := ""
		if i < len(nameList) && names != "" {
			name = nameList[i]
		}
		addInherited(3+i, name, "systemd", false)
	}
}

// parseHandoff reads "1:<pid>:<flags>".
func parseHandoff(v string) (ppid int, flags string, ok bool) {
	parts := strings.Split(v, ":")
	if len(parts) != 3 || parts[0] != "1" {
		return 0, "", false
	}
	ppid, err := strconv.Atoi(parts[1])
	if err != nil || ppid <= 0 || strings.Trim(parts[2], "u-") != "" {
		return 0, "", false
	}
	return ppid, parts[2], true
}

// inheritFD makes fd close-on-exec and wraps it, or returns nil when fd is
// not open.
func inheritFD(fd int, name string) *os.File {
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		return nil
	}
	unix.CloseOnExec(fd)
	return os.NewFile(uintptr(fd), name)
}

// addInherited inspects fd and keeps it if it is an inet or unix socket that
// a Listen or ListenPacket could take; other fds are only made close-on-exec.
func addInherited(fd int, name, from string, unlink bool) {
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		return
	}
	unix.CloseOnExec(fd)
	s := inherited{fd: fd, name: name, from: from, unlink: unlink}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return // not a socket: a FIFO or file systemd passed, not ours
	}
	switch typ {
	case unix.SOCK_STREAM:
		s.typ = typeStream
	case unix.SOCK_DGRAM:
		s.typ = typeDgram
	case unix.SOCK_SEQPACKET:
		s.typ = typeSeqpacket
	default:
		return
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return
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
		return // netlink and the like: not for Listen
	}
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	s.listening = err == nil && v != 0
	// Go's FileListener wants a non-blocking fd; systemd may pass blocking ones.
	unix.SetNonblock(fd, true)
	fname := "fd " + strconv.Itoa(fd)
	if name != "" {
		fname = name
	}
	inheritance.socks = append(inheritance.socks, &inheritedFile{inherited: s, f: os.NewFile(uintptr(fd), fname)})
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
		w.noIPv6 = !haveIPv6()
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
// the inherited sockets once taken.
func (s *inheritedFile) release(taken bool) {
	inheritance.mu.Lock()
	defer inheritance.mu.Unlock()
	s.claimed = false
	if !taken {
		return
	}
	for i, t := range inheritance.socks {
		if t == s {
			inheritance.socks = append(inheritance.socks[:i], inheritance.socks[i+1:]...)
			inheritance.open.Add(-1)
			break
		}
	}
	s.f.Close() // the listener has its own dup
}

// fit makes the inherited socket what steps and the caller's Control ask for,
// where that can be done after bind (SO_REUSEADDR, SO_LINGER), and returns an
// error naming the option where it cannot (SO_REUSEPORT).
func (s *inheritedFile) fit(network string, c syscall.Conn, steps []step, o *options) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var set []step
	for _, st := range steps {
		if st.opt != soReusePort && st.opt != soReusePortLB {
			set = append(set, st)
			continue
		}
		name, ok := reusePortOption(st.opt)
		if !ok {
			return fmt.Errorf("reuse: %v: %w", st.opt, errors.ErrUnsupported)
		}
		var v int
		var gerr error
		if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, name) }); err != nil {
			return err
		}
		if gerr != nil {
			return os.NewSyscallError("getsockopt "+st.opt.String(), gerr)
		}
		if (v != 0) != st.on {
			return fmt.Errorf("reuse: WithReusePort(%v): the inherited socket %v was bound with %v=%d, which cannot change after bind", st.on, s, st.opt, v)
		}
	}
	if o.reusePort == off {
		// An explicit "no sharing" must not get a socket of a group.
		if name, ok := reusePortOption(traitsOf(runtime.GOOS).reusePort); ok {
			var v int
			rc.Control(func(fd uintptr) { v, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, name) })
			if v != 0 {
				return fmt.Errorf("reuse: WithReusePort(false): the inherited socket %v was bound with SO_REUSEPORT, which cannot change after bind", s)
			}
		}
	}
	if err := apply(rc, set); err != nil {
		return err
	}
	for _, fn := range o.controls {
		if err := fn(goNetwork(network, s.family), s.address(), rc); err != nil {
			return err
		}
	}
	return nil
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
// open makes it from its file, fitted to steps and o; or nil, nil when there
// is none.
func take(ctx context.Context, network, address string, steps []step, o *options, open func(*os.File) (io.Closer, error)) (io.Closer, *inheritedFile, error) {
	s, err := claim(ctx, network, address)
	if s == nil || err != nil {
		return nil, nil, err
	}
	c, err := open(s.f)
	if err == nil {
		if err = s.fit(network, c.(syscall.Conn), steps, o); err != nil {
			c.Close()
		}
	}
	if err != nil {
		s.release(false)
		return nil, nil, err
	}
	s.release(true)
	return c, s, nil
}

// takeListener is take for Listen; unlink says whether a unix listener
// removes its path on Close.
func takeListener(ctx context.Context, network, address string, steps []step, o *options) (_ net.Listener, unlink bool, _ error) {
	c, s, err := take(ctx, network, address, steps, o, func(f *os.File) (io.Closer, error) { return net.FileListener(f) })
	if c == nil {
		return nil, false, err
	}
	if ul, ok := c.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(s.unlink)
	}
	return c.(net.Listener), s.unlink, nil
}

// takePacketConn is take for ListenPacket.
func takePacketConn(ctx context.Context, network, address string, steps []step, o *options) (net.PacketConn, error) {
	c, _, err := take(ctx, network, address, steps, o, func(f *os.File) (io.Closer, error) { return net.FilePacketConn(f) })
	if c == nil {
		return nil, err
	}
	return c.(net.PacketConn), nil
}

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

// tracked is a listener or packet conn that this package returned, which
// Upgrade hands over while it is open. The pointers are weak, so that
// tracking keeps nothing alive that the program dropped.
type tracked struct {
	tcp    weak.Pointer[net.TCPListener]
	unix   weak.Pointer[net.UnixListener]
	udp    weak.Pointer[net.UDPConn]
	ugram  weak.Pointer[net.UnixConn]
	ip     weak.Pointer[net.IPConn]
	unlink bool // a unix listener that removes its path on Close
}

// conn returns the listener or conn, or nil once the GC has collected it.
func (t *tracked) conn() syscall.Conn {
	switch {
	case t.tcp.Value() != nil:
		return t.tcp.Value()
	case t.unix.Value() != nil:
		return t.unix.Value()
	case t.udp.Value() != nil:
		return t.udp.Value()
	case t.ugram.Value() != nil:
		return t.ugram.Value()
	case t.ip.Value() != nil:
		return t.ip.Value()
	}
	return nil
}

var registry struct {
	mu     sync.Mutex
	socks  []tracked
	pruned int // len(socks) after the last pruning
}

// track adds c, which Listen or ListenPacket is about to return, to what
// Upgrade hands over; unlink says whether a unix listener removes its path
// on Close.
func track(c any, unlink bool) {
	var t tracked
	switch c := c.(type) {
	case *net.TCPListener:
		t.tcp = weak.Make(c)
	case *rstListener:
		t.tcp = weak.Make(c.TCPListener)
	case *net.UnixListener:
		t.unix, t.unlink = weak.Make(c), unlink
	case *net.UDPConn:
		t.udp = weak.Make(c)
	case *net.UnixConn:
		t.ugram = weak.Make(c)
	case *net.IPConn:
		t.ip = weak.Make(c)
	default:
		return
	}
	registry.mu.Lock()
	defer registry.mu.Unlock()
	if len(registry.socks) >= 2*registry.pruned+16 {
		kept := registry.socks[:0]
		for _, s := range registry.socks {
			if s.conn() != nil {
				kept = append(kept, s)
			}
		}
		clear(registry.socks[len(kept):])
		registry.socks, registry.pruned = kept, len(kept)
	}
	registry.socks = append(registry.socks, t)
}

// handover is a dup of one tracked socket, made for the new process.
type handover struct {
	fd     int
	unixLn *net.UnixListener
	unlink bool
}

// dupTracked dups every tracked socket that is still open, in the order they
// were made. Dup goes through SyscallConn: File and Fd would switch the
// shared socket to blocking mode.
func dupTracked() ([]handover, error) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	var out []handover
	for i := range registry.socks {
		t := &registry.socks[i]
		c := t.conn()
		if c == nil {
			continue
		}
		rc, err := c.SyscallConn()
		if err != nil {
			continue
		}
		fd, derr := -1, error(nil)
		if err := rc.Control(func(s uintptr) { fd, derr = dupCloseOnExec(int(s)) }); err != nil {
			continue // closed
		}
		if derr != nil {
			closeHandovers(out)
			return nil, os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", derr)
		}
		h := handover{fd: fd, unlink: t.unlink}
		h.unixLn, _ = c.(*net.UnixListener)
		out = append(out, h)
	}
	return out, nil
}

func closeHandovers(hs []handover) {
	for _, h := range hs {
		unix.Close(h.fd)
	}
}

var upgrading sync.Mutex

func upgrade(ctx context.Context) error {
	if !upgrading.TryLock() {
		return errors.New("reuse: Upgrade: another Upgrade is running")
	}
	defer upgrading.Unlock()
	if p := inheritance.parent; p != 0 && os.Getppid() == p {
		return fmt.Errorf("reuse: Upgrade: this process was started by the Upgrade of pid %d, which has not exited yet", p)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("reuse: Upgrade: %w", err)
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("reuse: Upgrade: %w", err)
	}
	dir, err := os.Getwd()
	if err != nil {
		return fmt.Errorf("reuse: Upgrade: %w", err)
	}
	hs, err := dupTracked()
	if err != nil {
		return fmt.Errorf("reuse: Upgrade: %w", err)
	}
	defer closeHandovers(hs)

	child, err := startChild(exe, dir, hs)
	if err != nil {
		return fmt.Errorf("reuse: Upgrade: %w", err)
	}
	defer child.close()
	if err := child.waitReady(ctx); err != nil {
		return fmt.Errorf("reuse: Upgrade: %w", err)
	}
	for _, h := range hs {
		if h.unixLn != nil {
			// The path is the new process's now.
			h.unixLn.SetUnlinkOnClose(false)
		}
	}
	return nil
}

// upgradeChild is a process that Upgrade started and has not yet handed over
// to.
type upgradeChild struct {
	proc    *os.Process
	pid     int
	fromR   *os.File      // "ready\n" from the child
	toW     *os.File      // "ok\n" to the child
	read    chan struct{} // closed when the child's message, or EOF, is in
	readErr error
}

func startChild(exe, dir string, hs []handover) (*upgradeChild, error) {
	fromR, fromW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer fromW.Close()
	toR, toW, err := os.Pipe()
	if err != nil {
		fromR.Close()
		return nil, err
	}
	defer toR.Close()
	files := make([]uintptr, 0, handoffFirst+len(hs))
	for fd := range 3 {
		f, err := stdio(fd)
		if err != nil {
			fromR.Close()
			toW.Close()
			return nil, err
		}
		if f != nil {
			defer f.Close()
			files = append(files, f.Fd())
		} else {
			files = append(files, uintptr(fd))
		}
	}
	files = append(files, fromW.Fd(), toR.Fd())
	flags := make([]byte, len(hs))
	for i, h := range hs {
		files = append(files, uintptr(h.fd))
		flags[i] = '-'
		if h.unlink {
			flags[i] = 'u'
		}
	}
	argv := os.Args
	if len(argv) == 0 {
		argv = []string{exe}
	}
	env := []string{envHandoff + "=1:" + strconv.Itoa(os.Getpid()) + ":" + string(flags)}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k != envHandoff && !isSystemdVar(k) {
			env = append(env, kv)
		}
	}
	pid, _, err := syscall.StartProcess(exe, argv, &syscall.ProcAttr{Dir: dir, Env: env, Files: files})
	if err != nil {
		fromR.Close()
		toW.Close()
		return nil, fmt.Errorf("start %s: %w", exe, err)
	}
	proc, err := os.FindProcess(pid)
	if err != nil { // not on Unix, where it always succeeds
		fromR.Close()
		toW.Close()
		return nil, err
	}
	c := &upgradeChild{proc: proc, pid: pid, fromR: fromR, toW: toW, read: make(chan struct{})}
	go func() {
		defer close(c.read)
		var b [len("ready\n")]byte
		_, c.readErr = io.ReadFull(fromR, b[:])
		if c.readErr == nil && string(b[:]) != "ready\n" {
			c.readErr = fmt.Errorf("unexpected message %q", b[:])
		}
	}()
	return c, nil
}

func isSystemdVar(k string) bool {
	for _, v := range systemdEnv {
		if k == v {
			return true
		}
	}
	return false
}

// stdio returns /dev/null for a standard fd that is not open, so that the
// child's starts with one, or nil when fd is open.
func stdio(fd int) (*os.File, error) {
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
		return nil, nil
	}
	return os.OpenFile(os.DevNull, os.O_RDWR, 0)
}

// waitReady waits for the child's Ready and answers it. If the child exits,
// or ctx ends, first, it kills the child, reaps it, and says which.
func (c *upgradeChild) waitReady(ctx context.Context) error {
	select {
	case <-c.read:
		if c.readErr == nil {
			if _, err := c.toW.Write([]byte("ok\n")); err == nil {
				return nil
			}
		}
		// The child closed its end: it has exited, or is about to.
		state := c.kill(ctx)
		return fmt.Errorf("the new process (pid %d) exited before Ready: %s", c.pid, state)
	case <-ctx.Done():
		c.kill(nil)
		return fmt.Errorf("the new process (pid %d) did not call Ready in time and was killed: %w", c.pid, ctx.Err())
	}
}

// kill waits for the child to exit, for as long as ctx allows (nil: not at
// all), then kills it, and reaps it. It returns how the child ended.
func (c *upgradeChild) kill(ctx context.Context) string {
	c.fromR.Close()
	<-c.read
	done := make(chan *os.ProcessState, 1)
	go func() {
		st, _ := c.proc.Wait()
		done <- st
	}()
	var st *os.ProcessState
	if ctx != nil {
		select {
		case st = <-done:
		case <-ctx.Done():
		}
	}
	if st == nil {
		c.proc.Kill()
		st = <-done
	}
	if st == nil {
		return "unknown status"
	}
	return st.String()
}

func (c *upgradeChild) close() {
	c.fromR.Close()
	c.toW.Close()
	c.proc.Release()
}

func ready() error {
	inheritance.readyOnce.Do(func() { inheritance.readyErr = readyOnce() })
	return inheritance.readyErr
}

func readyOnce() error {
	defer closeUnclaimed()
	if inheritance.toParent != nil {
		if err := tellParent(); err != nil {
			return err
		}
	}
	sock := os.Getenv("NOTIFY_SOCKET")
	if sock == "" {
		return nil
	}
	msg := "READY=1"
	if inheritance.parent != 0 {
		msg = "MAINPID=" + strconv.Itoa(os.Getpid()) + "\n" + msg
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err == nil {
		_, err = c.Write([]byte(msg))
		c.Close()
	}
	if err != nil {
		return fmt.Errorf("reuse: Ready: notify systemd at NOTIFY_SOCKET=%s: %w", sock, err)
	}
	return nil
}

// tellParent tells the parent's Upgrade that this process serves, and waits
// for its answer: "ok", or nothing if it gave up on this process.
func tellParent() error {
	to, from := inheritance.toParent, inheritance.fromParent
	defer to.Close()
	if from == nil {
		return errors.New("reuse: Ready: the handoff from the parent is missing fd 4")
	}
	defer from.Close()
	var b [len("ok\n")]byte
	_, err := to.Write([]byte("ready\n"))
	if err == nil {
		_, err = io.ReadFull(from, b[:])
	}
	if err == nil && string(b[:]) == "ok\n" {
		return nil
	}
	return fmt.Errorf("reuse: Ready: the Upgrade of pid %d gave up on this process (its context ended, or it exited)", inheritance.parent)
}

// closeUnclaimed closes the inherited sockets that no Listen took.
func closeUnclaimed() {
	inheritance.mu.Lock()
	defer inheritance.mu.Unlock()
	kept := inheritance.socks[:0]
	for _, s := range inheritance.socks {
		if s.claimed {
			kept = append(kept, s) // a Listen is taking it right now
			continue
		}
		s.f.Close()
	}
	inheritance.socks = kept
	inheritance.open.Store(int32(len(kept)))
}
