package reuse

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// errFuzzControl is what the fuzzers' failing WithControl returns.
var errFuzzControl = errors.New("fuzz: control refused")

// errnoOf returns the errno inside err, or 0 when there is none.
func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return 0
}

// confineAddress maps a fuzzed address onto this machine: host names are
// refused, since net would look them up (DNS), and so are literal addresses
// other than loopback and the wildcard; unix paths are moved into a fresh
// temporary directory and abstract names get this process's ID, so that
// parallel fuzz workers do not meet. ok is false for an input to skip.
func confineAddress(t *testing.T, network, address string) (_ string, ok bool) {
	base, _, _ := strings.Cut(network, ":")
	switch base {
	case "unix", "unixpacket", "unixgram":
		switch {
		case address == "":
			return "", true // autobind: the kernel picks an abstract name
		case address[0] == '@':
			return "@reuse-fuzz-" + strconv.Itoa(os.Getpid()) + "-" + address[1:], true
		case slices.Contains(strings.Split(address, "/"), ".."):
			return "", false
		}
		// Not filepath.Join: it would clean away trailing slashes and
		// doubled ones, which the kernel and the lock file see differently.
		return t.TempDir() + "/" + strings.TrimLeft(address, "/"), true
	case "ip", "ip4", "ip6":
		return address, literalLocal(address)
	case "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6":
		host, _, err := net.SplitHostPort(address)
		if err != nil {
			return address, true // refused before any lookup
		}
		return address, literalLocal(host)
	}
	return address, true // an unknown network is refused before any lookup
}

// literalLocal reports whether host is empty or a literal loopback or
// unspecified address, which net binds without a lookup.
func literalLocal(host string) bool {
	if host == "" {
		return true
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	a = a.Unmap()
	return a.IsLoopback() || a.IsUnspecified()
}

// isPacketNetwork reports whether Listen refuses network as one for
// ListenPacket, with its own error, before a socket exists.
func isPacketNetwork(network string) bool {
	k, ok := kindOf(network, false)
	return ok && (k == kindUDP || k == kindLocal && network != "unix" && network != "unixpacket")
}

// fuzzOptions is what FuzzListen's optBits ask for, and the options that
// ask for it, in this order: bit 0 WithReuseAddr(bit 1), bit 2
// WithReusePort(true), bit 3 WithExclusiveAddr(true), bit 4
// WithRSTOnClose(), bit 5 a WithControl that fails, bit 6 a WithControl that
// fails on an MPTCP socket only, bit 7 a nil Option.
type fuzzOptions struct {
	opts                                   []Option
	reuseAddr                              setting
	reusePort, exclusive, rst              bool
	failing, failOnMPTCP, nilOption        bool
	controlCalls, controlSawMPTCP, tcpSeen *int
}

func optionsOf(bits uint8) *fuzzOptions {
	f := &fuzzOptions{controlCalls: new(int), controlSawMPTCP: new(int), tcpSeen: new(int)}
	if bits&1 != 0 {
		f.reuseAddr = settingOf(bits&2 != 0)
		f.opts = append(f.opts, WithReuseAddr(bits&2 != 0))
	}
	if f.reusePort = bits&4 != 0; f.reusePort {
		f.opts = append(f.opts, WithReusePort(true))
	}
	if f.exclusive = bits&8 != 0; f.exclusive {
		f.opts = append(f.opts, WithExclusiveAddr(true))
	}
	if f.rst = bits&16 != 0; f.rst {
		f.opts = append(f.opts, WithRSTOnClose())
	}
	if f.failing = bits&32 != 0; f.failing {
		f.opts = append(f.opts, WithControl(func(string, string, syscall.RawConn) error {
			*f.controlCalls++
			return errFuzzControl
		}))
	}
	if f.failOnMPTCP = bits&64 != 0; f.failOnMPTCP {
		f.opts = append(f.opts, WithControl(func(_, _ string, c syscall.RawConn) error {
			var proto int
			var serr error
			if err := c.Control(func(fd uintptr) { proto, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL) }); err != nil {
				return err
			}
			if serr != nil {
				return serr
			}
			if proto == unix.IPPROTO_MPTCP {
				*f.controlSawMPTCP++
				return errFuzzControl
			}
			*f.tcpSeen++
			return nil
		}))
	}
	if f.nilOption = bits&128 != 0; f.nilOption {
		f.opts = append(f.opts, nil)
	}
	return f
}

// earlyError is the message Listen must give, before any socket exists, for
// network and f: the rules of listenConfig and plan, written down again.
func (f *fuzzOptions) earlyError(network string) string {
	k, ok := kindOf(network, false)
	switch {
	case !ok:
		return "unknown network " + network
	case isPacketNetwork(network):
		return fmt.Sprintf("reuse: network %q is not a stream network: use ListenPacket", network)
	case f.nilOption:
		return fmt.Sprintf("reuse: option %d of %d is nil", len(f.opts), len(f.opts))
	case k == kindLocal && f.reuseAddr != unset:
		return "reuse: WithReuseAddr does not apply to unix and ip networks"
	case k == kindLocal && f.reusePort:
		return "reuse: WithReusePort does not apply to unix and ip networks"
	case k == kindLocal && f.exclusive:
		return "reuse: WithExclusiveAddr does not apply to unix and ip networks"
	case k == kindLocal && f.rst:
		return "reuse: WithRSTOnClose does not apply to unix and ip networks"
	case f.reusePort && f.exclusive:
		return "reuse: WithReusePort(true) and WithExclusiveAddr(true) ask for opposite things"
	}
	return ""
}

// fuzzListenSeeds are FuzzListen's seeds beside testdata/fuzz/FuzzListen.
var fuzzListenSeeds = []struct {
	network, address string
	bits             uint8
}{
	{"tcp", "127.0.0.1:0", 0},
	{"tcp4", "127.0.0.1:0", 0},
	{"tcp6", "[::1]:0", 0},
	{"tcp", ":0", 0},
	{"tcp", "", 0},
	{"tcp", ":", 0},
	{"tcp", "[::]:0", 0},
	{"tcp", "0.0.0.0:0", 0},
	{"tcp4", "[::ffff:127.0.0.1]:0", 0},
	{"tcp6", "[::ffff:127.0.0.1]:0", 0},
	{"tcp", "[::1%lo]:0", 0},
	{"tcp", "[127.0.0.1]:0", 0},
	{"tcp4", "[::1]:0", 0},
	{"tcp6", "127.0.0.1:0", 0},
	{"tcp", "127.0.0.1:65535", 0},
	{"tcp", "127.0.0.1:65536", 0},
	{"tcp", "127.0.0.1:-1", 0},
	{"tcp", "127.0.0.1:http", 0},
	{"tcp", "127.0.0.1:no-such-service", 0},
	{"tcp", "127.0.0.1", 0},
	{"tcp", "[::1", 0},
	{"tcp", "::1:0", 0},
	{"tcp", "127.0.0.1:0:0", 0},
	{"unix", "s.sock", 0},
	{"unixpacket", "s.sock", 0},
	{"unix", "", 0},
	{"unix", "@abstract", 0},
	{"unix", "/", 0},
	{"unix", "dir/", 0},
	{"unix", "missing/s.sock", 0},
	{"unix", strings.Repeat("x", 120), 0},
	{"unix", strings.Repeat("y", 252), 0},
	{"unix", "missing/" + strings.Repeat("z", 100), 0},
	{"unix", "nul\x00byte", 0},
	{"udp", "127.0.0.1:0", 0},
	{"unixgram", "g.sock", 0},
	{"ip4:1", "127.0.0.1", 0},
	{"tcp:x", "127.0.0.1:0", 0},
	{"TCP", "127.0.0.1:0", 0},
	{"garbage", "127.0.0.1:0", 0},
	{"", "", 0},
	{"tcp4", "127.0.0.1:0", 1},
	{"tcp4", "127.0.0.1:0", 3},
	{"tcp4", "127.0.0.1:0", 4},
	{"tcp4", "127.0.0.1:0", 8},
	{"tcp4", "127.0.0.1:0", 12},
	{"tcp4", "127.0.0.1:0", 16},
	{"tcp4", "127.0.0.1:0", 32},
	{"tcp4", "127.0.0.1:0", 64},
	{"tcp4", "127.0.0.1:0", 128},
	{"tcp6", "[::1]:0", 0x57},
	{"tcp", "127.0.0.1:99999", 0x20},
	{"unix", "s.sock", 16},
	{"unix", "s.sock", 32},
	{"unix", "s.sock", 64},
	{"udp", "127.0.0.1:0", 4},
}

// FuzzListen compares Listen with net.Listen for the same network and
// address, and, with options, checks Listen against a model of its rules.
// Every input must leave no file descriptor and no goroutine behind.
func FuzzListen(f *testing.F) {
	for _, s := range fuzzListenSeeds {
		f.Add(s.network, s.address, s.bits)
	}
	f.Fuzz(func(t *testing.T, network, address string, optBits uint8) {
		address, ok := confineAddress(t, network, address)
		if !ok {
			t.Skip("not a loopback or wildcard literal, or a path outside the test's directory")
		}
		leaks := goleak.IgnoreCurrent()
		defer goleak.VerifyNone(t, leaks)
		if optBits == 0 {
			noLeak(t, func() { compareWithStdlib(t, network, address) })
			return
		}
		noLeak(t, func() { checkListenOptions(t, network, address, optionsOf(optBits)) })
	})
}

// compareWithStdlib: Listen succeeds exactly when net.Listen does, and
// fails with the same errno, with these differences, each on purpose:
//
//   - Listen refuses the packet networks (udp, unixgram, ip) with its own
//     error, pointing at ListenPacket. net.Listen fails on them too ("unexpected
//     address type"), except on unixgram, where it returns a listener around a
//     datagram socket whose Accept can never succeed.
//   - A unix path that is a stale socket file is replaced (unixsock.go). The
//     fresh directory of each input never has one.
func compareWithStdlib(t *testing.T, network, address string) {
	var stdErr, ourErr error
	// A fixed port that net.Listen had and gave back may be taken by another
	// fuzz worker or test process before Listen gets it: only a difference
	// that persists counts.
	for try := 0; try < 5; try++ {
		ln, err := net.Listen(network, address)
		if ln != nil {
			require.NoError(t, ln.Close())
		}
		stdErr = err
		ours, err := Listen(network, address)
		if ours != nil {
			require.NoError(t, ours.Close())
		}
		ourErr = err
		if (stdErr == nil) == (ourErr == nil) && errnoOf(stdErr) == errnoOf(ourErr) ||
			errnoOf(stdErr) != syscall.EADDRINUSE && errnoOf(ourErr) != syscall.EADDRINUSE {
			break
		}
	}
	if isPacketNetwork(network) {
		require.EqualError(t, ourErr, fmt.Sprintf("listen %s: reuse: network %q is not a stream network: use ListenPacket", network, network))
		return
	}
	if stdErr == nil {
		require.NoError(t, ourErr, "net.Listen(%q, %q) succeeds", network, address)
		return
	}
	require.Error(t, ourErr, "net.Listen(%q, %q) fails: %v", network, address, stdErr)
	require.Equal(t, errnoOf(stdErr), errnoOf(ourErr), "errno\n net.Listen: %v\n Listen:     %v", stdErr, ourErr)
}

// checkListenOptions checks Listen with f's options against the model:
// the early errors exactly, then what the socket shows.
func checkListenOptions(t *testing.T, network, address string, f *fuzzOptions) {
	if want := f.earlyError(network); want != "" {
		ln, err := Listen(network, address, f.opts...)
		require.Nil(t, ln)
		require.EqualError(t, err, (&net.OpError{Op: "listen", Net: network, Err: errors.New(want)}).Error())
		require.Zero(t, *f.controlCalls+*f.controlSawMPTCP+*f.tcpSeen, "no socket, no Control")
		return
	}
	var ln net.Listener
	var err, plainErr error
	// As in compareWithStdlib, a fixed port may go to another process
	// between the two calls.
	for try := 0; try < 5; try++ {
		// Whether the address itself can be listened on.
		var plain net.Listener
		plain, plainErr = Listen(network, address)
		if plain != nil {
			require.NoError(t, plain.Close())
		}
		ln, err = Listen(network, address, f.opts...)
		if plainErr != nil || err == nil || errnoOf(err) != syscall.EADDRINUSE {
			break
		}
	}
	if f.failing {
		require.Nil(t, ln)
		require.Error(t, err)
		if plainErr == nil {
			require.ErrorIs(t, err, errFuzzControl)
			var op *net.OpError
			require.ErrorAs(t, err, &op)
			require.Equal(t, 1+b2i(mptcpOK() && strings.HasPrefix(network, "tcp")), *f.controlCalls, "Control runs on the MPTCP socket, then on the TCP one")
		}
		return
	}
	if err != nil {
		require.Error(t, plainErr, "Listen fails with %v only with options", err)
		return
	}
	defer func() { require.NoError(t, ln.Close()) }()
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		require.IsType(t, &net.UnixListener{}, ln)
		return
	}
	wantProto := unix.IPPROTO_TCP
	if mptcpOK() && !f.failOnMPTCP {
		wantProto = unix.IPPROTO_MPTCP
	}
	assert.Equal(t, wantProto, getInt(t, tl, unix.SOL_SOCKET, unix.SO_PROTOCOL), "SO_PROTOCOL")
	if f.failOnMPTCP {
		assert.Equal(t, 1, *f.tcpSeen, "the caller's Control ran once on the TCP socket")
		assert.Equal(t, b2i(mptcpOK()), *f.controlSawMPTCP, "and once on the MPTCP one it refused")
	}
	assert.Equal(t, b2i(f.reuseAddr != off), getInt(t, tl, unix.SOL_SOCKET, unix.SO_REUSEADDR), "SO_REUSEADDR")
	assert.Equal(t, b2i(f.reusePort), getInt(t, tl, unix.SOL_SOCKET, unix.SO_REUSEPORT), "SO_REUSEPORT")
	assert.Equal(t, unix.Linger{Onoff: int32(b2i(f.rst))}, getLinger(t, tl), "SO_LINGER")
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// fuzzOption is one choice of FuzzOptions: byte b of its input picks
// fuzzOptionChoices[b%len].
type fuzzOption uint8

const (
	optReuseAddrOn fuzzOption = iota
	optReuseAddrOff
	optReusePortOn
	optReusePortOff
	optExclusiveOn
	optExclusiveOff
	optRST
	optNil
	optControlNil
	optControlOK
	numFuzzOptions
)

// optionModel is what a sequence of options leaves behind, by the rules
// the Option docs state: the last setting of each option wins, the first
// invalid Option (nil, WithControl(nil)) is the error, and reuse port with an
// explicit exclusive address is refused.
type optionModel struct {
	reuseAddr, reusePort, exclusive setting
	rst                             bool
	controls                        int
	err                             string
}

func modelOf(seq []fuzzOption) optionModel {
	var m optionModel
	for i, o := range seq {
		switch o {
		case optReuseAddrOn, optReuseAddrOff:
			m.reuseAddr = settingOf(o == optReuseAddrOn)
		case optReusePortOn, optReusePortOff:
			m.reusePort = settingOf(o == optReusePortOn)
		case optExclusiveOn, optExclusiveOff:
			m.exclusive = settingOf(o == optExclusiveOn)
		case optRST:
			m.rst = true
		case optNil:
			if m.err == "" {
				m.err = fmt.Sprintf("reuse: option %d of %d is nil", i+1, len(seq))
			}
		case optControlNil:
			if m.err == "" {
				m.err = "reuse: WithControl(nil): the function is nil"
			}
		case optControlOK:
			m.controls++
		}
	}
	if m.err == "" && m.reusePort == on && m.exclusive == on {
		m.err = "reuse: WithReusePort(true) and WithExclusiveAddr(true) ask for opposite things"
	}
	return m
}

// sockoptState is what getsockopt shows of the options this package sets.
type sockoptState struct{ reuseAddr, reusePort, lingerOn int }

func readSockopts(fd int) (sockoptState, error) {
	ra, err1 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR)
	rp, err2 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT)
	l, err3 := unix.GetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER)
	if err := errors.Join(err1, err2, err3); err != nil {
		return sockoptState{}, err
	}
	return sockoptState{ra, rp, int(l.Onoff)}, nil
}

func (m optionModel) sockopts() sockoptState {
	return sockoptState{b2i(m.reuseAddr != off), b2i(m.reusePort == on), b2i(m.rst)}
}

// FuzzOptions applies a sequence of options, contradictory and repeated ones
// included, and checks that "the last one wins" (the Option doc) holds: with
// Listen and with ListenConfig, the listener's socket options, as getsockopt
// reads them, or the error, are what the model of the rules says. Every
// WithControl given runs, once, and sees the options already set.
func FuzzOptions(f *testing.F) {
	for _, seed := range [][]byte{
		{},
		{byte(optReuseAddrOff)},
		{byte(optReuseAddrOff), byte(optReuseAddrOn)},
		{byte(optReuseAddrOn), byte(optReuseAddrOff)},
		{byte(optReusePortOn), byte(optReusePortOff)},
		{byte(optReusePortOn), byte(optExclusiveOn)},
		{byte(optReusePortOn), byte(optExclusiveOn), byte(optExclusiveOff)},
		{byte(optExclusiveOn), byte(optReusePortOn), byte(optReusePortOff)},
		{byte(optRST), byte(optRST), byte(optControlOK), byte(optControlOK)},
		{byte(optReuseAddrOff), byte(optNil), byte(optControlNil)},
		{byte(optControlNil), byte(optNil)},
		{byte(optReusePortOn), byte(optExclusiveOn), byte(optNil)},
		{byte(optControlOK), byte(optReusePortOn), byte(optReuseAddrOff), byte(optRST)},
		{0xff, 0x80, 0x13, 0x2a},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		const maxOptions = 64
		if len(raw) > maxOptions {
			raw = raw[:maxOptions]
		}
		seq := make([]fuzzOption, len(raw))
		for i, b := range raw {
			seq[i] = fuzzOption(b % byte(numFuzzOptions))
		}
		m := modelOf(seq)
		leaks := goleak.IgnoreCurrent()
		defer goleak.VerifyNone(t, leaks)

		var calls int
		var seen []sockoptState
		opts := make([]Option, len(seq))
		for i, o := range seq {
			switch o {
			case optReuseAddrOn, optReuseAddrOff:
				opts[i] = WithReuseAddr(o == optReuseAddrOn)
			case optReusePortOn, optReusePortOff:
				opts[i] = WithReusePort(o == optReusePortOn)
			case optExclusiveOn, optExclusiveOff:
				opts[i] = WithExclusiveAddr(o == optExclusiveOn)
			case optRST:
				opts[i] = WithRSTOnClose()
			case optNil:
				opts[i] = nil
			case optControlNil:
				opts[i] = WithControl(nil)
			case optControlOK:
				opts[i] = WithControl(func(_, _ string, c syscall.RawConn) error {
					calls++
					var s sockoptState
					var serr error
					if err := c.Control(func(fd uintptr) { s, serr = readSockopts(int(fd)) }); err != nil {
						return err
					}
					seen = append(seen, s)
					return serr
				})
			}
		}
		for _, via := range []string{"Listen", "ListenConfig"} {
			calls, seen = 0, nil
			var ln net.Listener
			var err error
			if via == "Listen" {
				ln, err = Listen("tcp4", "127.0.0.1:0", opts...)
			} else {
				ln, err = ListenConfig(opts...).Listen(t.Context(), "tcp4", "127.0.0.1:0")
			}
			if m.err != "" {
				require.Nil(t, ln, via)
				require.Error(t, err, via)
				// Listen reports it before a socket exists; ListenConfig's
				// Control only when one does, so net adds the address.
				assert.True(t, strings.HasSuffix(err.Error(), ": "+m.err), "%s: %v, want %q", via, err, m.err)
				if via == "Listen" {
					assert.EqualError(t, err, "listen tcp4: "+m.err)
					assert.Zero(t, calls, "no socket, no Control")
				}
				continue
			}
			require.NoError(t, err, via)
			tl := ln.(*net.TCPListener)
			rc, err := tl.SyscallConn()
			require.NoError(t, err)
			var got sockoptState
			var serr error
			require.NoError(t, rc.Control(func(fd uintptr) { got, serr = readSockopts(int(fd)) }))
			require.NoError(t, serr)
			require.NoError(t, tl.Close())
			assert.Equal(t, m.sockopts(), got, "%s: getsockopt after %v", via, seq)
			assert.Equal(t, m.controls, calls, "%s: every WithControl runs once", via)
			for _, s := range seen {
				assert.Equal(t, m.sockopts(), s, "%s: WithControl runs after the options are set", via)
			}
		}
	})
}

func (o fuzzOption) String() string {
	return [...]string{"WithReuseAddr(true)", "WithReuseAddr(false)", "WithReusePort(true)", "WithReusePort(false)",
		"WithExclusiveAddr(true)", "WithExclusiveAddr(false)", "WithRSTOnClose()", "nil", "WithControl(nil)", "WithControl(fn)"}[o]
}
