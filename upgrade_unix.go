//go:build unix

package reuse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"weak"

	"golang.org/x/sys/unix"
)

// tracked is a listener or packet conn that this package returned, which
// Upgrade hands over while it is open. The pointers are weak, so that
// tracking keeps nothing alive that the program dropped.
type tracked struct {
	tcp   weak.Pointer[net.TCPListener]
	unix  weak.Pointer[net.UnixListener]
	udp   weak.Pointer[net.UDPConn]
	ugram weak.Pointer[net.UnixConn]
	flag  byte // flagUnlink, flagZero or flagNone
}

// conn returns the listener or conn, or nil once the GC has collected it.
// Each pointer is read once: a second read could find it collected.
func (t *tracked) conn() syscall.Conn {
	if c := t.tcp.Value(); c != nil {
		return c
	}
	if c := t.unix.Value(); c != nil {
		return c
	}
	if c := t.udp.Value(); c != nil {
		return c
	}
	if c := t.ugram.Value(); c != nil {
		return c
	}
	return nil
}

var registry struct {
	mu       sync.Mutex
	socks    []tracked
	pruned   int // len(socks) after the last pruning
	upgraded int // the pid that a successful Upgrade handed them to
}

// track adds c, which Listen or ListenPacket is about to return, to what
// Upgrade hands over, with its flag. An ip conn is not tracked: no Listen
// can take one.
func track(c any, flag byte) {
	t := tracked{flag: flag}
	switch c := c.(type) {
	case *net.TCPListener:
		t.tcp = weak.Make(c)
	case *lingerListener:
		t.tcp = weak.Make(c.TCPListener)
	case *net.UnixListener:
		t.unix = weak.Make(c)
	case *net.UDPConn:
		t.udp = weak.Make(c)
	case *net.UnixConn:
		t.ugram = weak.Make(c)
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
	flag   byte
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
		h := handover{fd: fd, flag: t.flag}
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
	registry.mu.Lock()
	to := registry.upgraded
	registry.mu.Unlock()
	if to != 0 {
		return fmt.Errorf("reuse: Upgrade: this process upgraded to pid %d already; its sockets are that process's now", to)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("reuse: Upgrade: %w", err)
	}
	hs, err := dupTracked()
	if err != nil {
		return fmt.Errorf("reuse: Upgrade: %w", err)
	}
	defer closeHandovers(hs)
	exe, err := executable()
	if err != nil {
		return fmt.Errorf("reuse: Upgrade: %w", err)
	}

	child, err := startChild(exe, hs)
	if err != nil {
		return fmt.Errorf("reuse: Upgrade: %w", err)
	}
	defer child.close()
	if err := child.waitReady(ctx); err != nil {
		return fmt.Errorf("reuse: Upgrade: %w", err)
	}
	for _, h := range hs {
		if h.unixLn != nil {
			h.unixLn.SetUnlinkOnClose(false) // the path is the new process's now
		}
	}
	registry.mu.Lock()
	registry.upgraded = child.pid
	registry.mu.Unlock()
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

// startChild starts exe with this process's arguments, working directory
// (not by its path: the directory itself, which may have been renamed or
// removed since), standard fds and environment, and the sockets of hs.
func startChild(exe string, hs []handover) (*upgradeChild, error) {
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
		if isOpen(fd) {
			files = append(files, uintptr(fd))
			continue
		}
		null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
		if err != nil {
			fromR.Close()
			toW.Close()
			return nil, err
		}
		defer null.Close()
		files = append(files, null.Fd())
	}
	files = append(files, fromW.Fd(), toR.Fd())
	flags := make([]byte, len(hs))
	for i, h := range hs {
		files = append(files, uintptr(h.fd))
		flags[i] = h.flag
	}
	argv := os.Args
	if len(argv) == 0 {
		argv = []string{exe}
	}
	env := []string{envHandoff + "=1:" + strconv.Itoa(os.Getpid()) + ":" + string(flags)}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k != envHandoff && !slices.Contains(systemdEnv, k) {
			env = append(env, kv)
		}
	}
	pid, _, err := syscall.StartProcess(exe, argv, &syscall.ProcAttr{Env: env, Files: files})
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

// waitReady waits for the child's Ready and answers it. Under systemd it
// first tells systemd that the child is the main process now, while this
// process still is, so that NotifyAccess=main suffices; if that fails, the
// child is killed as when it fails. If the child exits, or ctx ends, first,
// it kills the child, reaps it, and says which.
func (c *upgradeChild) waitReady(ctx context.Context) error {
	select {
	case <-c.read:
		if c.readErr != nil {
			// The child closed its end: it has exited, or is about to.
			return fmt.Errorf("the new process (pid %d) exited before Ready: %s", c.pid, c.reap(ctx.Done()))
		}
		if err := sdNotify("MAINPID=" + strconv.Itoa(c.pid)); err != nil {
			return fmt.Errorf("%w; the new process (pid %d) was killed: %s", err, c.pid, c.reap(now))
		}
		if _, err := c.toW.Write([]byte("ok\n")); err != nil {
			sdNotify("MAINPID=" + strconv.Itoa(os.Getpid())) // back to this process
			return fmt.Errorf("the new process (pid %d) exited at Ready: %s", c.pid, c.reap(ctx.Done()))
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("the new process (pid %d) did not call Ready in time and was killed (%s): %w", c.pid, c.reap(now), ctx.Err())
	}
}

// reap waits for the child to exit until wait is closed, then kills it, and
// waits for it. It returns how the child ended.
func (c *upgradeChild) reap(wait <-chan struct{}) string {
	c.fromR.Close()
	<-c.read
	done := make(chan *os.ProcessState, 1)
	go func() {
		st, _ := c.proc.Wait()
		done <- st
	}()
	var st *os.ProcessState
	select {
	case st = <-done:
	case <-wait:
		c.proc.Kill()
		st = <-done
	}
	if st == nil {
		return "unknown status"
	}
	return st.String()
}

// now is a closed channel: reap(now) kills at once.
var now = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

func (c *upgradeChild) close() {
	c.fromR.Close()
	c.toW.Close()
	c.proc.Release()
}
