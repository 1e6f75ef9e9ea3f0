package reuse

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
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

// TestHelperListener is not a test: it is the child process of
// TestAddrInUse_ChildProcessHoldsPort. It listens, prints its port, and
// holds the port until its stdin closes.
func TestHelperListener(t *testing.T) {
	if os.Getenv("REUSE_HELPER_LISTEN") == "" {
		t.Skip("child process only")
	}
	ln, err := net.Listen("tcp4", os.Getenv("REUSE_HELPER_LISTEN"))
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	bufio.NewReader(os.Stdin).ReadString('\n') // until the parent closes stdin
	ln.Close()
}

func TestAddrInUse_ChildProcessHoldsPort(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := helperCmd(ctx, os.Args[0], "TestHelperListener", "REUSE_HELPER_LISTEN=127.0.0.1:0")
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	defer func() { stdin.Close(); cmd.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err)
	p, err := strconv.Atoi(strings.TrimSpace(line))
	require.NoError(t, err, "child said %q", line)

	_, err = Listen("tcp4", hostPort("127.0.0.1", p))
	e := requireAddrInUse(t, err)
	assert.Equal(t, 1, e.Count(StateListen))
	assert.Contains(t, e.Error(), fmt.Sprintf("port %d is held by a LISTEN socket of pid %d (", p, cmd.Process.Pid))
	assert.Contains(t, e.Error(), "SO_REUSEADDR cannot share a live port")
	t.Log(e)
}

// TestAddrInUse_Kernel makes each state the kernel can leave on a port and
// checks the diagnosis of a bind that then fails.
func TestAddrInUse_Kernel(t *testing.T) {
	const n = 3
	// serverFirst leaves n server-closed connections on a listener's port,
	// the clients closed too (TIME_WAIT) or still open (FIN_WAIT2).
	serverFirst := func(t *testing.T, reuseAddr, clientsClose bool) *net.TCPListener {
		ln, err := listenTCP(t, "tcp4", "127.0.0.1:0", false, WithReuseAddr(reuseAddr))
		require.NoError(t, err)
		for range n {
			c, s := pair(t, ln)
			require.NoError(t, s.Close())
			readErr(t, c)
			if clientsClose {
				require.NoError(t, c.Close())
			}
		}
		want := map[State]int{StateTimeWait: n}
		if !clientsClose {
			want = map[State]int{StateFinWait2: n}
		}
		waitStates(t, port(ln.Addr()), nil, want)
		require.NoError(t, ln.Close())
		return ln
	}
	for name, c := range map[string]struct {
		setup func(t *testing.T) (addr string)
		opts  []Option
		want  []string
		count map[State]int
	}{
		"live listener of this process": {
			setup: func(t *testing.T) string {
				ln, err := listenTCP(t, "tcp4", "127.0.0.1:0", false)
				require.NoError(t, err)
				return ln.Addr().String()
			},
			want:  []string{"is held by a LISTEN socket of this process (pid " + strconv.Itoa(os.Getpid()) + ") on 127.0.0.1:", "SO_REUSEADDR cannot share a live port"},
			count: map[State]int{StateListen: 1},
		},
		"live listener, reuseport asked": {
			setup: func(t *testing.T) string {
				ln, err := listenTCP(t, "tcp4", "127.0.0.1:0", false)
				require.NoError(t, err)
				return ln.Addr().String()
			},
			opts: []Option{WithReusePort(true)},
			want: []string{"LISTEN socket", "only when every listener on it has SO_REUSEPORT"},
		},
		"TIME_WAIT of a strict listener": {
			setup: func(t *testing.T) string { return serverFirst(t, false, true).Addr().String() },
			want:  []string{fmt.Sprintf("is held by %d TIME_WAIT connections left by a listener without SO_REUSEADDR", n), "within 60 s"},
			count: map[State]int{StateTimeWait: n},
		},
		"TIME_WAIT, new listener strict": {
			setup: func(t *testing.T) string { return serverFirst(t, true, true).Addr().String() },
			opts:  []Option{WithReuseAddr(false)},
			want:  []string{fmt.Sprintf("is held by %d TIME_WAIT connections, and this socket has SO_REUSEADDR off", n)},
			count: map[State]int{StateTimeWait: n},
		},
		"FIN_WAIT2, new listener strict": {
			setup: func(t *testing.T) string { return serverFirst(t, true, false).Addr().String() },
			opts:  []Option{WithReuseAddr(false)},
			want:  []string{fmt.Sprintf("is held by %d FIN_WAIT2 connections, and this socket has SO_REUSEADDR off; the port stays busy until they close", n)},
			count: map[State]int{StateFinWait2: n},
		},
		"FIN_WAIT2 of a strict listener": {
			setup: func(t *testing.T) string { return serverFirst(t, false, false).Addr().String() },
			want:  []string{fmt.Sprintf("is held by %d FIN_WAIT2 connections, at least one without SO_REUSEADDR", n)},
		},
		"open connections of a closed listener": {
			setup: func(t *testing.T) string {
				ln, err := listenTCP(t, "tcp4", "127.0.0.1:0", false, WithReuseAddr(false))
				require.NoError(t, err)
				pair(t, ln)
				require.NoError(t, ln.Close())
				return ln.Addr().String()
			},
			want:  []string{"is held by 1 ESTABLISHED connection of this process", ", at least one without SO_REUSEADDR (from a listener"},
			count: map[State]int{StateEstablished: 1},
		},
		"bound, not listening": {
			setup: func(t *testing.T) string {
				fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				require.NoError(t, err)
				t.Cleanup(func() { unix.Close(fd) })
				require.NoError(t, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
				sa, err := unix.Getsockname(fd)
				require.NoError(t, err)
				return hostPort("127.0.0.1", sa.(*unix.SockaddrInet4).Port)
			},
			want: []string{"is held by a socket of this process (pid " + strconv.Itoa(os.Getpid()) + ") bound without listening"}, // Linux 6.8+
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
				for st, k := range c.count {
					assert.Equal(t, k, e.Count(st), st.String())
				}
			})
		})
	}
}

func TestAddrInUse_UDPAndDial(t *testing.T) {
	pc, err := ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer pc.Close()
	_, err = ListenPacket("udp4", pc.LocalAddr().String())
	e := requireAddrInUse(t, err)
	assert.Contains(t, e.Error(), "another UDP socket holds port")
	assert.Nil(t, e.Sockets, "the census is TCP only")

	ln, err := Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	_, err = Dial("tcp4", ln.Addr().String(), ln.Addr().String())
	e = requireAddrInUse(t, err)
	assert.Contains(t, e.Error(), "LISTEN socket of this process")
	assert.Equal(t, ln.Addr().String(), e.Address)
}

// TestDiagnose covers the wording for tables the kernel tests above cannot
// make on demand: other users, several listeners, wildcards.
func TestDiagnose(t *testing.T) {
	ap := netip.MustParseAddrPort
	sock := func(local string, st State, uid uint32, inode uint64, pid int, cmd string) Socket {
		return Socket{Local: ap(local), Remote: ap("127.0.0.1:5000"), State: st, UID: uid, Inode: inode, PID: pid, Command: cmd}
	}
	b := bindInfo{kind: kindTCPListen, addr: ap("127.0.0.1:8080"), reuseAddr: true}
	for name, c := range map[string]struct {
		b     bindInfo
		socks []Socket
		want  string
	}{
		"other process": {b, []Socket{sock("127.0.0.1:8080", StateListen, 33, 7, 4242, "nginx")},
			"port 8080 is held by a LISTEN socket of pid 4242 (nginx) on 127.0.0.1:8080; SO_REUSEADDR cannot share a live port"},
		"other user, hidden": {b, []Socket{sock("127.0.0.1:8080", StateListen, 33, 7, 0, "")},
			"port 8080 is held by a LISTEN socket of user 33 (its process is not visible to this user) on 127.0.0.1:8080; SO_REUSEADDR cannot share a live port"},
		"wildcard covers us": {b, []Socket{sock("0.0.0.0:8080", StateListen, 0, 7, 1, "init")},
			"port 8080 is held by a LISTEN socket of pid 1 (init) on 0.0.0.0:8080; SO_REUSEADDR cannot share a live port"},
		"dual-stack covers us": {b, []Socket{sock("[::]:8080", StateListen, 0, 7, 1, "init"), sock("[::]:8080", StateListen, 0, 8, 1, "init")},
			"port 8080 is held by a LISTEN socket of pid 1 (init) on [::]:8080 and 1 more; SO_REUSEADDR cannot share a live port"},
		"other address does not": {b, []Socket{sock("127.0.0.2:8080", StateListen, 0, 7, 1, "init")},
			"no TCP socket on port 8080 shows in the kernel's table now: its holder has gone, or is bound without listening (shown only by Linux 6.8 and later)"},
		"we are the wildcard": {bindInfo{kind: kindTCPListen, addr: ap("[::]:8080"), reuseAddr: true}, []Socket{sock("[::ffff:127.0.0.1]:8080", StateTimeWait, 0, 0, 0, "")},
			"port 8080 is held by 1 TIME_WAIT connection left by a listener without SO_REUSEADDR (a TIME_WAIT keeps its listener's setting, and both need it); TIME_WAIT ends within 60 s"},
		"mixed states": {b, []Socket{sock("127.0.0.1:8080", StateTimeWait, 0, 0, 0, ""), sock("127.0.0.1:8080", StateCloseWait, 0, 9, 77, "old"), sock("127.0.0.1:8080", StateTimeWait, 0, 0, 0, "")},
			"port 8080 is held by 2 TIME_WAIT and 1 CLOSE_WAIT connections of pid 77 (old), at least one without SO_REUSEADDR (from a listener that ran without it, an outgoing connection from this port, or a plain bind); the port stays busy until they close"},
		"TIME_WAIT and a bound socket: no claim about the TIME_WAITs": {b, []Socket{sock("127.0.0.1:8080", StateTimeWait, 0, 0, 0, ""), sock("127.0.0.2:8080", StateTimeWait, 0, 0, 0, ""), sock("0.0.0.0:8080", StateClose, 0, 5, 42, "holder")},
			"port 8080 is held by 1 TIME_WAIT connection and a socket of pid 42 (holder) bound without listening, at least one without SO_REUSEADDR (from a listener that ran without it, an outgoing connection from this port, or a plain bind); the port stays busy until they close"},
		"tcp6 is IPv6-only: IPv4 sockets are not in its way": {bindInfo{kind: kindTCPListen, addr: ap("[::]:8080"), v6only: true, reuseAddr: true}, []Socket{sock("0.0.0.0:8080", StateListen, 0, 7, 1, "init")},
			"no TCP socket on port 8080 shows in the kernel's table now: its holder has gone, or is bound without listening (shown only by Linux 6.8 and later)"},
		"strict socket, TIME_WAIT only": {bindInfo{kind: kindTCPListen, addr: ap("127.0.0.1:8080")}, []Socket{sock("127.0.0.1:8080", StateTimeWait, 0, 0, 0, "")},
			"port 8080 is held by 1 TIME_WAIT connection, and this socket has SO_REUSEADDR off; TIME_WAIT ends within 60 s"},
		"listener wins over connections": {b, []Socket{sock("127.0.0.1:8080", StateTimeWait, 0, 0, 0, ""), sock("127.0.0.1:8080", StateListen, 0, 9, 77, "new")},
			"port 8080 is held by a LISTEN socket of pid 77 (new) on 127.0.0.1:8080; SO_REUSEADDR cannot share a live port"},
	} {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, c.want, diagnose(c.b, c.socks, 1000))
		})
	}
}

func TestOverlaps(t *testing.T) {
	a := netip.MustParseAddr
	for _, c := range []struct {
		x      string
		v6only bool
		y      string
		want   bool
	}{
		{"127.0.0.1", false, "127.0.0.1", true},
		{"127.0.0.1", false, "127.0.0.2", false},
		{"0.0.0.0", false, "127.0.0.1", true},
		{"127.0.0.1", false, "0.0.0.0", true},
		{"0.0.0.0", false, "::1", false},
		{"::", false, "127.0.0.1", true},
		{"::", true, "127.0.0.1", false},
		{"::", true, "::1", true},
		{"::", false, "::1", true},
		{"::1", false, "::", true},
		{"127.0.0.1", false, "::", true},
		{"::ffff:127.0.0.1", false, "127.0.0.1", true},
		{"::1", false, "127.0.0.1", false},
	} {
		assert.Equal(t, c.want, overlaps(a(c.x), c.v6only, a(c.y)), "%s (v6only %v) ~ %s", c.x, c.v6only, c.y)
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
