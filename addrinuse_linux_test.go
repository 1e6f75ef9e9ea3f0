package reuse

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/safelisten/reuse/internal/census"
)

// requireAddrInUse checks the common promises of a failed bind's error and
// returns it as an *AddrInUseError.
func requireAddrInUse(t *testing.T, err error) *AddrInUseError {
	t.Helper()
	require.Error(t, err)
	var e *AddrInUseError
	require.ErrorAs(t, err, &e, "%v", err)
	assert.ErrorIs(t, err, syscall.EADDRINUSE)
	assert.True(t, IsAddrInUse(err))
	var op *net.OpError
	assert.ErrorAs(t, err, &op, "the stdlib's error is still inside")
	assert.True(t, strings.HasPrefix(err.Error(), e.Err.Error()+": "), "keeps the stdlib text: %v", err)
	return e
}

// Environment of TestHelperListener.
const (
	helperListenEnv = "REUSE_HELPER_LISTEN" // the tcp4 address to listen on
	helperCommEnv   = "REUSE_HELPER_COMM"   // the process name to take first, if set
	helperInUseEnv  = "REUSE_HELPER_IN_USE" // instead: a tcp4 address to fail to Listen on
)

// TestHelperListener is not a test: it is the child process of the tests
// that need a port held by another process. It takes the name
// $REUSE_HELPER_COMM if set, listens on $REUSE_HELPER_LISTEN, prints its
// port, and holds the port until its stdin closes. With
// $REUSE_HELPER_IN_USE it instead Listens on that address, which must fail,
// prints the error's message quoted, and exits.
func TestHelperListener(t *testing.T) {
	if addr := os.Getenv(helperInUseEnv); addr != "" {
		_, err := Listen("tcp4", addr)
		fmt.Printf("%q\n", fmt.Sprint(err))
		return
	}
	if os.Getenv(helperListenEnv) == "" {
		t.Skip("child process only")
	}
	if comm := os.Getenv(helperCommEnv); comm != "" {
		// The main thread's comm names the process; any thread may write it.
		if err := os.WriteFile("/proc/self/comm", []byte(comm), 0); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
	}
	ln, err := net.Listen("tcp4", os.Getenv(helperListenEnv))
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	bufio.NewReader(os.Stdin).ReadString('\n') // until the parent closes stdin
	ln.Close()
}

// helperAs returns helperCmd for bin, run as uid unless it is -1.
func helperAs(ctx context.Context, bin string, uid int, name string, env ...string) *exec.Cmd {
	cmd := helperCmd(ctx, bin, name, env...)
	if uid >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
		cmd.Dir = filepath.Dir(bin)
	}
	return cmd
}

// childListener starts TestHelperListener from bin, as uid unless it is -1,
// named comm unless it is "", and returns its PID and port. The child exits
// when the test ends.
func childListener(t *testing.T, bin string, uid int, comm string) (pid, port int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	cmd := helperAs(ctx, bin, uid, "TestHelperListener", helperListenEnv+"=127.0.0.1:0", helperCommEnv+"="+comm)
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { stdin.Close(); cmd.Wait(); cancel() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err)
	port, err = strconv.Atoi(strings.TrimSpace(line))
	require.NoError(t, err, "child said %q", line)
	return cmd.Process.Pid, port
}

// holderStates counts the states of d's holders.
func holderStates(d Diagnosis) map[string]int {
	m := map[string]int{}
	for _, h := range d.Holders {
		m[h.State]++
	}
	return m
}

func TestAddrInUse_ChildProcessHoldsPort(t *testing.T) {
	pid, p := childListener(t, os.Args[0], -1, "")
	_, err := Listen("tcp4", hostPort("127.0.0.1", p))
	e := requireAddrInUse(t, err)
	assert.Contains(t, e.Error(), fmt.Sprintf("port %d is held by a LISTEN socket of pid %d (", p, pid))
	assert.Contains(t, e.Error(), "SO_REUSEADDR cannot share a live port")
	d := e.Diagnosis()
	assert.Equal(t, ReasonListener, d.Reason)
	assert.NoError(t, d.Err)
	require.Len(t, d.Holders, 1)
	assert.Equal(t, 1, d.Count)
	h := d.Holders[0]
	assert.Equal(t, Holder{State: "LISTEN", Local: netip.MustParseAddrPort(hostPort("127.0.0.1", p)), Remote: netip.MustParseAddrPort("0.0.0.0:0"), UID: uint32(os.Getuid()), PID: pid, Command: h.Command}, h)
	assert.NotEmpty(t, h.Command)
	t.Log(e)
}

// Each leave... function below makes a state that the kernel can leave on
// a port and returns the address a Listen then fails on.

const leftConns = 3

// leaveServerFirst leaves leftConns server-closed connections on a
// listener's port, the clients closed too (TIME_WAIT) or still open
// (FIN_WAIT2), the listener made with WithReuseAddr(reuseAddr).
func leaveServerFirst(t *testing.T, reuseAddr, clientsClose bool) string {
	ln, err := listenTCP(t, "tcp4", "127.0.0.1:0", false, WithReuseAddr(reuseAddr))
	require.NoError(t, err)
	for range leftConns {
		c, s := pair(t, ln)
		require.NoError(t, s.Close())
		readErr(t, c)
		if clientsClose {
			require.NoError(t, c.Close())
		}
	}
	want := map[State]int{StateTimeWait: leftConns}
	if !clientsClose {
		want = map[State]int{StateFinWait2: leftConns}
	}
	waitStates(t, port(ln.Addr()), nil, want)
	require.NoError(t, ln.Close())
	return ln.Addr().String()
}

// leaveOutgoingTimeWait leaves the TIME_WAIT of an outgoing connection that
// a net.Dialer made from a fixed local port and closed first: no listener
// ever ran on that port, and the TIME_WAIT has no SO_REUSEADDR.
func leaveOutgoingTimeWait(t *testing.T) string {
	peer, err := listenTCP(t, "tcp4", "127.0.0.1:0", false)
	require.NoError(t, err)
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp4", peer.Addr().String())
	require.NoError(t, err)
	s, err := peer.Accept()
	require.NoError(t, err)
	defer s.Close()
	require.NoError(t, c.Close())
	readErr(t, s) // EOF: the client's FIN arrived
	require.NoError(t, s.Close())
	waitStates(t, port(c.LocalAddr()), c, map[State]int{StateTimeWait: 1})
	return c.LocalAddr().String()
}

// leaveBound leaves a socket of this process bound to host without
// listening, IPv6-only if v6only, and returns its address; with port, on
// that port.
func leaveBound(t *testing.T, host string, v6only bool, port int) (string, error) {
	addr := netip.MustParseAddr(host)
	family, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Addr: addr.As16(), Port: port})
	if addr.Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Addr: addr.As4(), Port: port}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	if addr.Is6() {
		require.NoError(t, unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, map[bool]int{true: 1}[v6only]))
	}
	if err := unix.Bind(fd, sa); err != nil {
		return "", err
	}
	got, err := unix.Getsockname(fd)
	require.NoError(t, err)
	switch got := got.(type) {
	case *unix.SockaddrInet4:
		port = got.Port
	case *unix.SockaddrInet6:
		port = got.Port
	}
	return hostPort(host, port), nil
}

// TestAddrInUse_Kernel makes each state the kernel can leave on a port and
// checks the diagnosis of a bind that then fails.
func TestAddrInUse_Kernel(t *testing.T) {
	n := leftConns
	self := strconv.Itoa(os.Getpid())
	for name, c := range map[string]struct {
		setup  func(t *testing.T) (addr string)
		opts   []Option
		want   []string
		reason Reason
		states map[string]int
	}{
		"live listener of this process": {
			setup: func(t *testing.T) string {
				ln, err := listenTCP(t, "tcp4", "127.0.0.1:0", false)
				require.NoError(t, err)
				return ln.Addr().String()
			},
			want:   []string{"is held by a LISTEN socket of this process (pid " + self + ") on 127.0.0.1:", "SO_REUSEADDR cannot share a live port"},
			reason: ReasonListener,
			states: map[string]int{"LISTEN": 1},
		},
		"live listener, reuseport asked": {
			setup: func(t *testing.T) string {
				ln, err := listenTCP(t, "tcp4", "127.0.0.1:0", false)
				require.NoError(t, err)
				return ln.Addr().String()
			},
			opts:   []Option{WithReusePort(true)},
			want:   []string{"LISTEN socket", "only when every listener on it has SO_REUSEPORT"},
			reason: ReasonListener,
		},
		"TIME_WAIT of a strict listener": {
			setup:  func(t *testing.T) string { return leaveServerFirst(t, false, true) },
			want:   []string{fmt.Sprintf("is held by %d TIME_WAIT connections, at least one left by a socket without SO_REUSEADDR", n), "within 60 s"},
			reason: ReasonTimeWait,
			states: map[string]int{"TIME_WAIT": n},
		},
		"TIME_WAIT of an outgoing connection: no listener is blamed": {
			setup:  leaveOutgoingTimeWait,
			want:   []string{"is held by 1 TIME_WAIT connection, at least one left by a socket without SO_REUSEADDR"},
			reason: ReasonTimeWait,
			states: map[string]int{"TIME_WAIT": 1},
		},
		"TIME_WAIT, new listener strict": {
			setup:  func(t *testing.T) string { return leaveServerFirst(t, true, true) },
			opts:   []Option{WithReuseAddr(false)},
			want:   []string{fmt.Sprintf("is held by %d TIME_WAIT connections, and this socket has SO_REUSEADDR off", n)},
			reason: ReasonTimeWait,
			states: map[string]int{"TIME_WAIT": n},
		},
		"FIN_WAIT2, new listener strict": {
			setup:  func(t *testing.T) string { return leaveServerFirst(t, true, false) },
			opts:   []Option{WithReuseAddr(false)},
			want:   []string{fmt.Sprintf("is held by %d FIN_WAIT2 connections, and this socket has SO_REUSEADDR off; the port is busy while they last", n)},
			reason: ReasonConnections,
			states: map[string]int{"FIN_WAIT2": n},
		},
		"FIN_WAIT2 of a strict listener": {
			setup:  func(t *testing.T) string { return leaveServerFirst(t, false, false) },
			want:   []string{fmt.Sprintf("is held by %d FIN_WAIT2 connections, at least one without SO_REUSEADDR", n)},
			reason: ReasonConnections,
		},
		"open connections of a closed listener": {
			setup: func(t *testing.T) string {
				ln, err := listenTCP(t, "tcp4", "127.0.0.1:0", false, WithReuseAddr(false))
				require.NoError(t, err)
				pair(t, ln)
				require.NoError(t, ln.Close())
				return ln.Addr().String()
			},
			want:   []string{"is held by 1 ESTABLISHED connection of this process (pid " + self + "), at least one without SO_REUSEADDR"},
			reason: ReasonConnections,
			states: map[string]int{"ESTABLISHED": 1},
		},
		"bound, not listening": {
			setup: func(t *testing.T) string {
				addr, err := leaveBound(t, "127.0.0.1", false, 0)
				require.NoError(t, err)
				return addr
			},
			want:   []string{"is held by a socket of this process (pid " + self + ") bound without listening"}, // Linux 6.8+
			reason: ReasonBound,
			states: map[string]int{"CLOSE": 1},
		},
		// A socket bound to [::] with IPV6_V6ONLY cannot block a tcp4
		// bind, and the kernel says it is IPv6-only. (Bound, not
		// listening: the tests listen on loopback only.)
		"a v6-only [::] socket is not blamed for a tcp4 failure": {
			setup: func(t *testing.T) string {
				if hosts(t)["tcp6"] == "" {
					t.Skip("no IPv6")
				}
				addr := leaveOutgoingTimeWait(t)
				_, err := leaveBound(t, "::", true, int(netip.MustParseAddrPort(addr).Port()))
				require.NoError(t, err, "a v6-only [::] socket shares a port with IPv4 sockets")
				return addr
			},
			want:   []string{"is held by 1 TIME_WAIT connection, at least one left by a socket without SO_REUSEADDR"},
			reason: ReasonTimeWait,
			states: map[string]int{"TIME_WAIT": 1},
		},
	} {
		t.Run(name, func(t *testing.T) {
			addr := c.setup(t)
			noLeak(t, func() {
				_, err := Listen("tcp4", addr, c.opts...)
				e := requireAddrInUse(t, err)
				t.Log(e)
				for _, w := range c.want {
					assert.Contains(t, e.Error(), w)
				}
				assert.NotContains(t, e.Error(), "listener without", "no guess about where a TIME_WAIT came from")
				d := e.Diagnosis()
				assert.Equal(t, c.reason, d.Reason)
				if c.reason != ReasonBound {
					assert.NotContains(t, e.Error(), "bound without listening", "only the bound case names a bound socket")
				}
				assert.WithinDuration(t, time.Now(), d.Read, time.Minute)
				if c.states != nil {
					assert.Equal(t, c.states, holderStates(d))
				}
			})
		})
	}
}

// TestAddrInUse_ReadAtFirstLook: a failed Listen reads no table; IsAddrInUse,
// errors.Is and errors.As do not either. The table is read once, at the first
// Error or Diagnosis, so it shows the port as it is then, and every copy of
// the error, in any goroutine, says the same.
func TestAddrInUse_ReadAtFirstLook(t *testing.T) {
	reads := 0
	readTable = func(q census.Query) (census.Table, error) { reads++; return census.Read(q) }
	defer func() { readTable = census.Read }()

	ln, err := listenTCP(t, "tcp4", "127.0.0.1:0", false)
	require.NoError(t, err)
	_, err = Listen("tcp4", ln.Addr().String())
	require.Error(t, err)
	var e *AddrInUseError
	require.ErrorAs(t, err, &e)
	var op *net.OpError
	require.ErrorAs(t, err, &op)
	require.ErrorIs(t, err, syscall.EADDRINUSE)
	require.True(t, IsAddrInUse(err))
	assert.Zero(t, reads, "no table read before anyone looks")

	closed := time.Now()
	require.NoError(t, ln.Close())
	copied := *e
	var wg sync.WaitGroup
	msgs := make([]string, 8)
	for i := range msgs {
		wg.Go(func() {
			if i%2 == 0 {
				msgs[i] = e.Error()
			} else {
				msgs[i] = copied.Error()
			}
		})
	}
	wg.Wait()
	assert.Equal(t, 1, reads, "read once")
	for _, m := range msgs {
		assert.Equal(t, msgs[0], m)
	}
	assert.Contains(t, msgs[0], fmt.Sprintf("no TCP socket on port %d shows in the kernel's table now", port(ln.Addr())), "the listener closed before the first look")
	d := copied.Diagnosis()
	assert.Equal(t, ReasonGone, d.Reason)
	assert.Zero(t, d.Count)
	assert.False(t, d.Read.Before(closed), "read at the first look, after the close")
	assert.Equal(t, 1, reads)
}

// TestAddrInUse_ReadLate: a message made long after the failure says so.
func TestAddrInUse_ReadLate(t *testing.T) {
	ln, err := listenTCP(t, "tcp4", "127.0.0.1:0", false)
	require.NoError(t, err)
	_, err = Listen("tcp4", ln.Addr().String())
	var e *AddrInUseError
	require.ErrorAs(t, err, &e)
	e.x.failed = e.x.failed.Add(-3 * time.Second) // as if it failed 3 s ago
	assert.True(t, strings.HasSuffix(e.Error(), "; SO_REUSEADDR cannot share a live port (the table was read 3s after the bind failed)"), e.Error())
}

// TestAddrInUse_ZeroValue: an AddrInUseError that this package did not make
// neither panics nor reads a table.
func TestAddrInUse_ZeroValue(t *testing.T) {
	var zero AddrInUseError
	assert.Equal(t, "address already in use", zero.Error())
	assert.Nil(t, zero.Unwrap())
	assert.Equal(t, "tcp :80: address already in use", (&AddrInUseError{Network: "tcp", Address: ":80"}).Error())
	d := zero.Diagnosis()
	assert.Equal(t, ReasonUnknown, d.Reason)
	assert.ErrorContains(t, d.Err, "not made by Listen")
	assert.Nil(t, d.Holders)
	var nilErr *AddrInUseError
	assert.Equal(t, "<nil>", nilErr.Error())
	assert.Nil(t, nilErr.Unwrap())
	assert.Error(t, nilErr.Diagnosis().Err)
	inner := errors.New("bind: address already in use")
	assert.Equal(t, inner.Error(), (&AddrInUseError{Err: inner}).Error())
}

// TestAddrInUse_Bounded: the diagnosis of a port with many connections
// counts them all but keeps a bounded number, the listener first.
func TestAddrInUse_Bounded(t *testing.T) {
	const conns = census.DefaultKeep + 44
	ln, err := listenTCP(t, "tcp4", "127.0.0.1:0", false, WithRSTOnClose())
	require.NoError(t, err)
	d := net.Dialer{Timeout: 2 * time.Second}
	for range conns {
		c, err := d.Dial("tcp4", ln.Addr().String())
		require.NoError(t, err)
		t.Cleanup(func() { Abort(c) })
		s, err := ln.Accept()
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
	}
	noLeak(t, func() {
		_, err = Listen("tcp4", ln.Addr().String())
		e := requireAddrInUse(t, err)
		diag := e.Diagnosis()
		assert.Equal(t, 1+conns, diag.Count)
		require.Len(t, diag.Holders, census.DefaultKeep)
		assert.Equal(t, "LISTEN", diag.Holders[0].State)
		assert.Equal(t, map[string]int{"LISTEN": 1, "ESTABLISHED": census.DefaultKeep - 1}, holderStates(diag))
		assert.Contains(t, e.Error(), "LISTEN socket of this process")
	})
}

// TestAddrInUse_InFlight: a listener that no process holds, its only
// descriptor in flight over a unix socket, is not blamed on a user's hidden
// process when the caller could inspect them all.
func TestAddrInUse_InFlight(t *testing.T) {
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	require.NoError(t, unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	require.NoError(t, unix.Listen(lfd, 1))
	sa, err := unix.Getsockname(lfd)
	require.NoError(t, err)
	p := sa.(*unix.SockaddrInet4).Port
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(pair[0]); unix.Close(pair[1]) }) // drops the listener too
	require.NoError(t, unix.Sendmsg(pair[0], []byte{0}, unix.UnixRights(lfd), nil, 0))
	require.NoError(t, unix.Close(lfd))

	_, err = Listen("tcp4", hostPort("127.0.0.1", p))
	e := requireAddrInUse(t, err)
	t.Log(e)
	want := "LISTEN socket of user 0 (held by no process in /proc: in flight over a unix socket, or in another PID namespace)"
	if os.Geteuid() != 0 {
		want = "(held by no process this user may inspect; perhaps by another user's)"
	}
	// The lookup reads every process's descriptors, looking for one that
	// does not exist: on a loaded machine it may give up first, and say so.
	if timedOut := "(its process was not found before the lookup's deadline)"; strings.Contains(e.Error(), timedOut) {
		want = timedOut
	}
	assert.Contains(t, e.Error(), want)
	assert.NotContains(t, e.Error(), "not visible to this user")
	assert.Zero(t, e.Diagnosis().Holders[0].PID)
}

// TestAddrInUse_AnotherUsersView: to a user who is not root, a socket of
// root's is held by a process that user may not inspect; the message says
// that much, and names no process.
func TestAddrInUse_AnotherUsersView(t *testing.T) {
	bin := nobodyBinary(t)
	ln, err := listenTCP(t, "tcp4", "127.0.0.1:0", false)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := helperAs(ctx, bin, nobody, "TestHelperListener", helperInUseEnv+"="+ln.Addr().String()).Output()
	require.NoError(t, err)
	line, _, _ := strings.Cut(string(out), "\n")
	msg, err := strconv.Unquote(line)
	require.NoError(t, err, "the child said %q", out)
	t.Log(msg)
	assert.Contains(t, msg, fmt.Sprintf("port %d is held by a LISTEN socket of user 0 (held by no process this user may inspect; perhaps by another user's) on %v", port(ln.Addr()), ln.Addr()))
}

// TestAddrInUse_ProcessNameEscaped: another user picks a process name with a
// newline and a terminal escape; root's error message shows it escaped, on
// one line, while Diagnosis has it as it is.
func TestAddrInUse_ProcessNameEscaped(t *testing.T) {
	bin, uid := os.Args[0], -1
	if os.Geteuid() == 0 {
		bin, uid = nobodyBinary(t), nobody
	}
	const evil = "x\n\x1b[31mred" // 10 bytes: comm keeps 15
	pid, p := childListener(t, bin, uid, evil)
	_, err := Listen("tcp4", hostPort("127.0.0.1", p))
	e := requireAddrInUse(t, err)
	msg := e.Error()
	t.Logf("%q", msg)
	assert.Contains(t, msg, fmt.Sprintf(`of pid %d ("x\n\x1b[31mred") on`, pid))
	assert.NotContains(t, msg, "\n")
	assert.NotContains(t, msg, "\x1b")
	assert.Equal(t, evil, e.Diagnosis().Holders[0].Command)
}

func TestAddrInUse_UDPAndDial(t *testing.T) {
	pc, err := ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer pc.Close()
	_, err = ListenPacket("udp4", pc.LocalAddr().String())
	e := requireAddrInUse(t, err)
	assert.Contains(t, e.Error(), "another UDP socket holds port")
	d := e.Diagnosis()
	assert.Equal(t, ReasonUnknown, d.Reason)
	assert.Nil(t, d.Holders, "the census is TCP only")
	assert.ErrorContains(t, d.Err, "UDP")

	ln, err := Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	_, err = Dial("tcp4", ln.Addr().String(), ln.Addr().String())
	e = requireAddrInUse(t, err)
	assert.Contains(t, e.Error(), "LISTEN socket of this process")
	assert.Equal(t, ln.Addr().String(), e.Address)
	assert.Equal(t, ReasonListener, e.Diagnosis().Reason)
}

// TestDiagnose covers the wording for tables the kernel tests above cannot
// make on demand: other users, several listeners, wildcards, a table read
// from /proc, an owner lookup cut short.
func TestDiagnose(t *testing.T) {
	ap := netip.MustParseAddrPort
	sock := func(local string, st State, uid uint32, inode uint64, pid int, cmd string) Socket {
		return Socket{Local: ap(local), Remote: ap("127.0.0.1:5000"), State: st, UID: uid, Inode: inode, PID: pid, Command: cmd}
	}
	v6only := func(s Socket, v census.V6Only) Socket { s.V6Only = v; return s }
	b := bindInfo{kind: kindTCPListen, addr: ap("127.0.0.1:8080"), reuseAddr: true}
	b4 := bindInfo{kind: kindTCPListen, addr: ap("0.0.0.0:8080"), reuseAddr: true}
	for name, c := range map[string]struct {
		b      bindInfo
		socks  []Socket
		want   string
		reason Reason
		proc   bool
		owners census.Owners
	}{
		"other process": {b: b, socks: []Socket{sock("127.0.0.1:8080", StateListen, 33, 7, 4242, "nginx")}, reason: ReasonListener,
			want: "port 8080 is held by a LISTEN socket of pid 4242 (nginx) on 127.0.0.1:8080; SO_REUSEADDR cannot share a live port"},
		"other user, hidden": {b: b, socks: []Socket{sock("127.0.0.1:8080", StateListen, 33, 7, 0, "")}, owners: census.Owners{Hidden: 3}, reason: ReasonListener,
			want: "port 8080 is held by a LISTEN socket of user 33 (held by no process this user may inspect; perhaps by another user's) on 127.0.0.1:8080; SO_REUSEADDR cannot share a live port"},
		"no process holds it": {b: b, socks: []Socket{sock("127.0.0.1:8080", StateListen, 33, 7, 0, "")}, reason: ReasonListener,
			want: "port 8080 is held by a LISTEN socket of user 33 (held by no process in /proc: in flight over a unix socket, or in another PID namespace) on 127.0.0.1:8080; SO_REUSEADDR cannot share a live port"},
		"lookup cut short": {b: b, socks: []Socket{sock("127.0.0.1:8080", StateListen, 33, 7, 0, "")}, owners: census.Owners{TimedOut: true, Hidden: 1}, reason: ReasonListener,
			want: "port 8080 is held by a LISTEN socket of user 33 (its process was not found before the lookup's deadline) on 127.0.0.1:8080; SO_REUSEADDR cannot share a live port"},
		"name escaped": {b: b, socks: []Socket{sock("127.0.0.1:8080", StateListen, 33, 7, 4242, "a) on x; ok\r")}, reason: ReasonListener,
			want: `port 8080 is held by a LISTEN socket of pid 4242 ("a) on x; ok\r") on 127.0.0.1:8080; SO_REUSEADDR cannot share a live port`},
		"wildcard covers us": {b: b, socks: []Socket{sock("0.0.0.0:8080", StateListen, 0, 7, 1, "init")}, reason: ReasonListener,
			want: "port 8080 is held by a LISTEN socket of pid 1 (init) on 0.0.0.0:8080; SO_REUSEADDR cannot share a live port"},
		"dual-stack covers us": {b: b, socks: []Socket{v6only(sock("[::]:8080", StateListen, 0, 7, 1, "init"), census.V6OnlyOff), v6only(sock("[::]:8080", StateListen, 0, 8, 1, "init"), census.V6OnlyOff)}, reason: ReasonListener,
			want: "port 8080 is held by a LISTEN socket of pid 1 (init) on [::]:8080 and 1 more; SO_REUSEADDR cannot share a live port"},
		"v6-only does not": {b: b4, socks: []Socket{v6only(sock("[::]:8080", StateListen, 0, 7, 1, "init"), census.V6OnlyOn)}, reason: ReasonGone,
			want: "no TCP socket on port 8080 shows in the kernel's table now: its holder has gone, or is bound without listening (shown only by Linux 6.8 and later)"},
		"from /proc, perhaps dual-stack": {b: b4, socks: []Socket{sock("[::]:8080", StateListen, 0, 7, 1, "init")}, proc: true, reason: ReasonListener,
			want: "port 8080 is held by a LISTEN socket of pid 1 (init) on [::]:8080 (if it is dual-stack: /proc/net/tcp6 does not show IPV6_V6ONLY); SO_REUSEADDR cannot share a live port"},
		"from /proc, nothing": {b: b, proc: true, reason: ReasonGone,
			want: "no TCP socket on port 8080 shows in the kernel's table now: its holder has gone, or is bound without listening, which /proc/net/tcp does not show"},
		"other address does not": {b: b, socks: []Socket{sock("127.0.0.2:8080", StateListen, 0, 7, 1, "init")}, reason: ReasonGone,
			want: "no TCP socket on port 8080 shows in the kernel's table now: its holder has gone, or is bound without listening (shown only by Linux 6.8 and later)"},
		"we are the wildcard": {b: bindInfo{kind: kindTCPListen, addr: ap("[::]:8080"), reuseAddr: true}, socks: []Socket{sock("[::ffff:127.0.0.1]:8080", StateTimeWait, 0, 0, 0, "")}, reason: ReasonTimeWait,
			want: "port 8080 is held by 1 TIME_WAIT connection, at least one left by a socket without SO_REUSEADDR (a TIME_WAIT keeps the setting of the socket that closed, and both need it); TIME_WAIT ends within 60 s"},
		"mixed states": {b: b, socks: []Socket{sock("127.0.0.1:8080", StateTimeWait, 0, 0, 0, ""), sock("127.0.0.1:8080", StateCloseWait, 0, 9, 77, "old"), sock("127.0.0.1:8080", StateTimeWait, 0, 0, 0, ""), sock("127.0.0.1:8080", StateEstablished, 0, 10, 78, "new")}, reason: ReasonConnections,
			want: "port 8080 is held by 1 ESTABLISHED, 2 TIME_WAIT and 1 CLOSE_WAIT connections of pid 77 (old) and 1 other processes, at least one without SO_REUSEADDR (both sockets need it); the port is busy while they last"},
		"TIME_WAIT and a bound socket": {b: b, socks: []Socket{sock("127.0.0.1:8080", StateTimeWait, 0, 0, 0, ""), sock("127.0.0.2:8080", StateTimeWait, 0, 0, 0, ""), sock("0.0.0.0:8080", StateClose, 0, 5, 42, "holder")}, reason: ReasonBound,
			want: "port 8080 is held by 1 TIME_WAIT connection and a socket of pid 42 (holder) bound without listening, at least one without SO_REUSEADDR (both sockets need it); the port is busy while they last"},
		"tcp6 is IPv6-only: IPv4 sockets are not in its way": {b: bindInfo{kind: kindTCPListen, addr: ap("[::]:8080"), v6only: true, reuseAddr: true}, socks: []Socket{sock("0.0.0.0:8080", StateListen, 0, 7, 1, "init")}, reason: ReasonGone,
			want: "no TCP socket on port 8080 shows in the kernel's table now: its holder has gone, or is bound without listening (shown only by Linux 6.8 and later)"},
		"strict socket, TIME_WAIT only": {b: bindInfo{kind: kindTCPListen, addr: ap("127.0.0.1:8080")}, socks: []Socket{sock("127.0.0.1:8080", StateTimeWait, 0, 0, 0, "")}, reason: ReasonTimeWait,
			want: "port 8080 is held by 1 TIME_WAIT connection, and this socket has SO_REUSEADDR off; TIME_WAIT ends within 60 s"},
		"listener wins over connections": {b: b, socks: []Socket{sock("127.0.0.1:8080", StateTimeWait, 0, 0, 0, ""), sock("127.0.0.1:8080", StateListen, 0, 9, 77, "new")}, reason: ReasonListener,
			want: "port 8080 is held by a LISTEN socket of pid 77 (new) on 127.0.0.1:8080; SO_REUSEADDR cannot share a live port"},
		"bound socket of a hidden process": {b: b, socks: []Socket{sock("127.0.0.1:8080", StateClose, 1000, 5, 0, "")}, owners: census.Owners{Hidden: 1}, reason: ReasonBound,
			want: "port 8080 is held by a socket of user 1000 (held by no process this user may inspect; perhaps by another user's) bound without listening, at least one without SO_REUSEADDR (both sockets need it); the port is busy while they last"},
	} {
		t.Run(name, func(t *testing.T) {
			tab := census.TableOf(c.b.query(), c.socks)
			tab.Owners = c.owners
			if c.proc {
				tab.Source = census.SourceProc
			}
			d, why := diagnose(c.b, &tab, 1000)
			assert.Equal(t, c.want, why)
			assert.Equal(t, c.reason, d.Reason)
			assert.Equal(t, tab.Total, d.Count)
			assert.Len(t, d.Holders, len(tab.Sockets))
		})
	}
}

func TestOverlaps(t *testing.T) {
	a := netip.MustParseAddr
	for _, c := range []struct {
		x      string
		v6only bool
		y      string
		yV6    census.V6Only
		want   bool
	}{
		{"127.0.0.1", false, "127.0.0.1", 0, true},
		{"127.0.0.1", false, "127.0.0.2", 0, false},
		{"0.0.0.0", false, "127.0.0.1", 0, true},
		{"127.0.0.1", false, "0.0.0.0", 0, true},
		{"0.0.0.0", false, "::1", 0, false},
		{"0.0.0.0", false, "::", census.V6OnlyUnknown, true},
		{"0.0.0.0", false, "::", census.V6OnlyOff, true},
		{"0.0.0.0", false, "::", census.V6OnlyOn, false},
		{"::", false, "127.0.0.1", 0, true},
		{"::", true, "127.0.0.1", 0, false},
		{"::", true, "::1", 0, true},
		{"::", false, "::1", 0, true},
		{"::1", false, "::", 0, true},
		{"127.0.0.1", false, "::", census.V6OnlyUnknown, true},
		{"127.0.0.1", false, "::", census.V6OnlyOn, false},
		{"::ffff:127.0.0.1", false, "127.0.0.1", 0, true},
		{"::1", false, "127.0.0.1", 0, false},
	} {
		s := Socket{Local: netip.AddrPortFrom(a(c.y), 1), V6Only: c.yV6}
		assert.Equal(t, c.want, overlaps(a(c.x), c.v6only, s), "%s (v6only %v) ~ %s (%v)", c.x, c.v6only, c.y, c.yV6)
	}
}

// TestOverlaps_MatchesKernel binds a socket, then another on the same port,
// neither listening and neither with SO_REUSEADDR, for every pair of the
// kinds of local address there are; overlaps must say "in the way" exactly
// when the kernel refuses the second bind, told what the census shows of
// the first.
func TestOverlaps_MatchesKernel(t *testing.T) {
	type end struct {
		host   string
		v6only bool
	}
	ends := []end{{"127.0.0.1", false}, {"127.0.0.2", false}, {"0.0.0.0", false}}
	if hosts(t)["tcp6"] != "" {
		ends = append(ends, end{"::1", true}, end{"::", true}, end{"::", false}, end{"::ffff:127.0.0.1", false}, end{"::ffff:127.0.0.2", false})
	}
	for _, first := range ends {
		for _, second := range ends {
			for try := 0; ; try++ {
				require.Less(t, try, 10, "a port stayed busy with other sockets")
				// Below the ephemeral range, where no client socket (the
				// load tests leave thousands in TIME_WAIT) and no port 0
				// of another test lands.
				addr, err := leaveBound(t, first.host, first.v6only, 20000+rand.IntN(12000))
				if errors.Is(err, unix.EADDRINUSE) {
					continue
				}
				require.NoError(t, err)
				p := netip.MustParseAddrPort(addr).Port()
				_, err = leaveBound(t, second.host, second.v6only, int(p))
				refused := errors.Is(err, unix.EADDRINUSE)
				require.True(t, err == nil || refused, "%v", err)
				// Only this test's two bound sockets may be on the port, or
				// another could have refused the second bind: a connection
				// of another test, even of this process, on an ephemeral
				// port.
				socks, err := Sockets(int(p))
				require.NoError(t, err)
				mine := []netip.AddrPort{netip.MustParseAddrPort(addr), netip.AddrPortFrom(netip.MustParseAddr(second.host), p)}
				i := slices.IndexFunc(socks, func(s Socket) bool {
					return s.PID != os.Getpid() || s.State != StateClose || !slices.Contains(mine, s.Local)
				})
				if i >= 0 {
					t.Logf("port %d is in use by another socket, try again: %+v", p, socks[i])
					continue
				}
				i = slices.IndexFunc(socks, func(s Socket) bool { return s.Local == netip.MustParseAddrPort(addr) })
				require.GreaterOrEqual(t, i, 0, "the first socket is in the table: %+v", socks)
				sock := socks[i]
				assert.Equal(t, refused, overlaps(netip.MustParseAddr(second.host), second.v6only, sock),
					"[%s] (v6only %v) then [%s] (v6only %v): kernel refused %v", first.host, first.v6only, second.host, second.v6only, refused)
				break
			}
		}
	}
}

// TestFailedAddr: the diagnosis takes the address from the stdlib's error,
// as Go resolved and bound it.
func TestFailedAddr(t *testing.T) {
	tcp := func(ip string, port int) *net.TCPAddr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: port} }
	for _, c := range []struct {
		op   *net.OpError
		want string
	}{
		{&net.OpError{Op: "listen", Net: "tcp", Addr: &net.TCPAddr{Port: 8080}}, "[::]:8080"},
		{&net.OpError{Op: "listen", Net: "tcp", Addr: tcp("0.0.0.0", 8080)}, "[::]:8080"},
		{&net.OpError{Op: "listen", Net: "tcp4", Addr: &net.TCPAddr{Port: 8080}}, "0.0.0.0:8080"},
		{&net.OpError{Op: "listen", Net: "tcp4", Addr: tcp("127.0.0.1", 80)}, "127.0.0.1:80"},
		{&net.OpError{Op: "listen", Net: "tcp6", Addr: tcp("::1", 80)}, "[::1]:80"},
		{&net.OpError{Op: "listen", Net: "udp4", Addr: &net.UDPAddr{Port: 53}}, "0.0.0.0:53"},
		{&net.OpError{Op: "dial", Net: "tcp4", Source: tcp("127.0.0.1", 99), Addr: tcp("127.0.0.1", 80)}, "127.0.0.1:99"},
		{&net.OpError{Op: "listen", Net: "unix", Addr: &net.UnixAddr{Name: "/x"}}, "invalid AddrPort"},
	} {
		assert.Equal(t, c.want, failedAddr(fmt.Errorf("wrapped: %w", c.op)).String(), "%v", c.op)
	}
	assert.Equal(t, "invalid AddrPort", failedAddr(errors.New("no OpError")).String())
}

// TestREADME_Messages makes, for real, each situation whose message
// README.md shows under "Real messages from the tests", and compares the
// messages, with ports, PIDs and paths made the same, with README's. When
// they differ it prints the lines to paste.
func TestREADME_Messages(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("README shows root's view")
	}
	// normal replaces the words of a message that differ from run to run.
	normal := func(msg string, words map[string]string) string {
		for from, to := range words {
			msg = regexp.MustCompile(`\b`+regexp.QuoteMeta(from)+`\b`).ReplaceAllString(msg, to)
		}
		return msg
	}
	portOf := func(addr string) string { return strconv.Itoa(int(netip.MustParseAddrPort(addr).Port())) }
	tcp := func(addr string, opts ...Option) string {
		_, err := Listen("tcp4", addr, opts...)
		return normal(requireAddrInUse(t, err).Error(), map[string]string{portOf(addr): "8080", strconv.Itoa(os.Getpid()): "4242"})
	}
	var got []string
	pid, p := childListener(t, os.Args[0], -1, "nginx")
	addr := hostPort("127.0.0.1", p)
	got = append(got, normal(tcp(addr), map[string]string{strconv.Itoa(pid): "4242"}))
	got = append(got, tcp(leaveServerFirst(t, false, true)))
	got = append(got, tcp(leaveServerFirst(t, true, true), WithReuseAddr(false)))
	got = append(got, tcp(leaveServerFirst(t, true, false), WithReuseAddr(false)))
	ln, err := listenTCP(t, "tcp4", "127.0.0.1:0", false, WithReuseAddr(false))
	require.NoError(t, err)
	pair(t, ln)
	require.NoError(t, ln.Close())
	got = append(got, tcp(ln.Addr().String()))
	path := filepath.Join(t.TempDir(), "app.sock")
	live, err := Listen("unix", path)
	require.NoError(t, err)
	defer live.Close()
	_, err = Listen("unix", path)
	got = append(got, strings.ReplaceAll(requireAddrInUse(t, err).Error(), path, "/run/app.sock"))

	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	_, block, ok := strings.Cut(string(readme), "Real messages from the tests")
	require.True(t, ok, "README.md has no \"Real messages from the tests\"")
	_, block, _ = strings.Cut(block, "```\n")
	block, _, _ = strings.Cut(block, "```")
	if want := strings.Split(strings.TrimSuffix(block, "\n"), "\n"); !assert.Equal(t, want, got) {
		t.Errorf("README.md's messages differ from the tests'; paste these:\n%s", strings.Join(got, "\n"))
	}
}
