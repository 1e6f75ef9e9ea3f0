package reuse

// Tests of inherited sockets from a review of the handoff: each was written
// to show a defect, and holds since it was fixed.

import (
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestListen_InheritedOneAddressAndAWildcardRequest: an inherited socket on a
// specific address holds port P. A Listen for the wildcard on P can only fail
// against it (Linux refuses a wildcard bind over a listening socket of the
// same port); as in the opposite case (specific request, wildcard
// inherited), the error names the inherited socket and the difference.
func TestListen_InheritedOneAddressAndAWildcardRequest(t *testing.T) {
	for _, network := range []string{"tcp4", "tcp"} {
		t.Run(network, func(t *testing.T) {
			sa, _ := inheritSocket(t, unix.AF_INET, unix.SOCK_STREAM, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}, false, false)
			p := sa.(*unix.SockaddrInet4).Port
			ln, err := Listen(network, ":"+strconv.Itoa(p))
			if err == nil {
				ln.Close()
			}
			require.Error(t, err, "the bind can only fail against the inherited 127.0.0.1:%d", p)
			t.Logf("error: %v", err)
			assert.ErrorContains(t, err, "the inherited socket fd ", "the error names the inherited socket")
			assert.ErrorContains(t, err, "one address, and "+strconv.Quote(network)+" asks for every address")
		})
	}
}

// TestListen_PortZeroTakesOnlyASocketMadeForPortZero: the parent made
// 127.0.0.1:P (a fixed port) and then 127.0.0.1:0 (a port the system picked).
// When the new process asks for them in the other order (servers started in
// goroutines do, at random), its ":0" must not take the socket of port P, or
// its Listen for P fails against its own listener.
func TestListen_PortZeroTakesOnlyASocketMadeForPortZero(t *testing.T) {
	lo := [4]byte{127, 0, 0, 1}
	// Port 0 here only picks a free port now: the socket is marked as one a
	// Listen for that port made.
	fixed, fixedIno := inheritSocket(t, unix.AF_INET, unix.SOCK_STREAM, &unix.SockaddrInet4{Addr: lo}, false, false)
	_, pickedIno := inheritSocket(t, unix.AF_INET, unix.SOCK_STREAM, &unix.SockaddrInet4{Addr: lo}, false, true)

	zero, err := Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer zero.Close()
	ln, err := Listen("tcp4", hostPort("127.0.0.1", fixed.(*unix.SockaddrInet4).Port))
	if err == nil {
		defer ln.Close()
	}
	t.Logf(":0 got the socket of port %d: %v", fixed.(*unix.SockaddrInet4).Port, inodeOfAny(t, zero) == fixedIno)
	require.NoError(t, err, "Listen for the fixed port")
	assert.Equal(t, fixedIno, inodeOfAny(t, ln), "the fixed port's Listen gets the fixed port's socket")
	assert.Equal(t, pickedIno, inodeOfAny(t, zero), ":0 gets the socket whose port was picked")
}

// TestListen_InheritedLingerIsReset: a socket from systemd came with
// SO_LINGER {1,0} (inherited by every accepted connection); the program does
// not ask for WithRSTOnClose, so Listen clears it.
func TestListen_InheritedLingerIsReset(t *testing.T) {
	sa, ino := inheritSocket(t, unix.AF_INET, unix.SOCK_STREAM, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}, false, false)
	inheritance.mu.Lock()
	fd := inheritance.socks[len(inheritance.socks)-1].fd
	inheritance.mu.Unlock()
	require.NoError(t, unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}))

	ln, err := Listen("tcp4", hostPort("127.0.0.1", sa.(*unix.SockaddrInet4).Port))
	require.NoError(t, err)
	defer ln.Close()
	require.Equal(t, ino, inodeOfAny(t, ln), "the inherited socket")
	assert.Equal(t, unix.Linger{}, getLinger(t, ln.(*net.TCPListener)), "no WithRSTOnClose was asked for")
}

// TestReady_ClosesASocketWhoseListenFailedMeanwhile: Ready closes the
// inherited sockets no Listen took. One that a Listen is taking at that
// moment is kept; if that Listen then fails, it is closed then.
func TestReady_ClosesASocketWhoseListenFailedMeanwhile(t *testing.T) {
	sa, ino := inheritSocket(t, unix.AF_INET, unix.SOCK_STREAM, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}, false, false)
	inheritance.mu.Lock()
	s := inheritance.socks[len(inheritance.socks)-1]
	inheritance.mu.Unlock()
	inControl, goOn := make(chan struct{}), make(chan struct{})
	done := make(chan error)
	go func() {
		_, err := Listen("tcp4", hostPort("127.0.0.1", sa.(*unix.SockaddrInet4).Port), WithControl(func(string, string, syscall.RawConn) error {
			close(inControl)
			<-goOn
			return syscall.EPERM // the caller's Control refuses it
		}))
		done <- err
	}()
	<-inControl
	closeUnclaimed() // what Ready does
	t.Cleanup(func() {
		inheritance.mu.Lock()
		inheritance.readied = false // for the tests after this one
		inheritance.mu.Unlock()
	})
	isOpen := func() bool {
		var st unix.Stat_t
		return unix.Fstat(s.fd, &st) == nil && st.Ino == ino
	}
	assert.True(t, isOpen(), "fd %d is kept while a Listen is taking it", s.fd)
	close(goOn)
	require.Error(t, <-done)
	assert.False(t, isOpen(), "fd %d, inherited and taken by no Listen, is closed after Ready", s.fd)
}

// TestUpgrade_DoesNotHandOverIPConns: no Listen can take an ip conn, so
// Upgrade does not hand one over (a raw socket left in the new process would
// queue every ICMP packet for its whole life).
func TestUpgrade_DoesNotHandOverIPConns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a raw socket needs root")
	}
	pc, err := ListenPacket("ip4:1", "127.0.0.1")
	require.NoError(t, err)
	defer pc.Close()
	ln, err := Listen("tcp4", "127.0.0.1:0") // one that is handed over
	require.NoError(t, err)
	defer ln.Close()
	hs, err := dupTracked()
	require.NoError(t, err)
	var handed []uint64
	for _, h := range hs {
		var st unix.Stat_t
		require.NoError(t, unix.Fstat(h.fd, &st))
		handed = append(handed, st.Ino)
		unix.Close(h.fd)
	}
	assert.Contains(t, handed, inodeOfAny(t, ln), "the listener is handed over")
	assert.NotContains(t, handed, inodeOfAny(t, pc), "the ip4:1 conn is not")
}

// TestListen_InheritedReusePortNotAskedForIsAnError: the inherited socket
// has SO_REUSEPORT, which a Listen without WithReusePort would not give: any
// process of this user could join its port and take a share of its
// connections. It cannot change after bind, so the Listen fails, naming it.
func TestListen_InheritedReusePortNotAskedForIsAnError(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	require.NoError(t, unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1))
	require.NoError(t, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	require.NoError(t, unix.Listen(fd, 16))
	sa, err := unix.Getsockname(fd)
	require.NoError(t, err)
	in, ok := inspect(fd)
	require.True(t, ok)
	in.from = "systemd"
	inheritance.mu.Lock()
	before := len(inheritance.socks)
	inheritance.mu.Unlock()
	addInherited(in, "")
	inheritance.mu.Lock()
	s := inheritance.socks[before]
	inheritance.mu.Unlock()
	t.Cleanup(func() { dropInherited(s) })

	addr := hostPort("127.0.0.1", sa.(*unix.SockaddrInet4).Port)
	_, err = Listen("tcp4", addr)
	require.Error(t, err, "a socket others of this user can join is not what a Listen without WithReusePort gives")
	assert.ErrorContains(t, err, "was bound with SO_REUSEPORT=1, which cannot change after bind; ask for WithReusePort(true)")
	ln, err := Listen("tcp4", addr, WithReusePort(true))
	require.NoError(t, err, "asked for, it is taken")
	ln.Close()
}

// TestMatch_WildcardWhereGoListensIPv4Only: on OpenBSD and DragonFly, Go
// never makes a dual-stack socket (net/ipsock_posix.go: those kernels refuse
// IPV6_V6ONLY=0), so net.Listen("tcp", ":P") there is an AF_INET socket on
// 0.0.0.0:P; the new process's identical Listen must take it. This runs
// match with the inputs claim gives it on those systems.
func TestMatch_WildcardWhereGoListensIPv4Only(t *testing.T) {
	w, ok := wantOf("tcp")
	require.True(t, ok)
	w.any, w.port = true, 8080
	w.noDualStack = true // dualStack() on OpenBSD and DragonFly
	s := &inherited{family: familyInet4, typ: typeStream, listening: true,
		addr: netip.MustParseAddrPort("0.0.0.0:8080")} // what Go's Listen("tcp", ":8080") made there
	ok, diff := w.match(s)
	assert.True(t, ok, "the socket the parent's Listen(%q, %q) made is taken; diff: %s", "tcp", ":8080", diff)
}
