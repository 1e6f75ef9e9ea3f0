package reuse

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// censusLoopbacks are the addresses the census tests listen on. ::1 is
// skipped where the host has no IPv6 loopback.
var censusLoopbacks = []struct {
	name, network string
	addr          netip.Addr
}{
	{"tcp4", "tcp4", netip.MustParseAddr("127.0.0.1")},
	{"tcp6", "tcp6", netip.MustParseAddr("::1")},
}

// censusForEachLoopback runs f once per loopback address, as a subtest.
func censusForEachLoopback(t *testing.T, f func(t *testing.T, network string, addr netip.Addr)) {
	for _, lb := range censusLoopbacks {
		t.Run(lb.name, func(t *testing.T) {
			if lb.addr.Is6() {
				censusNeedIPv6(t)
			}
			f(t, lb.network, lb.addr)
		})
	}
}

// censusNeedIPv6 skips the test when ::1 cannot be listened on.
func censusNeedIPv6(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	ln.Close()
}

// censusListen opens a plain TCP (not MPTCP) listener on addr, port 0, closed
// when the test ends, and returns it with its local address.
func censusListen(t testing.TB, network string, addr netip.Addr) (*net.TCPListener, netip.AddrPort) {
	t.Helper()
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), network, netip.AddrPortFrom(addr, 0).String())
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener), netip.AddrPortFrom(addr, uint16(ln.Addr().(*net.TCPAddr).Port))
}

// censusConnect dials ln n times and accepts each connection. All of them
// are closed when the test ends, if the test has not closed them itself.
func censusConnect(t testing.TB, ln *net.TCPListener, n int) (clients, servers []*net.TCPConn) {
	t.Helper()
	var d net.Dialer
	d.SetMultipathTCP(false)
	for range n {
		c, err := d.Dial(ln.Addr().Network(), ln.Addr().String())
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		s, err := ln.AcceptTCP()
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		clients = append(clients, c.(*net.TCPConn))
		servers = append(servers, s)
	}
	return clients, servers
}

// censusWait polls Sockets every 5 ms until ok holds of the sockets whose
// local address is local, and returns those, or fails the test after 2 s.
// The kernel's table changes state asynchronously after a Close, even on
// loopback.
func censusWait(t testing.TB, local netip.AddrPort, what string, ok func([]Socket) bool) []Socket {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		socks, err := Sockets(int(local.Port()))
		require.NoError(t, err)
		mine := censusAt(socks, local)
		if ok(mine) {
			return mine
		}
		if time.Now().After(deadline) {
			require.FailNowf(t, "timed out", "waiting 2s for %s on %v; last table for the port:\n%s", what, local, censusFormat(socks))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// censusAt returns the sockets whose local address is local. A test must not
// look at the whole port: the same port number can be in use on another
// address at the same time, by an earlier test's TIME_WAIT on 127.0.0.1
// while this test listens on [::1], or by a client's ephemeral port.
func censusAt(socks []Socket, local netip.AddrPort) []Socket {
	var mine []Socket
	for _, s := range socks {
		if s.Local == local {
			mine = append(mine, s)
		}
	}
	return mine
}

// censusCounts counts socks by state.
func censusCounts(socks []Socket) map[State]int {
	m := make(map[State]int)
	for _, s := range socks {
		m[s.State]++
	}
	return m
}

// censusHas returns a condition that holds when the table has exactly want.
func censusHas(want map[State]int) func([]Socket) bool {
	return func(socks []Socket) bool {
		got := censusCounts(socks)
		if len(got) != len(want) {
			return false
		}
		for st, n := range want {
			if got[st] != n {
				return false
			}
		}
		return true
	}
}

func censusFormat(socks []Socket) string {
	var b strings.Builder
	for _, s := range socks {
		fmt.Fprintf(&b, "  %-11v %v -> %v uid=%d inode=%d pid=%d %q\n", s.State, s.Local, s.Remote, s.UID, s.Inode, s.PID, s.Command)
	}
	return b.String()
}

// censusAddrs returns the local (or remote) addresses of conns.
func censusAddrs(conns []*net.TCPConn, local bool) map[netip.AddrPort]bool {
	m := make(map[netip.AddrPort]bool)
	for _, c := range conns {
		a := c.RemoteAddr()
		if local {
			a = c.LocalAddr()
		}
		ap := a.(*net.TCPAddr).AddrPort()
		m[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())] = true
	}
	return m
}

func censusSelfComm(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/comm")
	require.NoError(t, err)
	return strings.TrimSuffix(string(b), "\n")
}

// censusCloseOrder leaves, on ln's port: one ESTABLISHED connection, one
// FIN_WAIT2 (server closed, client did not) and two TIME_WAIT (server closed
// first, then the client), next to the LISTEN socket.
func censusCloseOrder(t testing.TB, ln *net.TCPListener, local netip.AddrPort) []Socket {
	t.Helper()
	clients, servers := censusConnect(t, ln, 4)
	for _, i := range []int{0, 1, 2} {
		require.NoError(t, servers[i].Close())
	}
	censusWait(t, local, "3 FIN_WAIT2", func(s []Socket) bool { return censusCounts(s)[StateFinWait2] == 3 })
	for _, i := range []int{0, 1} {
		require.NoError(t, clients[i].Close())
	}
	return censusWait(t, local, "LISTEN, ESTABLISHED, FIN_WAIT2 and 2 TIME_WAIT", censusHas(map[State]int{
		StateListen: 1, StateEstablished: 1, StateFinWait2: 1, StateTimeWait: 2,
	}))
}

func TestSocketsListener(t *testing.T) {
	censusForEachLoopback(t, func(t *testing.T, network string, addr netip.Addr) {
		_, local := censusListen(t, network, addr)
		socks := censusWait(t, local, "the listener", func(s []Socket) bool { return len(s) == 1 })
		s := socks[0]
		assert.Equal(t, StateListen, s.State)
		assert.Equal(t, local, s.Local)
		unspecified := netip.IPv4Unspecified()
		if addr.Is6() {
			unspecified = netip.IPv6Unspecified()
		}
		assert.Equal(t, netip.AddrPortFrom(unspecified, 0), s.Remote)
		assert.Equal(t, uint32(os.Getuid()), s.UID)
		assert.NotZero(t, s.Inode)
		assert.Equal(t, os.Getpid(), s.PID)
		assert.Equal(t, censusSelfComm(t), s.Command)
	})
}

func TestSocketsEstablished(t *testing.T) {
	const n = 5
	censusForEachLoopback(t, func(t *testing.T, network string, addr netip.Addr) {
		ln, local := censusListen(t, network, addr)
		clients, _ := censusConnect(t, ln, n)
		socks := censusWait(t, local, "the listener and its connections", censusHas(map[State]int{
			StateListen: 1, StateEstablished: n,
		}))
		all, err := Sockets(int(local.Port()))
		require.NoError(t, err)
		peers := censusAddrs(clients, true)
		for _, s := range all {
			assert.Equal(t, local.Port(), s.Local.Port(), "the kernel filtered by local port")
			assert.False(t, peers[s.Local], "a client's own socket %v leaked in", s.Local)
		}
		for _, s := range socks {
			assert.NotZero(t, s.Inode)
			assert.Equal(t, os.Getpid(), s.PID)
			if s.State == StateEstablished {
				assert.True(t, peers[s.Remote], "remote %v is one of our clients", s.Remote)
				delete(peers, s.Remote)
			}
		}
		assert.Empty(t, peers, "every client is seen once")
	})
}

func TestSocketsTimeWait(t *testing.T) {
	const n = 5
	censusForEachLoopback(t, func(t *testing.T, network string, addr netip.Addr) {
		ln, local := censusListen(t, network, addr)
		clients, servers := censusConnect(t, ln, n)
		for _, s := range servers {
			require.NoError(t, s.Close())
		}
		censusWait(t, local, "server sides in FIN_WAIT2", censusHas(map[State]int{StateListen: 1, StateFinWait2: n}))
		for _, c := range clients {
			require.NoError(t, c.Close())
		}
		socks := censusWait(t, local, "server sides in TIME_WAIT", censusHas(map[State]int{StateListen: 1, StateTimeWait: n}))
		peers := censusAddrs(clients, true)
		for _, s := range socks {
			if s.State != StateTimeWait {
				continue
			}
			assert.True(t, peers[s.Remote], "remote %v is one of our clients", s.Remote)
			assert.Zero(t, s.UID, "TIME_WAIT has no owner")
			assert.Zero(t, s.Inode, "TIME_WAIT has no inode")
			assert.Zero(t, s.PID)
			assert.Empty(t, s.Command)
		}
	})
}

// censusKey is what netlink and /proc both report about a socket.
type censusKey struct {
	Local, Remote netip.AddrPort
	State         State
	UID           uint32
	Inode         uint64
}

func censusKeys(socks []Socket) []censusKey {
	keys := make([]censusKey, 0, len(socks))
	for _, s := range socks {
		keys = append(keys, censusKey{s.Local, s.Remote, s.State, s.UID, s.Inode})
	}
	return keys
}

func TestSocketsNetlinkMatchesProc(t *testing.T) {
	censusForEachLoopback(t, func(t *testing.T, network string, addr netip.Addr) {
		ln, local := censusListen(t, network, addr)
		censusCloseOrder(t, ln, local)
		nl, err := socketsNetlink(local.Port())
		require.NoError(t, err, "netlink sock_diag must work here, or the fallback hides a bug")
		pr, err := socketsProc(local.Port())
		require.NoError(t, err)
		nl, pr = censusAt(nl, local), censusAt(pr, local)
		assert.Len(t, nl, 5)
		assert.ElementsMatch(t, censusKeys(nl), censusKeys(pr), "netlink:\n%s/proc:\n%s", censusFormat(nl), censusFormat(pr))
	})
}

// TestSocketsIPv4Mapped checks that an IPv6 socket carrying IPv4 keeps its
// IPv4-mapped addresses. A dual-stack socket bound to ::ffff:127.0.0.1 takes
// IPv4 connections on loopback only.
func TestSocketsIPv4Mapped(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		t.Skipf("no IPv6 sockets: %v", err)
	}
	f := os.NewFile(uintptr(fd), "dual-stack listener")
	defer f.Close()
	require.NoError(t, unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0))
	mapped := netip.AddrFrom16(netip.MustParseAddr("127.0.0.1").As16())
	require.True(t, mapped.Is4In6())
	require.NoError(t, unix.Bind(fd, &unix.SockaddrInet6{Addr: mapped.As16()}))
	require.NoError(t, unix.Listen(fd, 8))
	l, err := net.FileListener(f)
	require.NoError(t, err)
	defer l.Close()
	ln := l.(*net.TCPListener)
	port := ln.Addr().(*net.TCPAddr).Port

	c, err := net.Dial("tcp4", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)).String())
	require.NoError(t, err)
	defer c.Close()
	s, err := ln.Accept()
	require.NoError(t, err)
	defer s.Close()

	local := netip.AddrPortFrom(mapped, uint16(port))
	socks := censusWait(t, local, "listener and connection", censusHas(map[State]int{StateListen: 1, StateEstablished: 1}))
	client := c.LocalAddr().(*net.TCPAddr).AddrPort()
	for _, s := range socks {
		assert.True(t, s.Local.Addr().Is4In6(), "%v kept as ::ffff:127.0.0.1, not unmapped", s.Local)
		if s.State == StateEstablished {
			assert.Equal(t, netip.AddrPortFrom(mapped, client.Port()), s.Remote)
		}
	}
	pr, err := socketsProc(uint16(port))
	require.NoError(t, err)
	assert.ElementsMatch(t, censusKeys(socks), censusKeys(censusAt(pr, local)))
}

// TestSocketsBoundInactive checks that a socket bound to the port but neither
// listening nor connected, which blocks a listener as well, is reported as
// CLOSE by kernels that can (6.8+).
func TestSocketsBoundInactive(t *testing.T) {
	var u unix.Utsname
	require.NoError(t, unix.Uname(&u))
	release := unix.ByteSliceToString(u.Release[:])
	var major, minor int
	if _, err := fmt.Sscanf(release, "%d.%d", &major, &minor); err != nil || major < 6 || major == 6 && minor < 8 {
		t.Skipf("kernel %s reports no bound-inactive sockets (6.8+)", release)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	require.NoError(t, err)
	defer unix.Close(fd)
	require.NoError(t, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	sa, err := unix.Getsockname(fd)
	require.NoError(t, err)
	port := sa.(*unix.SockaddrInet4).Port

	local := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))

	socks := censusWait(t, local, "the bound socket", func(s []Socket) bool { return len(s) == 1 })
	s := socks[0]
	assert.Equal(t, StateClose, s.State)
	assert.NotZero(t, s.Inode)
	assert.Equal(t, os.Getpid(), s.PID)

	pr, err := socketsProc(uint16(port))
	require.NoError(t, err)
	assert.Empty(t, censusAt(pr, local), "/proc/net/tcp lists no bound-inactive sockets")
}

// censusSSStates maps the state names of iproute2's ss to State.
var censusSSStates = map[string]State{
	"ESTAB":      StateEstablished,
	"SYN-SENT":   StateSynSent,
	"SYN-RECV":   StateSynRecv,
	"FIN-WAIT-1": StateFinWait1,
	"FIN-WAIT-2": StateFinWait2,
	"TIME-WAIT":  StateTimeWait,
	"UNCONN":     StateClose,
	"CLOSE-WAIT": StateCloseWait,
	"LAST-ACK":   StateLastAck,
	"LISTEN":     StateListen,
	"CLOSING":    StateClosing,
}

func TestSocketsMatchesSS(t *testing.T) {
	ss, err := exec.LookPath("ss")
	if err != nil {
		t.Skip("ss (iproute2) is not installed")
	}
	censusForEachLoopback(t, func(t *testing.T, network string, addr netip.Addr) {
		ln, local := censusListen(t, network, addr)
		socks := censusCloseOrder(t, ln, local)
		out, err := exec.Command(ss, "-tanH", "state", "all", fmt.Sprintf("( sport = :%d )", local.Port())).Output()
		require.NoError(t, err)
		got := make(map[State]int)
		for line := range strings.Lines(string(out)) {
			// State Recv-Q Send-Q Local-Address:Port Peer-Address:Port
			fields := strings.Fields(line)
			require.GreaterOrEqual(t, len(fields), 5, "ss line %q", line)
			st, ok := censusSSStates[fields[0]]
			require.True(t, ok, "unknown ss state in %q", line)
			if ap, err := netip.ParseAddrPort(fields[3]); err == nil && ap == local {
				got[st]++
			}
		}
		assert.Equal(t, censusCounts(socks), got, "ss says:\n%s", out)
	})
}

func TestSocketsPortRange(t *testing.T) {
	for _, port := range []int{0, -1, 65536, 70000} {
		socks, err := Sockets(port)
		require.Error(t, err, "port %d", port)
		assert.Nil(t, socks)
		assert.Equal(t, fmt.Sprintf("reuse: Sockets: port %d out of range 1-65535", port), err.Error())
	}
	for _, port := range []int{1, 65535} {
		_, err := Sockets(port)
		assert.NoError(t, err, "port %d", port)
	}
}

func TestStateString(t *testing.T) {
	for st, want := range map[State]string{
		StateEstablished: "ESTABLISHED",
		StateSynSent:     "SYN_SENT",
		StateSynRecv:     "SYN_RECV",
		StateFinWait1:    "FIN_WAIT1",
		StateFinWait2:    "FIN_WAIT2",
		StateTimeWait:    "TIME_WAIT",
		StateClose:       "CLOSE",
		StateCloseWait:   "CLOSE_WAIT",
		StateLastAck:     "LAST_ACK",
		StateListen:      "LISTEN",
		StateClosing:     "CLOSING",
		0:                "State(0)",
		12:               "State(12)",
		13:               "State(13)",
		255:              "State(255)",
	} {
		assert.Equal(t, want, st.String(), "State(%d)", uint8(st))
	}
	assert.Equal(t, State(1), StateEstablished, "Linux numbers ESTABLISHED 1")
	assert.Equal(t, State(10), StateListen, "Linux numbers LISTEN 10")
}

func censusOpenFDs(t testing.TB) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	return len(fds)
}

func TestSocketsNoFDLeak(t *testing.T) {
	ln, local := censusListen(t, "tcp4", netip.MustParseAddr("127.0.0.1"))
	censusConnect(t, ln, 2)
	censusWait(t, local, "listener and connections", censusHas(map[State]int{StateListen: 1, StateEstablished: 2}))

	before := censusOpenFDs(t)
	for range 100 {
		socks, err := Sockets(int(local.Port()))
		require.NoError(t, err)
		socks = censusAt(socks, local)
		require.Len(t, socks, 3)
		require.Equal(t, os.Getpid(), socks[0].PID, "the owner scan ran")
	}
	for range 10 {
		_, err := socketsProc(local.Port())
		require.NoError(t, err)
		_, err = Sockets(65535) // nothing there: no owner scan
		require.NoError(t, err)
	}
	assert.Equal(t, before, censusOpenFDs(t))
}

// The /proc/net/tcp fixtures below hold the same sockets; each 32-bit word of
// an address is printed by the kernel as a host-order integer, so the hex
// differs between little- and big-endian hosts.
const censusProcFixture = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: {lo4}:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0
   1: {lo4}:1F90 {lo4}:D431 01 00000000:00000000 00:00000000 00000000  1000        0 4243 1 0000000000000000 20 4 30 10 -1
   2: {lo4}:1F90 {lo4}:D432 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
   3: {lo4}:D431 {lo4}:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 4244 1 0000000000000000 20 4 30 10 -1
   4: {lo4}:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4245 1 0000000000000000 100 0 0 10 0
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: {lo6}:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5000 1 0000000000000000 100 0 0 10 0
   1: {mapped}:1F90 {mapped}:D433 01 00000000:00000000 00:00000000 00000000  1000        0 5001 1 0000000000000000 20 4 30 10 -1
   2: {doc1}:1F90 {doc2}:FFFF 08 00000000:00000000 00:00000000 00000000 65534        0 5002 1 0000000000000000 20 4 30 10 -1
   3: {doc1}:0050 {doc2}:1F90 01 00000000:00000000 00:00000000 00000000 65534        0 5003 1 0000000000000000 20 4 30 10 -1
`

func censusFixture() string {
	little := binary.NativeEndian.Uint16([]byte{1, 0}) == 1
	if little {
		return strings.NewReplacer(
			"{lo4}", "0100007F",
			"{lo6}", "00000000000000000000000001000000",
			"{mapped}", "0000000000000000FFFF00000100007F",
			"{doc1}", "B80D0120000000000000000001000000",
			"{doc2}", "B80D0120000000000000000002000000",
		).Replace(censusProcFixture)
	}
	return strings.NewReplacer(
		"{lo4}", "7F000001",
		"{lo6}", "00000000000000000000000000000001",
		"{mapped}", "00000000000000000000FFFF7F000001",
		"{doc1}", "20010DB8000000000000000000000001",
		"{doc2}", "20010DB8000000000000000000000002",
	).Replace(censusProcFixture)
}

func TestSocketsProcParser(t *testing.T) {
	ap := netip.MustParseAddrPort
	socks, err := parseProcNetTCP(strings.NewReader(censusFixture()), 8080, nil)
	require.NoError(t, err)
	assert.Equal(t, []Socket{
		{Local: ap("127.0.0.1:8080"), Remote: ap("0.0.0.0:0"), State: StateListen, UID: 1000, Inode: 4242},
		{Local: ap("127.0.0.1:8080"), Remote: ap("127.0.0.1:54321"), State: StateEstablished, UID: 1000, Inode: 4243},
		{Local: ap("127.0.0.1:8080"), Remote: ap("127.0.0.1:54322"), State: StateTimeWait},
		{Local: ap("[::1]:8080"), Remote: ap("[::]:0"), State: StateListen, UID: 1000, Inode: 5000},
		{Local: ap("[::ffff:127.0.0.1]:8080"), Remote: ap("[::ffff:127.0.0.1]:54323"), State: StateEstablished, UID: 1000, Inode: 5001},
		{Local: ap("[2001:db8::1]:8080"), Remote: ap("[2001:db8::2]:65535"), State: StateCloseWait, UID: 65534, Inode: 5002},
	}, socks)

	socks, err = parseProcNetTCP(strings.NewReader(censusFixture()), 80, nil)
	require.NoError(t, err)
	require.Len(t, socks, 1)
	assert.Equal(t, ap("[2001:db8::1]:80"), socks[0].Local)

	socks, err = parseProcNetTCP(strings.NewReader(censusFixture()), 9, nil)
	require.NoError(t, err)
	assert.Empty(t, socks)

	for _, bad := range []string{
		"   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000",      // too few fields
		"   0: 0100007F1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 1",   // no port
		"   0: 0100007:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 1",   // 7 hex digits
		"   0: 0100007F:1F90 0000000G:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 1",  // not hex
		"   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  x 0 1",     // uid
		"   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 -",  // inode
		"   0: 0100007F:11F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 1", // port > 16 bits
	} {
		_, err := parseProcNetTCP(strings.NewReader(bad), 0x1F90, nil)
		assert.Error(t, err, "%q", bad)
	}
}

// censusNlmsg builds one netlink message.
func censusNlmsg(typ uint16, seq uint32, payload []byte) []byte {
	b := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(payload)+unix.NLMSG_ALIGNTO)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(unix.SizeofNlMsghdr+len(payload)))
	ne.PutUint16(b[4:], typ)
	ne.PutUint32(b[8:], seq)
	b = append(b, payload...)
	for len(b)%unix.NLMSG_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

func TestSocketsParseDiag(t *testing.T) {
	ne := binary.NativeEndian
	msg := make([]byte, sizeofInetDiagMsg)
	msg[0], msg[1] = unix.AF_INET6, byte(StateListen)
	binary.BigEndian.PutUint16(msg[4:], 8080) // ports are big-endian
	copy(msg[8:], netip.MustParseAddr("::ffff:127.0.0.1").AsSlice())
	ne.PutUint32(msg[64:], 1000) // uid
	ne.PutUint32(msg[68:], 4242) // inode

	errMsg := func(errno unix.Errno) []byte {
		p := make([]byte, unix.SizeofNlMsgerr)
		ne.PutUint32(p, uint32(-int32(errno)))
		return p
	}
	var dgram []byte
	dgram = append(dgram, censusNlmsg(unix.SOCK_DIAG_BY_FAMILY, 1, msg)...)
	dgram = append(dgram, censusNlmsg(unix.SOCK_DIAG_BY_FAMILY, 7, msg)...) // another request's: ignored
	dgram = append(dgram, censusNlmsg(unix.NLMSG_DONE, 1, make([]byte, 4))...)
	socks, done, err := parseDiag(dgram, 1, nil)
	require.NoError(t, err)
	assert.True(t, done)
	assert.Equal(t, []Socket{{
		Local:  netip.MustParseAddrPort("[::ffff:127.0.0.1]:8080"),
		Remote: netip.MustParseAddrPort("[::]:0"),
		State:  StateListen, UID: 1000, Inode: 4242,
	}}, socks)

	_, done, err = parseDiag(censusNlmsg(unix.SOCK_DIAG_BY_FAMILY, 1, msg), 1, nil)
	require.NoError(t, err)
	assert.False(t, done, "a dump goes on until NLMSG_DONE")

	_, _, err = parseDiag(censusNlmsg(unix.NLMSG_ERROR, 1, errMsg(unix.EINVAL)), 1, nil)
	assert.ErrorIs(t, err, unix.EINVAL)

	_, _, err = parseDiag(censusNlmsg(unix.NLMSG_DONE, 1, errMsg(unix.ENOBUFS)[:4]), 1, nil)
	assert.ErrorIs(t, err, unix.ENOBUFS)

	_, _, err = parseDiag(censusNlmsg(unix.SOCK_DIAG_BY_FAMILY, 1, msg[:40]), 1, nil)
	assert.Error(t, err, "truncated inet_diag_msg")

	bad := censusNlmsg(unix.SOCK_DIAG_BY_FAMILY, 1, msg)
	ne.PutUint32(bad, uint32(len(bad)+4))
	_, _, err = parseDiag(bad, 1, nil)
	assert.Error(t, err, "length past the datagram")
}
