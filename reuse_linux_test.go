package reuse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

type closeOrder struct {
	name string
	rst  bool // the listener has WithRSTOnClose
	// run closes the pair in this order and returns what the client's Read
	// gave after the server's close (nil when the client closed first).
	run func(t *testing.T, client, server *net.TCPConn) error
	// What the kernel shows afterwards on the server's port and on the
	// client's (ephemeral) port.
	serverPort, clientPort map[State]int
	// clientRead is what the client's Read must return.
	clientRead func(error) bool
	// rebindNeedsReuseAddr: an immediate re-listen on the port fails with
	// EADDRINUSE unless SO_REUSEADDR is on.
	rebindNeedsReuseAddr bool
}

var closeOrders = []closeOrder{{
	name: "ClientClosesFirst",
	run: func(t *testing.T, client, server *net.TCPConn) error {
		require.NoError(t, client.Close())
		require.ErrorIs(t, readErr(t, server), io.EOF)
		require.NoError(t, server.Close())
		return nil
	},
	// The active closer keeps the TIME_WAIT: here the client, on its own port.
	serverPort: map[State]int{},
	clientPort: map[State]int{StateTimeWait: 1},
	clientRead: func(err error) bool { return err == nil },
}, {
	name: "ServerClosesFirst",
	run: func(t *testing.T, client, server *net.TCPConn) error {
		require.NoError(t, server.Close())
		err := readErr(t, client)
		require.NoError(t, client.Close())
		return err
	},
	serverPort:           map[State]int{StateTimeWait: 1},
	clientPort:           map[State]int{},
	clientRead:           func(err error) bool { return errors.Is(err, io.EOF) },
	rebindNeedsReuseAddr: true,
}, {
	name: "ServerClosesFirst_ClientStaysOpen",
	run: func(t *testing.T, client, server *net.TCPConn) error {
		require.NoError(t, server.Close())
		return readErr(t, client)
	},
	serverPort:           map[State]int{StateFinWait2: 1},
	clientPort:           map[State]int{StateCloseWait: 1},
	clientRead:           func(err error) bool { return errors.Is(err, io.EOF) },
	rebindNeedsReuseAddr: true,
}, {
	name: "ServerClosesFirst_RSTOnClose",
	rst:  true,
	run: func(t *testing.T, client, server *net.TCPConn) error {
		require.NoError(t, server.Close())
		err := readErr(t, client)
		require.NoError(t, client.Close())
		return err
	},
	serverPort: map[State]int{},
	clientPort: map[State]int{},
	clientRead: isReset,
}}

// TestCloseOrder runs every close order for tcp4 and tcp6, MPTCP and plain
// TCP listeners, SO_REUSEADDR on and off, and checks which side the kernel
// leaves in TIME_WAIT or FIN_WAIT2, what the client reads, and whether an
// immediate re-listen on the same address works.
func TestCloseOrder(t *testing.T) {
	for network, host := range hosts(t) {
		for proto, mptcp := range protocols() {
			for _, reuseAddr := range []bool{true, false} {
				for _, o := range closeOrders {
					t.Run(fmt.Sprintf("%s/%s/%s/reuseaddr=%v", o.name, network, proto, reuseAddr), func(t *testing.T) {
						opts := []Option{WithReuseAddr(reuseAddr)}
						if o.rst {
							opts = append(opts, WithRSTOnClose())
						}
						ln, err := listenTCP(t, network, hostPort(host, 0), mptcp, opts...)
						require.NoError(t, err)
						client, server := pair(t, ln)
						// An MPTCP listener hands a plain client a TCP socket.
						require.Equal(t, unix.IPPROTO_TCP, getInt(t, server, unix.SOL_SOCKET, unix.SO_PROTOCOL))

						read := o.run(t, client, server)
						assert.True(t, o.clientRead(read), "client read %v", read)
						waitStates(t, port(ln.Addr()), nil, o.serverPort)
						waitStates(t, port(client.LocalAddr()), client, o.clientPort)

						addr := ln.Addr().String()
						require.NoError(t, ln.Close())
						_, err = listenTCP(t, network, addr, mptcp, opts...)
						if o.rebindNeedsReuseAddr && !reuseAddr {
							require.Error(t, err, "re-listen on %s", addr)
							assert.True(t, IsAddrInUse(err), "%v", err)
							assert.ErrorIs(t, err, syscall.EADDRINUSE)
						} else {
							require.NoError(t, err, "re-listen on %s", addr)
						}
					})
				}
			}
		}
	}
}

// TestServerClosesFirst_TimeWaitKeepsOldListenersReuseAddr: a TIME_WAIT
// carries the SO_REUSEADDR of the listener it came from, and the kernel lets
// a new listener past it only when both have it on.
func TestServerClosesFirst_TimeWaitKeepsOldListenersReuseAddr(t *testing.T) {
	for _, c := range []struct{ old, new, ok bool }{
		{old: true, new: true, ok: true},
		{old: false, new: true, ok: false},
		{old: true, new: false, ok: false},
	} {
		t.Run(fmt.Sprintf("old=%v/new=%v", c.old, c.new), func(t *testing.T) {
			ln, err := listenTCP(t, "tcp4", "127.0.0.1:0", false, WithReuseAddr(c.old))
			require.NoError(t, err)
			client, server := pair(t, ln)
			require.NoError(t, server.Close())
			require.ErrorIs(t, readErr(t, client), io.EOF)
			require.NoError(t, client.Close())
			waitStates(t, port(ln.Addr()), nil, map[State]int{StateTimeWait: 1})
			require.NoError(t, ln.Close())

			_, err = listenTCP(t, "tcp4", ln.Addr().String(), false, WithReuseAddr(c.new))
			if c.ok {
				require.NoError(t, err)
			} else {
				require.True(t, IsAddrInUse(err), "want address in use, got %v", err)
			}
		})
	}
}

// TestListen_ReturnsStdlibListener: on Linux the kernel does the work for
// every option, so no wrapper is needed.
func TestListen_ReturnsStdlibListener(t *testing.T) {
	for _, opts := range [][]Option{nil, {WithRSTOnClose()}, {WithReusePort(true), WithReuseAddr(false)}, {WithExclusiveAddr(true)}} {
		ln, err := Listen("tcp", "127.0.0.1:0", opts...)
		require.NoError(t, err)
		assert.IsType(t, &net.TCPListener{}, ln)
		ln.Close()
	}
}

// TestListen_DualStack: "tcp" with no host listens on IPv4 and IPv6, as
// net.Listen does.
func TestListen_DualStack(t *testing.T) {
	if _, ok := hosts(t)["tcp6"]; !ok {
		t.Skip("no ::1")
	}
	ln, err := Listen("tcp", ":0")
	require.NoError(t, err)
	defer ln.Close()
	p := port(ln.Addr())
	for _, network := range []string{"tcp4", "tcp6"} {
		host := map[string]string{"tcp4": "127.0.0.1", "tcp6": "::1"}[network]
		c, err := net.DialTimeout(network, hostPort(host, p), 2*time.Second)
		require.NoError(t, err, network)
		setDeadline(t, ln)
		s, err := ln.Accept()
		require.NoError(t, err)
		s.Close()
		c.Close()
	}
}

// TestSecondLiveListener: no option but WithReusePort on both sockets lets a
// second listener bind a port that has a live one.
func TestSecondLiveListener(t *testing.T) {
	for proto, mptcp := range protocols() {
		for name, c := range map[string]struct {
			first, second []Option
			ok            bool
		}{
			"defaults":                      {},
			"reuseaddr both":                {first: []Option{WithReuseAddr(true)}, second: []Option{WithReuseAddr(true)}},
			"every option but reuseport":    {first: []Option{WithReuseAddr(true), WithExclusiveAddr(true), WithRSTOnClose()}, second: []Option{WithReuseAddr(true), WithExclusiveAddr(true), WithRSTOnClose()}},
			"reuseport on the first only":   {first: []Option{WithReusePort(true)}},
			"reuseport on the second only":  {second: []Option{WithReusePort(true)}},
			"reuseport both":                {first: []Option{WithReusePort(true)}, second: []Option{WithReusePort(true)}, ok: true},
			"reuseport both, reuseaddr off": {first: []Option{WithReusePort(true), WithReuseAddr(false)}, second: []Option{WithReusePort(true), WithReuseAddr(false)}, ok: true},
		} {
			t.Run(proto+"/"+name, func(t *testing.T) {
				ln, err := listenTCP(t, "tcp4", "127.0.0.1:0", mptcp, c.first...)
				require.NoError(t, err)
				_, err = listenTCP(t, "tcp4", ln.Addr().String(), mptcp, c.second...)
				if c.ok {
					require.NoError(t, err)
					return
				}
				require.Error(t, err)
				assert.True(t, IsAddrInUse(err), "%v", err)
			})
		}
	}
}

// TestReusePort_Balances: with SO_REUSEPORT on both, the kernel spreads
// connections over the two listeners by four-tuple hash.
func TestReusePort_Balances(t *testing.T) {
	for proto, mptcp := range protocols() {
		t.Run(proto, func(t *testing.T) {
			a, b := reusePortGroup(t, mptcp)
			const n = 64 // all on one side: probability 2^-63
			dialN(t, a.Addr().String(), n)
			got := map[*net.TCPListener]int{}
			for deadline := time.Now().Add(5 * time.Second); got[a]+got[b] < n && time.Now().Before(deadline); {
				for _, ln := range []*net.TCPListener{a, b} {
					require.NoError(t, ln.SetDeadline(time.Now().Add(5*time.Millisecond)))
					if c, err := ln.Accept(); err == nil {
						got[ln]++
						c.Close()
					}
				}
			}
			require.Equal(t, n, got[a]+got[b])
			assert.Positive(t, got[a], "first listener got none of %d", n)
			assert.Positive(t, got[b], "second listener got none of %d", n)
			t.Logf("%s: %d / %d", proto, got[a], got[b])
		})
	}
}

// TestReadBack reads every option back with getsockopt, on the listener and
// on an accepted connection, which inherits them.
func TestReadBack(t *testing.T) {
	type want struct{ reuseAddr, reusePort, lingerOn int }
	for proto, mptcp := range protocols() {
		for name, c := range map[string]struct {
			opts []Option
			want want
		}{
			"defaults":       {want: want{reuseAddr: 1}},
			"reuseaddr off":  {opts: []Option{WithReuseAddr(false)}, want: want{}},
			"reuseaddr on":   {opts: []Option{WithReuseAddr(true)}, want: want{reuseAddr: 1}},
			"reuseport on":   {opts: []Option{WithReusePort(true)}, want: want{reuseAddr: 1, reusePort: 1}},
			"reuseport off":  {opts: []Option{WithReusePort(false)}, want: want{reuseAddr: 1}},
			"rst":            {opts: []Option{WithRSTOnClose()}, want: want{reuseAddr: 1, lingerOn: 1}},
			"exclusive on":   {opts: []Option{WithExclusiveAddr(true)}, want: want{reuseAddr: 1}},
			"everything off": {opts: []Option{WithReuseAddr(false), WithReusePort(false), WithExclusiveAddr(false)}, want: want{}},
			"all on":         {opts: []Option{WithReuseAddr(true), WithReusePort(true), WithRSTOnClose()}, want: want{1, 1, 1}},
		} {
			t.Run(proto+"/"+name, func(t *testing.T) {
				ln, err := listenTCP(t, "tcp4", "127.0.0.1:0", mptcp, c.opts...)
				require.NoError(t, err)
				_, server := pair(t, ln)
				for what, conn := range map[string]syscall.Conn{"listener": ln, "accepted": server} {
					got := want{
						reuseAddr: getInt(t, conn, unix.SOL_SOCKET, unix.SO_REUSEADDR),
						reusePort: getInt(t, conn, unix.SOL_SOCKET, unix.SO_REUSEPORT),
						lingerOn:  int(getLinger(t, conn).Onoff),
					}
					assert.Equal(t, c.want, got, what)
					assert.Zero(t, getLinger(t, conn).Linger, what)
				}
			})
		}
	}
}

// TestListen_DefaultsAddNoControl: with nothing to change on Linux, Listen
// and ListenConfig leave Control nil, so Go makes no extra system call.
func TestListen_DefaultsAddNoControl(t *testing.T) {
	assert.Nil(t, ListenConfig().Control)
	for _, opts := range [][]Option{nil, {WithReuseAddr(true)}, {WithReusePort(false), WithExclusiveAddr(true)}} {
		lc, _, wrap, err := listenConfig(context.Background(), "tcp", false, opts)
		require.NoError(t, err)
		assert.False(t, wrap)
		assert.Nil(t, lc.Control)
	}
	assert.NotNil(t, ListenConfig(WithReuseAddr(false)).Control)
}

// TestControl_OnExistingListenConfig: Control plugs into a ListenConfig the
// caller built, and the caller's own function runs after ours.
func TestControl_OnExistingListenConfig(t *testing.T) {
	var sawReusePort int
	var networks []string
	lc := net.ListenConfig{Control: Control(WithReusePort(true), WithControl(func(network, _ string, c syscall.RawConn) error {
		networks = append(networks, network)
		return c.Control(func(fd uintptr) { sawReusePort, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT) })
	}))}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	assert.Equal(t, 1, sawReusePort, "WithControl runs after SO_REUSEPORT was set")
	assert.Equal(t, []string{"tcp4"}, networks)

	pc, err := (&net.ListenConfig{Control: Control(WithReusePort(true))}).ListenPacket(context.Background(), "udp", "127.0.0.1:0")
	require.NoError(t, err)
	defer pc.Close()
	assert.Equal(t, 1, getInt(t, pc.(*net.UDPConn), unix.SOL_SOCKET, unix.SO_REUSEPORT))
}

// TestWithControl_RunsAgainForTCPWhenMPTCPFails: Go retries a failed MPTCP
// listen as plain TCP and calls Control again; our steps and the caller's
// must survive that.
func TestWithControl_RunsAgainForTCPWhenMPTCPFails(t *testing.T) {
	if !mptcpOK() {
		t.Skip("no MPTCP in this kernel")
	}
	calls := 0
	lc := ListenConfig(WithReuseAddr(false), WithControl(func(_, _ string, c syscall.RawConn) error {
		calls++
		var proto int
		if err := c.Control(func(fd uintptr) { proto, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL) }); err != nil {
			return err
		}
		if proto == unix.IPPROTO_MPTCP {
			return errors.New("refuse MPTCP")
		}
		return nil
	}))
	lc.SetMultipathTCP(true)
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	tl := ln.(*net.TCPListener)
	assert.Equal(t, 2, calls)
	assert.Equal(t, unix.IPPROTO_TCP, getInt(t, tl, unix.SOL_SOCKET, unix.SO_PROTOCOL))
	assert.Equal(t, 0, getInt(t, tl, unix.SOL_SOCKET, unix.SO_REUSEADDR), "our step ran again on the TCP socket")
}

// TestListenPacket_UDP: no SO_REUSEADDR unless asked, and with it on both
// sockets two can bind one port.
func TestListenPacket_UDP(t *testing.T) {
	a, err := ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer a.Close()
	assert.Equal(t, 0, getInt(t, a.(*net.UDPConn), unix.SOL_SOCKET, unix.SO_REUSEADDR))
	_, err = ListenPacket("udp4", a.LocalAddr().String())
	assert.True(t, IsAddrInUse(err), "%v", err)

	b, err := ListenPacket("udp4", "127.0.0.1:0", WithReuseAddr(true))
	require.NoError(t, err)
	defer b.Close()
	assert.Equal(t, 1, getInt(t, b.(*net.UDPConn), unix.SOL_SOCKET, unix.SO_REUSEADDR))
	c, err := ListenPacket("udp4", b.LocalAddr().String(), WithReuseAddr(true))
	require.NoError(t, err)
	c.Close()

	g, err := ListenPacket("unixgram", filepath.Join(t.TempDir(), "g.sock"))
	require.NoError(t, err)
	g.Close()
}

// TestListen_Unix: unix networks pass through.
func TestListen_Unix(t *testing.T) {
	for _, network := range []string{"unix", "unixpacket"} {
		path := filepath.Join(t.TempDir(), "s.sock")
		ln, err := Listen(network, path)
		require.NoError(t, err, network)
		c, err := net.DialTimeout(network, path, 2*time.Second)
		require.NoError(t, err)
		c.Close()
		ln.Close()
	}
}

// TestDial_RebindsPastOwnTimeWait: a client that closes first leaves a
// TIME_WAIT on its local port; Dial can bind that port again at once, plain
// bind cannot.
func TestDial_RebindsPastOwnTimeWait(t *testing.T) {
	ln1, err := Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln1.Close()
	ln2, err := Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln2.Close()

	c, err := Dial("tcp4", "127.0.0.1:0", ln1.Addr().String())
	require.NoError(t, err)
	assert.Equal(t, 1, getInt(t, c.(*net.TCPConn), unix.SOL_SOCKET, unix.SO_REUSEADDR))
	setDeadline(t, ln1)
	s, err := ln1.Accept()
	require.NoError(t, err)
	local := c.LocalAddr().String()
	require.NoError(t, c.Close())
	require.NoError(t, s.Close())
	waitStates(t, port(c.LocalAddr()), c, map[State]int{StateTimeWait: 1})

	_, err = Dial("tcp4", local, ln2.Addr().String(), WithReuseAddr(false))
	require.Error(t, err)
	assert.True(t, IsAddrInUse(err), "%v", err)

	c2, err := Dial("tcp4", local, ln2.Addr().String())
	require.NoError(t, err, "rebind %s past its TIME_WAIT", local)
	assert.Equal(t, local, c2.LocalAddr().String())
	c2.Close()
}

// TestDial_NoSocketOptionWithoutLocalAddress: a Dial that lets the system
// pick its port has nothing to reuse, so it sets no SO_REUSEADDR.
func TestDial_NoSocketOptionWithoutLocalAddress(t *testing.T) {
	ln, err := Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	c, err := Dial("tcp4", "", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	assert.Equal(t, 0, getInt(t, c.(*net.TCPConn), unix.SOL_SOCKET, unix.SO_REUSEADDR))
	c2, err := Dial("tcp4", "", ln.Addr().String(), WithReuseAddr(true))
	require.NoError(t, err, "asked for, it is set")
	defer c2.Close()
	assert.Equal(t, 1, getInt(t, c2.(*net.TCPConn), unix.SOL_SOCKET, unix.SO_REUSEADDR))
}

// TestDialContext_BoundsLocalAddressLookup: the lookup of a local host name
// ends with ctx. The resolver here never answers until its context ends.
func TestDialContext_BoundsLocalAddressLookup(t *testing.T) {
	unblock := make(chan struct{})
	saved := net.DefaultResolver
	net.DefaultResolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-unblock:
			return nil, errors.New("test over")
		}
	}}
	defer func() { close(unblock); net.DefaultResolver = saved }()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := DialContext(ctx, "tcp4", "never-answers.example:0", "127.0.0.1:9")
		done <- err
	}()
	select {
	case err := <-done:
		require.Error(t, err)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.ErrorContains(t, err, "never-answers.example")
	case <-time.After(5 * time.Second):
		close(unblock)
		<-done
		t.Fatal("DialContext did not end with its context")
	}
}

// TestListenPacketContext: the context form of ListenPacket, and its nil and
// cancelled contexts.
func TestListenPacketContext(t *testing.T) {
	pc, err := ListenPacketContext(context.Background(), "udp4", "127.0.0.1:0")
	require.NoError(t, err)
	require.NoError(t, pc.Close())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	std, stdErr := (&net.ListenConfig{}).ListenPacket(ctx, "udp4", "127.0.0.1:0")
	if std != nil {
		std.Close()
	}
	pc, err = ListenPacketContext(ctx, "udp4", "127.0.0.1:0")
	if pc != nil {
		pc.Close()
	}
	require.Equal(t, stdErr == nil, err == nil, "stdlib %v, reuse %v", stdErr, err)
	// A name: net's lookup selects between the ended ctx and its own answer,
	// whichever is ready, so either outcome is the stdlib's; an error must
	// be the ctx's.
	for range 20 {
		pc, err := ListenPacketContext(ctx, "udp4", "localhost:0")
		if pc != nil {
			pc.Close()
		}
		if err != nil {
			require.ErrorIs(t, err, context.Canceled)
		}
	}
	//lint:ignore SA1012 a nil Context is the case under test
	_, err = ListenPacketContext(nil, "udp4", "127.0.0.1:0") //nolint:staticcheck
	assert.ErrorContains(t, err, "nil Context")
}

// TestErrors checks every error path: the error is a *net.OpError that names
// the bad argument, errors.Is sees the cause, and no fd is left open.
func TestErrors(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	taken, err := Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	cases := badInput(sock)
	maps.Copy(cases, map[string]badCase{
		"unix to ListenPacket":     {call: packetCall("unix", sock), want: `network "unix" is not a packet network`},
		"bad host":                 {call: listenCall("tcp", "256.0.0.1:0"), want: "256.0.0.1"},
		"reuseport on unixgram":    {call: packetCall("unixgram", sock, WithReusePort(true)), want: "WithReusePort does not apply"},
		"control error, udp":       {call: packetCall("udp", "127.0.0.1:0", WithReuseAddr(true), failing), want: "boom", is: errBoom},
		"control error, dial":      {call: dialCall("tcp", "", taken.Addr().String(), failing), want: "boom", is: errBoom},
		"address in use":           {call: listenCall("tcp4", taken.Addr().String(), WithReuseAddr(false)), want: "address already in use", is: syscall.EADDRINUSE},
		"address in use, defaults": {call: listenCall("tcp4", taken.Addr().String()), want: "address already in use", is: syscall.EADDRINUSE},
		"dial refused":             {call: dialCall("tcp4", "127.0.0.1:0", "127.0.0.1:1"), want: "connection refused", is: syscall.ECONNREFUSED},
	})
	checkBadInput(t, cases)
}

// TestSetsockoptError: a failed setsockopt names the option and keeps the
// errno.
func TestSetsockoptError(t *testing.T) {
	err := setsockopt(^uintptr(0), step{soReusePort, true})
	assert.EqualError(t, err, "setsockopt SO_REUSEPORT: bad file descriptor")
	assert.ErrorIs(t, err, unix.EBADF)
	var se *os.SyscallError
	assert.ErrorAs(t, err, &se)
	err = setsockopt(^uintptr(0), step{soReusePortLB, true})
	assert.ErrorIs(t, err, errors.ErrUnsupported, "no SO_REUSEPORT_LB on Linux")
}

// TestReusePort_ClosingOneListenerResetsItsQueue: connections waiting in
// the accept queue of a SO_REUSEPORT listener that closes are reset, unless
// net.ipv4.tcp_migrate_req moves them to another listener of the group.
func TestReusePort_ClosingOneListenerResetsItsQueue(t *testing.T) {
	migrate, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	if err != nil {
		t.Skipf("no tcp_migrate_req (Linux 5.14+): %v", err)
	}
	a, _ := reusePortGroup(t, false)
	const n = 64 // all in one queue: probability 2^-63
	dialN(t, a.Addr().String(), n)
	p := port(a.Addr())
	waitStates(t, p, nil, map[State]int{StateEstablished: n}) // all queued, none accepted
	require.NoError(t, a.Close())
	queued := states(t, p, nil)[StateEstablished]
	if strings.TrimSpace(string(migrate)) == "0" {
		assert.Less(t, queued, n, "the closed listener's queue was reset")
		assert.Positive(t, queued, "the other listener's queue is intact")
	} else {
		assert.Equal(t, n, queued, "tcp_migrate_req moved the queue")
	}
	t.Logf("tcp_migrate_req=%s: %d of %d still queued", strings.TrimSpace(string(migrate)), queued, n)
}

// reusePortGroup makes two SO_REUSEPORT listeners on one loopback port.
func reusePortGroup(t *testing.T, mptcp bool) (a, b *net.TCPListener) {
	t.Helper()
	a, err := listenTCP(t, "tcp4", "127.0.0.1:0", mptcp, WithReusePort(true))
	require.NoError(t, err)
	b, err = listenTCP(t, "tcp4", a.Addr().String(), mptcp, WithReusePort(true))
	require.NoError(t, err)
	return a, b
}

// dialN opens n connections to addr, closed when the test ends.
func dialN(t *testing.T, addr string, n int) {
	t.Helper()
	for range n {
		c, err := net.DialTimeout("tcp4", addr, 2*time.Second)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
	}
}
