package reuse

import (
	"context"
	"errors"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/safelisten/reuse/internal/census"
)

// Sockets returns every TCP socket on port, on any local address, with
// its owner: the whole census, not the bounded one a failed bind reads.
func Sockets(port int) ([]Socket, error) {
	t, err := census.Read(census.Query{Port: uint16(port), Keep: 1 << 20, Owners: true})
	return t.Sockets, err
}

var mptcpOK = sync.OnceValue(func() bool {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_MPTCP)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
})

// protocols returns the listener protocols to test: plain TCP, and MPTCP
// where the kernel has it.
func protocols() map[string]bool {
	p := map[string]bool{"tcp": false}
	if mptcpOK() {
		p["mptcp"] = true
	}
	return p
}

// listenTCP listens as Listen does with opts, choosing MPTCP or plain TCP,
// and checks with SO_PROTOCOL that the kernel gave the protocol asked for.
func listenTCP(t *testing.T, network, addr string, mptcp bool, opts ...Option) (*net.TCPListener, error) {
	t.Helper()
	lc := ListenConfig(opts...)
	lc.SetMultipathTCP(mptcp)
	var tl *net.TCPListener
	// Port 0 may hand out a port whose number an earlier test's client used
	// and left in TIME_WAIT; take another, so the port's census is ours.
	for try := 0; ; try++ {
		ln, err := lc.Listen(context.Background(), network, addr)
		if err != nil {
			return nil, err
		}
		tl = ln.(*net.TCPListener)
		if !strings.HasSuffix(addr, ":0") || len(states(t, port(tl.Addr()), nil)) == 0 || try == 20 {
			break
		}
		defer tl.Close()
	}
	t.Cleanup(func() { tl.Close() })
	want := unix.IPPROTO_TCP
	if mptcp {
		want = unix.IPPROTO_MPTCP
	}
	require.Equal(t, want, getInt(t, tl, unix.SOL_SOCKET, unix.SO_PROTOCOL), "SO_PROTOCOL")
	return tl, nil
}

func getInt(t *testing.T, c syscall.Conn, level, opt int) int {
	t.Helper()
	rc, err := c.SyscallConn()
	require.NoError(t, err)
	var v int
	var serr error
	require.NoError(t, rc.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), level, opt) }))
	require.NoError(t, serr)
	return v
}

func getLinger(t *testing.T, c syscall.Conn) unix.Linger {
	t.Helper()
	rc, err := c.SyscallConn()
	require.NoError(t, err)
	var l *unix.Linger
	var serr error
	require.NoError(t, rc.Control(func(fd uintptr) { l, serr = unix.GetsockoptLinger(int(fd), unix.SOL_SOCKET, unix.SO_LINGER) }))
	require.NoError(t, serr)
	return *l
}

// states counts the kernel's TCP sockets on a local port by state, leaving
// out listeners. With c, it counts only the sockets of c's four-tuple: an
// ephemeral port can hold other tests' TIME_WAITs.
func states(t *testing.T, port int, c net.Conn) map[State]int {
	t.Helper()
	socks, err := Sockets(port)
	require.NoError(t, err)
	m := map[State]int{}
	for _, s := range socks {
		if s.State == StateListen {
			continue
		}
		if c != nil && (!sameAddr(s.Local, c.LocalAddr()) || !sameAddr(s.Remote, c.RemoteAddr())) {
			continue
		}
		m[s.State]++
	}
	return m
}

func sameAddr(a netip.AddrPort, b net.Addr) bool {
	ap := b.(*net.TCPAddr).AddrPort()
	return a.Addr().Unmap() == ap.Addr().Unmap() && a.Port() == ap.Port()
}

// waitStates polls the kernel's table until port (or only c's four-tuple on
// it, with c) shows exactly want, or fails after a deadline. Loopback states
// appear at once, but FIN_WAIT1 can last tens of milliseconds after data was
// sent.
func waitStates(t *testing.T, port int, c net.Conn, want map[State]int) {
	t.Helper()
	var got map[State]int
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if got = states(t, port, c); maps.Equal(got, want) {
			return
		}
	}
	require.Equal(t, want, got, "TCP states on local port %d", port)
}

// fds counts this process's open file descriptors.
func fds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	return len(ents)
}

// noLeak runs fn and checks that it left the fd count as it found it. fn
// runs once before counting so that lazily created fds (the netpoller's)
// exist already.
func noLeak(t *testing.T, fn func()) {
	t.Helper()
	fn()
	before := fds(t)
	fn()
	require.Equal(t, before, fds(t), "open fds before and after")
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

// helperCmd returns a command that runs only the helper test name of the
// test binary bin, with env added to this process's environment. The child
// is told not to sleep at exit, as a race-built binary otherwise does for a
// second.
func helperCmd(ctx context.Context, bin, name string, env ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, bin, "-test.run=^"+name+"$")
	cmd.Env = append(os.Environ(), append(env, "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")...)
	return cmd
}
