package reuse

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// outOfFDsEnv names the directory the child of
// TestListen_OutOfFileDescriptors works in.
const outOfFDsEnv = "REUSE_HELPER_OUT_OF_FDS"

// TestHelperOutOfFDs is not a test: it is the child process of
// TestListen_OutOfFileDescriptors, which runs it with a low RLIMIT_NOFILE of
// its own, so that the parent's tests keep their descriptors.
func TestHelperOutOfFDs(t *testing.T) {
	dir := os.Getenv(outOfFDsEnv)
	if dir == "" {
		t.Skip("child process only")
	}
	// The netpoller's epoll and event descriptors are made by the first
	// network call and kept: make them before counting.
	warm, err := Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	require.NoError(t, warm.Close())

	stalePath := filepath.Join(dir, "stale.sock")
	stale(t, "unix", stalePath)
	rst, err := Listen("tcp4", "127.0.0.1:0", WithRSTOnClose())
	require.NoError(t, err)
	defer rst.Close()
	client, err := net.DialTimeout("tcp4", rst.Addr().String(), 2*time.Second)
	require.NoError(t, err)
	defer client.Close()

	require.NoError(t, rst.(*net.TCPListener).SetDeadline(time.Now().Add(10*time.Second)))
	before := fds(t)
	var lim unix.Rlimit
	require.NoError(t, unix.Getrlimit(unix.RLIMIT_NOFILE, &lim))
	low := lim
	low.Cur = uint64(before + 32)
	require.NoError(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &low))
	defer func() { require.NoError(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)) }()

	// exhaust opens descriptors until the kernel refuses one, then closes
	// free of them again; release closes the rest.
	var filler []int
	exhaust := func(free int) {
		for range 1000 {
			fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				require.ErrorIs(t, err, unix.EMFILE)
				break
			}
			filler = append(filler, fd)
		}
		require.Greater(t, len(filler), free, "the limit was reached")
		for range free {
			require.NoError(t, unix.Close(filler[len(filler)-1]))
			filler = filler[:len(filler)-1]
		}
	}
	release := func() {
		for _, fd := range filler {
			require.NoError(t, unix.Close(fd))
		}
		filler = nil
	}

	for _, c := range []struct {
		name string
		free int // descriptors left free
		// inUse: the bind's EADDRINUSE is the error, and the check for a
		// stale socket that ran out of descriptors is in its message.
		inUse bool
		call  func() (interface{ Close() error }, error)
	}{
		{"tcp4", 0, false, func() (interface{ Close() error }, error) { return Listen("tcp4", "127.0.0.1:0") }},
		{"tcp4 WithRSTOnClose", 0, false, func() (interface{ Close() error }, error) {
			return Listen("tcp4", "127.0.0.1:0", WithRSTOnClose(), WithReuseAddr(false))
		}},
		{"tcp dual-stack", 0, false, func() (interface{ Close() error }, error) { return Listen("tcp", ":0") }},
		{"udp4", 0, false, func() (interface{ Close() error }, error) { return ListenPacket("udp4", "127.0.0.1:0") }},
		{"unix", 0, false, func() (interface{ Close() error }, error) {
			return Listen("unix", filepath.Join(dir, "a.sock"))
		}},
		{"unix stale path, no fd for the check", 1, true, func() (interface{ Close() error }, error) { return Listen("unix", stalePath) }},
		{"Accept with RST-on-close", 0, false, func() (interface{ Close() error }, error) { return rst.Accept() }},
	} {
		exhaust(c.free)
		got, err := c.call()
		release()
		if got != nil {
			got.Close()
		}
		require.Error(t, err, c.name)
		if c.inUse {
			require.True(t, IsAddrInUse(err), "%s: %v", c.name, err)
			require.Contains(t, err.Error(), "too many open files", c.name)
		} else {
			require.ErrorIs(t, err, syscall.EMFILE, "%s: %v", c.name, err)
		}
		var op *net.OpError
		require.ErrorAs(t, err, &op, c.name)
		fmt.Printf("EMFILE %s: %v\n", c.name, err)
	}
	require.Equal(t, before, fds(t), "open fds before and after running out")

	// The connection that could not be accepted waited in the queue.
	require.NoError(t, rst.(*net.TCPListener).SetDeadline(time.Now().Add(2*time.Second)))
	s, err := rst.Accept()
	require.NoError(t, err, "Accept works again once descriptors are free")
	require.NoError(t, s.Close())
	fmt.Println("EMFILE done")
}

// TestListen_OutOfFileDescriptors: with no descriptor left, Listen,
// ListenPacket and Accept fail with an error for which
// errors.Is(err, syscall.EMFILE) holds, and leave no descriptor open: not
// the lock file of a unix Listen, nor the socket of a failed retry.
func TestListen_OutOfFileDescriptors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := helperCmd(ctx, os.Args[0], "TestHelperOutOfFDs", outOfFDsEnv+"="+t.TempDir())
	cmd.Args = append(cmd.Args, "-test.v")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "child:\n%s", out)
	require.Contains(t, string(out), "EMFILE done", "the child ran:\n%s", out)
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "EMFILE ") {
			t.Log(line)
		}
	}
}

// TestWithControl_FaultOnTheMPTCPAttempt: Go opens a listener as MPTCP,
// and on any error closes it and tries plain TCP, calling Control again. A
// Control that refuses only MPTCP gets a TCP listener; one that refuses both
// gets its own error back; one that refuses only TCP is never asked about
// TCP. No attempt leaves a descriptor open.
func TestWithControl_FaultOnTheMPTCPAttempt(t *testing.T) {
	if !mptcpOK() {
		t.Skip("no MPTCP in this kernel: Control runs once, on TCP")
	}
	boom := errors.New("boom")
	for name, c := range map[string]struct {
		refuse    map[int]bool // SO_PROTOCOL values Control refuses
		wantErr   bool
		wantSeen  []int
		wantProto int
	}{
		"refuses MPTCP":      {refuse: map[int]bool{unix.IPPROTO_MPTCP: true}, wantSeen: []int{unix.IPPROTO_MPTCP, unix.IPPROTO_TCP}, wantProto: unix.IPPROTO_TCP},
		"refuses both":       {refuse: map[int]bool{unix.IPPROTO_MPTCP: true, unix.IPPROTO_TCP: true}, wantErr: true, wantSeen: []int{unix.IPPROTO_MPTCP, unix.IPPROTO_TCP}},
		"refuses TCP":        {refuse: map[int]bool{unix.IPPROTO_TCP: true}, wantSeen: []int{unix.IPPROTO_MPTCP}, wantProto: unix.IPPROTO_MPTCP},
		"refuses nothing":    {wantSeen: []int{unix.IPPROTO_MPTCP}, wantProto: unix.IPPROTO_MPTCP},
		"refuses both, rst":  {refuse: map[int]bool{unix.IPPROTO_MPTCP: true, unix.IPPROTO_TCP: true}, wantErr: true, wantSeen: []int{unix.IPPROTO_MPTCP, unix.IPPROTO_TCP}},
		"refuses MPTCP, rst": {refuse: map[int]bool{unix.IPPROTO_MPTCP: true}, wantSeen: []int{unix.IPPROTO_MPTCP, unix.IPPROTO_TCP}, wantProto: unix.IPPROTO_TCP},
	} {
		for network, host := range hosts(t) {
			t.Run(name+"/"+network, func(t *testing.T) {
				var seen []int
				control := WithControl(func(_, _ string, rc syscall.RawConn) error {
					var proto int
					var serr error
					if err := rc.Control(func(fd uintptr) { proto, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL) }); err != nil {
						return err
					}
					if serr != nil {
						return serr
					}
					seen = append(seen, proto)
					if c.refuse[proto] {
						return fmt.Errorf("refusing protocol %d: %w", proto, boom)
					}
					return nil
				})
				opts := []Option{WithReuseAddr(false), control}
				if strings.HasSuffix(name, "rst") {
					opts = append(opts, WithRSTOnClose())
				}
				noLeak(t, func() {
					seen = nil
					ln, err := Listen(network, hostPort(host, 0), opts...)
					assert.Equal(t, c.wantSeen, seen, "SO_PROTOCOL of each socket Control saw")
					if c.wantErr {
						require.Nil(t, ln)
						require.ErrorIs(t, err, boom)
						var op *net.OpError
						require.ErrorAs(t, err, &op)
						assert.Contains(t, err.Error(), fmt.Sprintf("refusing protocol %d", unix.IPPROTO_TCP), "the last attempt's error")
						return
					}
					require.NoError(t, err)
					defer ln.Close()
					tl := ln.(*net.TCPListener)
					assert.Equal(t, c.wantProto, getInt(t, tl, unix.SOL_SOCKET, unix.SO_PROTOCOL))
					assert.Zero(t, getInt(t, tl, unix.SOL_SOCKET, unix.SO_REUSEADDR), "the options were set on the socket that was kept")
				})
			})
		}
	}
}

// closedListeners returns one listener of each kind Listen can return, for
// tests that close them.
func closedListeners(t *testing.T) map[string]net.Listener {
	t.Helper()
	m := map[string]net.Listener{}
	var err error
	m["tcp4"], err = Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	m["tcp4 WithRSTOnClose"], err = Listen("tcp4", "127.0.0.1:0", WithRSTOnClose())
	require.NoError(t, err)
	plain, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	// The listener Listen returns for WithRSTOnClose where accepted sockets
	// do not inherit SO_LINGER (Windows, Solaris, illumos, AIX).
	m["lingerListener"] = &lingerListener{plain.(*net.TCPListener), true}
	m["unix"], err = Listen("unix", filepath.Join(t.TempDir(), "s.sock"))
	require.NoError(t, err)
	for _, ln := range m {
		t.Cleanup(func() { ln.Close() })
	}
	return m
}

// TestAccept_OnAClosedListenerReturnsErrClosed, for every kind of listener
// Listen returns, the RST-on-close wrapper included.
func TestAccept_OnAClosedListenerReturnsErrClosed(t *testing.T) {
	for name, ln := range closedListeners(t) {
		require.NoError(t, ln.Close(), name)
		c, err := ln.Accept()
		assert.Nil(t, c, name)
		assert.ErrorIs(t, err, net.ErrClosed, name)
		if r, ok := ln.(*lingerListener); ok {
			c, err := r.AcceptTCP()
			assert.Nil(t, c)
			assert.ErrorIs(t, err, net.ErrClosed, "lingerListener.AcceptTCP")
		}
	}
}

// TestAccept_BlockedReturnsErrClosedWhenTheListenerCloses: Close wakes an
// Accept that is waiting in another goroutine, at once, with net.ErrClosed.
func TestAccept_BlockedReturnsErrClosedWhenTheListenerCloses(t *testing.T) {
	for name, ln := range closedListeners(t) {
		t.Run(name, func(t *testing.T) {
			done := make(chan error, 1)
			go acceptUntilClosed(ln, done)
			waitForGoroutine(t, "reuse.acceptUntilClosed", "[IO wait")
			start := time.Now()
			require.NoError(t, ln.Close())
			select {
			case err := <-done:
				assert.ErrorIs(t, err, net.ErrClosed)
				t.Logf("Accept returned %v after Close", time.Since(start))
			case <-time.After(2 * time.Second):
				t.Fatal("Accept still blocked 2 s after Close")
			}
		})
	}
}

// acceptUntilClosed is a named function so that waitForGoroutine can find
// it on the stack.
func acceptUntilClosed(ln net.Listener, done chan<- error) {
	c, err := ln.Accept()
	if c != nil {
		c.Close()
	}
	done <- err
}

// waitForGoroutine polls the goroutine dump until the stack of a goroutine
// running fn also shows where (a state such as "[IO wait", or a callee),
// proving that it blocks there.
func waitForGoroutine(t *testing.T, fn, where string) {
	t.Helper()
	buf := make([]byte, 1<<20)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		for _, g := range bytes.Split(buf[:runtime.Stack(buf, true)], []byte("\n\n")) {
			if bytes.Contains(g, []byte(fn)) && bytes.Contains(g, []byte(where)) {
				return
			}
		}
	}
	t.Fatalf("no goroutine in %s reached %s", fn, where)
}

// TestListenContext_AlreadyCancelled: a context cancelled before the call
// does not fail a Listen that needs no lookup, as with the stdlib's
// ListenConfig.Listen: net consults the context only while it resolves a
// name, and a unix Listen only while it waits for the lock file. Measured:
// both return a working listener.
func TestListenContext_AlreadyCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	addrs := map[string]string{"unix": filepath.Join(t.TempDir(), "s.sock"), "unixpacket": filepath.Join(t.TempDir(), "p.sock")}
	for network, host := range hosts(t) {
		addrs[network] = hostPort(host, 0)
	}
	for network, addr := range addrs {
		std, stdErr := (&net.ListenConfig{}).Listen(ctx, network, addr)
		if std != nil {
			require.NoError(t, std.Close())
		}
		ours, err := ListenContext(ctx, network, addr)
		if ours != nil {
			require.NoError(t, ours.Close())
		}
		require.Equal(t, stdErr == nil, err == nil, "%s: stdlib %v, reuse %v", network, stdErr, err)
		if stdErr != nil {
			assert.ErrorIs(t, err, context.Canceled, network)
		}
		t.Logf("%s %s with a cancelled context: stdlib %v, reuse %v", network, addr, stdErr, err)
	}
}
