package census

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// lo4 is the IPv4 address the census tests listen and dial on: their
// client sockets then take ports of 127.0.0.2, which a bind of 127.0.0.1 on
// the same port number, by a test of another package running in parallel,
// does not conflict with. All of 127/8 is loopback on Linux.
var lo4 = netip.MustParseAddr("127.0.0.2")

// censusLoopbacks are the addresses the census tests listen on. ::1, the
// only IPv6 loopback, is skipped where the host has none.
var censusLoopbacks = []struct {
	name, network string
	addr          netip.Addr
}{
	{"tcp4", "tcp4", lo4},
	{"tcp6", "tcp6", netip.MustParseAddr("::1")},
}

// loopbackDialer returns a plain TCP dialer whose sockets are bound to
// host, which picks their ports at connect, where only the four-tuple must
// be unique.
func loopbackDialer(host netip.Addr) *net.Dialer {
	d := &net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: host.AsSlice()}}
	d.SetMultipathTCP(false)
	if host.Is4() {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1) })
			return errors.Join(err, serr)
		}
	}
	return d
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
	d := loopbackDialer(ln.Addr().(*net.TCPAddr).AddrPort().Addr())
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

// readDeadline bounds the reads of tests that check what is read, not how
// soon: under -race, with another package's soak filling the host's table,
// /proc/net/tcp alone took over DefaultTimeout.
const readDeadline = 30 * time.Second

// readAll reads every socket on port, with owners, keeping all of them.
func readAll(t testing.TB, port uint16) []Socket {
	t.Helper()
	tab, err := Read(Query{Port: port, Keep: 1 << 20, Owners: true, Deadline: time.Now().Add(readDeadline)})
	require.NoError(t, err)
	require.Equal(t, tab.Total, len(tab.Sockets), "all kept")
	return tab.Sockets
}

// raw returns the sockets that read (readNetlink or readProc) reports on
// port, in its order.
func raw(t testing.TB, read func(uint16, time.Time, func(Socket)) error, port uint16) []Socket {
	t.Helper()
	var socks []Socket
	require.NoError(t, read(port, time.Now().Add(readDeadline), func(s Socket) { socks = append(socks, s) }))
	return socks
}

// censusWait polls the table every 5 ms until ok holds of the sockets whose
// local address is local, and returns those, or fails the test after 2 s.
// The kernel's table changes state asynchronously after a Close, even on
// loopback.
func censusWait(t testing.TB, local netip.AddrPort, what string, ok func([]Socket) bool) []Socket {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		socks := readAll(t, local.Port())
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
	return func(socks []Socket) bool { return maps.Equal(censusCounts(socks), want) }
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
		all := readAll(t, local.Port())
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
		nl := censusAt(raw(t, readNetlink, local.Port()), local) // must work here, or the fallback hides a bug
		pr := censusAt(raw(t, readProc, local.Port()), local)
		assert.Len(t, nl, 5)
		assert.ElementsMatch(t, censusKeys(nl), censusKeys(pr), "netlink:\n%s/proc:\n%s", censusFormat(nl), censusFormat(pr))
	})
}

// TestSocketsIPv4Mapped checks that an IPv6 socket carrying IPv4 keeps its
// IPv4-mapped addresses. A dual-stack socket bound to ::ffff:127.0.0.2 takes
// IPv4 connections on loopback only.
func TestSocketsIPv4Mapped(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		t.Skipf("no IPv6 sockets: %v", err)
	}
	f := os.NewFile(uintptr(fd), "dual-stack listener")
	defer f.Close()
	require.NoError(t, unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0))
	mapped := netip.AddrFrom16(lo4.As16())
	require.True(t, mapped.Is4In6())
	require.NoError(t, unix.Bind(fd, &unix.SockaddrInet6{Addr: mapped.As16()}))
	require.NoError(t, unix.Listen(fd, 8))
	l, err := net.FileListener(f)
	require.NoError(t, err)
	defer l.Close()
	ln := l.(*net.TCPListener)
	port := ln.Addr().(*net.TCPAddr).Port

	c, err := loopbackDialer(lo4).Dial("tcp4", netip.AddrPortFrom(lo4, uint16(port)).String())
	require.NoError(t, err)
	defer c.Close()
	s, err := ln.Accept()
	require.NoError(t, err)
	defer s.Close()

	local := netip.AddrPortFrom(mapped, uint16(port))
	socks := censusWait(t, local, "listener and connection", censusHas(map[State]int{StateListen: 1, StateEstablished: 1}))
	client := c.LocalAddr().(*net.TCPAddr).AddrPort()
	for _, s := range socks {
		assert.True(t, s.Local.Addr().Is4In6(), "%v kept as ::ffff:127.0.0.2, not unmapped", s.Local)
		if s.State == StateEstablished {
			assert.Equal(t, netip.AddrPortFrom(mapped, client.Port()), s.Remote)
		}
	}
	assert.ElementsMatch(t, censusKeys(socks), censusKeys(censusAt(raw(t, readProc, uint16(port)), local)))
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

	assert.Empty(t, censusAt(raw(t, readProc, uint16(port)), local), "/proc/net/tcp lists no bound-inactive sockets")
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

func TestReadPort0(t *testing.T) {
	tab, err := Read(Query{})
	assert.EqualError(t, err, "census: port 0")
	assert.Empty(t, tab.Sockets)
	for _, port := range []uint16{1, 65535} {
		_, err := Read(Query{Port: port})
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
	ln, local := censusListen(t, "tcp4", lo4)
	censusConnect(t, ln, 2)
	censusWait(t, local, "listener and connections", censusHas(map[State]int{StateListen: 1, StateEstablished: 2}))

	before := censusOpenFDs(t)
	for range 100 {
		socks := censusAt(readAll(t, local.Port()), local)
		require.Len(t, socks, 3)
		require.Equal(t, os.Getpid(), socks[0].PID, "the owner lookup ran")
	}
	for range 10 {
		raw(t, readProc, local.Port())
		_, err := Read(Query{Port: 65535, Owners: true}) // nothing there: no owner lookup
		require.NoError(t, err)
		_, err = Read(Query{Port: local.Port(), Deadline: time.Now().Add(-time.Second)})
		require.ErrorIs(t, err, os.ErrDeadlineExceeded)
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

// parseProc parses text as parseProcNetTCP does and returns the sockets on
// port.
func parseProc(text string, port uint16) ([]Socket, error) {
	var socks []Socket
	err := parseProcNetTCP(strings.NewReader(text), port, time.Now().Add(time.Minute), func(s Socket) { socks = append(socks, s) })
	return socks, err
}

func TestSocketsProcParser(t *testing.T) {
	ap := netip.MustParseAddrPort
	socks, err := parseProc(censusFixture(), 8080)
	require.NoError(t, err)
	assert.Equal(t, []Socket{
		{Local: ap("127.0.0.1:8080"), Remote: ap("0.0.0.0:0"), State: StateListen, UID: 1000, Inode: 4242},
		{Local: ap("127.0.0.1:8080"), Remote: ap("127.0.0.1:54321"), State: StateEstablished, UID: 1000, Inode: 4243},
		{Local: ap("127.0.0.1:8080"), Remote: ap("127.0.0.1:54322"), State: StateTimeWait},
		{Local: ap("[::1]:8080"), Remote: ap("[::]:0"), State: StateListen, UID: 1000, Inode: 5000},
		{Local: ap("[::ffff:127.0.0.1]:8080"), Remote: ap("[::ffff:127.0.0.1]:54323"), State: StateEstablished, UID: 1000, Inode: 5001},
		{Local: ap("[2001:db8::1]:8080"), Remote: ap("[2001:db8::2]:65535"), State: StateCloseWait, UID: 65534, Inode: 5002},
	}, socks)

	socks, err = parseProc(censusFixture(), 80)
	require.NoError(t, err)
	require.Len(t, socks, 1)
	assert.Equal(t, ap("[2001:db8::1]:80"), socks[0].Local)

	socks, err = parseProc(censusFixture(), 9)
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
		_, err := parseProc(bad, 0x1F90)
		assert.Error(t, err, "%q", bad)
	}

	// A socket listed twice, as a table that changes between two reads of
	// a page can list it, is one socket.
	lines := strings.SplitAfter(censusFixture(), "\n")
	twice := strings.Join(append(lines[:3], lines[2:]...), "")
	socks, err = parseProc(twice, 8080)
	require.NoError(t, err)
	assert.Len(t, socks, 6, "the repeated ESTABLISHED line is dropped")

	err = parseProcNetTCP(strings.NewReader(censusFixture()), 8080, time.Now().Add(-time.Second), func(Socket) {})
	assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
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

// censusDiagMsg builds an inet_diag_msg for a socket on port 8080 of
// family, with attrs after it.
func censusDiagMsg(family uint8, st State, local string, attrs ...[]byte) []byte {
	ne := binary.NativeEndian
	msg := make([]byte, sizeofInetDiagMsg)
	msg[0], msg[1] = family, byte(st)
	binary.BigEndian.PutUint16(msg[4:], 8080) // ports are big-endian
	copy(msg[8:], netip.MustParseAddr(local).AsSlice())
	ne.PutUint32(msg[64:], 1000) // uid
	ne.PutUint32(msg[68:], 4242) // inode
	for _, a := range attrs {
		msg = append(msg, a...)
	}
	return msg
}

// censusAttr builds one netlink attribute, padded.
func censusAttr(typ uint16, payload ...byte) []byte {
	a := binary.NativeEndian.AppendUint16(nil, uint16(unix.SizeofNlAttr+len(payload)))
	a = binary.NativeEndian.AppendUint16(a, typ)
	a = append(a, payload...)
	for len(a)%unix.NLA_ALIGNTO != 0 {
		a = append(a, 0)
	}
	return a
}

// parseDgram parses one datagram of a dump reply to request seq as
// readNetlink does.
func parseDgram(dgram []byte, seq uint32) (socks []Socket, done bool, err error) {
	done, err = eachMessage(dgram, seq, func(typ uint16, payload []byte) error {
		if typ != unix.SOCK_DIAG_BY_FAMILY {
			return nil
		}
		s, ok, err := parseDiagMsg(payload)
		if ok {
			socks = append(socks, s)
		}
		return err
	})
	return socks, done, err
}

func TestSocketsParseDiag(t *testing.T) {
	ne := binary.NativeEndian
	shutdown := censusAttr(8, 0) // INET_DIAG_SHUTDOWN, which the kernel always adds
	msg := censusDiagMsg(unix.AF_INET6, StateListen, "::ffff:127.0.0.1", shutdown)
	errMsg := func(errno unix.Errno) []byte {
		p := make([]byte, unix.SizeofNlMsgerr)
		ne.PutUint32(p, uint32(-int32(errno)))
		return p
	}
	var dgram []byte
	dgram = append(dgram, censusNlmsg(unix.SOCK_DIAG_BY_FAMILY, 1, msg)...)
	dgram = append(dgram, censusNlmsg(unix.SOCK_DIAG_BY_FAMILY, 7, msg)...) // another request's: ignored
	dgram = append(dgram, censusNlmsg(unix.NLMSG_DONE, 1, make([]byte, 4))...)
	socks, done, err := parseDgram(dgram, 1)
	require.NoError(t, err)
	assert.True(t, done)
	assert.Equal(t, []Socket{{
		Local:  netip.MustParseAddrPort("[::ffff:127.0.0.1]:8080"),
		Remote: netip.MustParseAddrPort("[::]:0"),
		State:  StateListen, UID: 1000, Inode: 4242,
	}}, socks, "no INET_DIAG_SKV6ONLY: V6OnlyUnknown")

	_, done, err = parseDgram(censusNlmsg(unix.SOCK_DIAG_BY_FAMILY, 1, msg), 1)
	require.NoError(t, err)
	assert.False(t, done, "a dump goes on until NLMSG_DONE")

	_, _, err = parseDgram(censusNlmsg(unix.NLMSG_ERROR, 1, errMsg(unix.EINVAL)), 1)
	assert.ErrorIs(t, err, unix.EINVAL)

	_, _, err = parseDgram(censusNlmsg(unix.NLMSG_DONE, 1, errMsg(unix.ENOBUFS)[:4]), 1)
	assert.ErrorIs(t, err, unix.ENOBUFS)

	_, _, err = parseDgram(censusNlmsg(unix.SOCK_DIAG_BY_FAMILY, 1, msg[:40]), 1)
	assert.Error(t, err, "truncated inet_diag_msg")

	bad := censusNlmsg(unix.SOCK_DIAG_BY_FAMILY, 1, msg)
	ne.PutUint32(bad, uint32(len(bad)+4))
	_, _, err = parseDgram(bad, 1)
	assert.Error(t, err, "length past the datagram")

	_, _, err = parseDgram(make([]byte, 8), 1)
	assert.Error(t, err, "shorter than a header")

	// INET_DIAG_SKV6ONLY, after another attribute, in either flag form.
	for v6only, want := range map[byte]V6Only{0: V6OnlyOff, 1: V6OnlyOn} {
		m := censusDiagMsg(unix.AF_INET6, StateListen, "::", shutdown, censusAttr(inetDiagSKV6Only, v6only))
		socks, _, err := parseDgram(censusNlmsg(unix.SOCK_DIAG_BY_FAMILY, 1, m), 1)
		require.NoError(t, err)
		require.Len(t, socks, 1)
		assert.Equal(t, want, socks[0].V6Only, "INET_DIAG_SKV6ONLY %d", v6only)
	}
	m := censusDiagMsg(unix.AF_INET6, StateListen, "::", append(censusAttr(inetDiagSKV6Only, 1)[:2], 0xff, 0xff))
	_, _, err = parseDgram(censusNlmsg(unix.SOCK_DIAG_BY_FAMILY, 1, m), 1)
	assert.Error(t, err, "an attribute longer than the message")
}

// TestReadV6Only: the kernel tells through netlink whether an IPv6
// listener or bound socket takes IPv4 too; /proc does not. Binding a
// specific IPv6 address makes a socket IPv6-only whatever it asked. Only
// sockets that do not listen are bound to [::] here.
func TestReadV6Only(t *testing.T) {
	censusNeedIPv6(t)
	for _, c := range []struct {
		addr   string
		v6only int
		listen bool
		want   V6Only
	}{
		{"::1", 1, true, V6OnlyOn},
		{"::1", 0, true, V6OnlyOn},
		{"::ffff:127.0.0.1", 0, true, V6OnlyOff},
		{"::", 1, false, V6OnlyOn},
		{"::", 0, false, V6OnlyOff},
	} {
		addr := netip.MustParseAddr(c.addr)
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		require.NoError(t, err)
		defer unix.Close(fd)
		require.NoError(t, unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, c.v6only))
		require.NoError(t, unix.Bind(fd, &unix.SockaddrInet6{Addr: addr.As16()}))
		if c.listen {
			require.NoError(t, unix.Listen(fd, 1))
		}
		sa, err := unix.Getsockname(fd)
		require.NoError(t, err)
		local := netip.AddrPortFrom(addr, uint16(sa.(*unix.SockaddrInet6).Port))
		socks := censusAt(readAll(t, local.Port()), local)
		if !c.listen && len(socks) == 0 {
			t.Logf("no bound-inactive sockets in this kernel's table (6.8+)")
			continue
		}
		require.Len(t, socks, 1)
		assert.Equal(t, c.want, socks[0].V6Only, "[%s] with IPV6_V6ONLY=%d, listening %v", c.addr, c.v6only, c.listen)
		if c.listen {
			pr := censusAt(raw(t, readProc, local.Port()), local)
			require.Len(t, pr, 1)
			assert.Equal(t, V6OnlyUnknown, pr[0].V6Only, "/proc does not show IPV6_V6ONLY")
		}
	}
	// A connection's address tells its family; the kernel adds nothing.
	ln, local := censusListen(t, "tcp6", netip.MustParseAddr("::1"))
	censusConnect(t, ln, 1)
	for _, s := range censusWait(t, local, "listener and connection", censusHas(map[State]int{StateListen: 1, StateEstablished: 1})) {
		if s.State == StateEstablished {
			assert.Equal(t, V6OnlyUnknown, s.V6Only)
		}
	}
}

// TestReadBounded: Read counts every matching socket but keeps at most
// Query.Keep, listeners first, even one that the kernel lists last (an IPv6
// listener comes after every IPv4 connection).
func TestReadBounded(t *testing.T) {
	censusNeedIPv6(t)
	const conns = 10
	var ln4 *net.TCPListener
	var local4, local6 netip.AddrPort
	mine := func(s Socket) bool { return s.Local == local4 || s.Local == local6 }
	// A port whose number earlier tests used on either address may still
	// hold their TIME_WAIT entries there: take another.
	for try := 0; ; try++ {
		require.Less(t, try, 20, "no port free on both %v and ::1", lo4)
		ln4, local4 = censusListen(t, "tcp4", lo4)
		local6 = netip.AddrPortFrom(netip.MustParseAddr("::1"), local4.Port())
		ln6, err := net.Listen("tcp6", local6.String())
		if err != nil {
			ln4.Close()
			continue
		}
		t.Cleanup(func() { ln6.Close() })
		if len(slices.DeleteFunc(readAll(t, local4.Port()), func(s Socket) bool { return !mine(s) })) == 2 {
			break
		}
		ln4.Close()
		ln6.Close()
	}
	censusConnect(t, ln4, conns)
	censusWait(t, local4, "listener and connections", censusHas(map[State]int{StateListen: 1, StateEstablished: conns}))

	tab, err := Read(Query{Port: local4.Port(), Match: mine, Keep: 3, Owners: true})
	require.NoError(t, err)
	assert.Equal(t, SourceNetlink, tab.Source)
	assert.Equal(t, 2+conns, tab.Total)
	assert.Equal(t, 2, tab.Count(StateListen))
	assert.Equal(t, conns, tab.Count(StateEstablished))
	assert.Zero(t, tab.Count(StateTimeWait))
	assert.Zero(t, tab.Count(99))
	require.Len(t, tab.Sockets, 3, censusFormat(tab.Sockets))
	assert.Equal(t, []State{StateListen, StateListen, StateEstablished}, []State{tab.Sockets[0].State, tab.Sockets[1].State, tab.Sockets[2].State})
	assert.Equal(t, local6, tab.Sockets[1].Local, "the IPv6 listener displaced a connection")
	for _, s := range tab.Sockets {
		assert.Equal(t, os.Getpid(), s.PID, "owners of the kept sockets")
	}
	assert.WithinDuration(t, time.Now(), tab.Read, time.Minute)

	tab, err = Read(Query{Port: local4.Port(), Match: mine, Keep: 1})
	require.NoError(t, err)
	require.Len(t, tab.Sockets, 1)
	assert.Equal(t, StateListen, tab.Sockets[0].State)
	assert.Zero(t, tab.Sockets[0].PID, "no owners unless asked")
}

// TestDiagConnTimesOut: a netlink socket that never answers (here: a message
// without NLM_F_REQUEST, which the kernel drops without a word) gives up at
// the deadline instead of hanging.
func TestDiagConnTimesOut(t *testing.T) {
	const wait = 100 * time.Millisecond
	start := time.Now()
	c, err := openDiag(start.Add(wait))
	require.NoError(t, err)
	defer c.close()
	req := diagRequest{hdr: unix.NlMsghdr{Len: sizeofDiagRequest, Type: unix.SOCK_DIAG_BY_FAMILY, Seq: 1}}
	err = c.dump((*[sizeofDiagRequest]byte)(unsafe.Pointer(&req))[:], 1, func(uint16, []byte) error { return nil })
	took := time.Since(start)
	assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
	assert.GreaterOrEqual(t, took, wait/2, "it waited for an answer")
	assert.Less(t, took, 10*wait, "and gave up at the deadline")

	_, err = openDiag(time.Now().Add(-time.Second))
	assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
}
