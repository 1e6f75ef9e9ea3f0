//go:build linux || windows

package reuse

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// hosts returns the loopback addresses to test on: 127.0.0.1 always, ::1
// where the machine has it.
func hosts(t *testing.T) map[string]string {
	t.Helper()
	h := map[string]string{"tcp4": "127.0.0.1"}
	if ln, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		ln.Close()
		h["tcp6"] = "::1"
	}
	return h
}

func port(a net.Addr) int { return a.(*net.TCPAddr).Port }

func hostPort(host string, port int) string {
	return netip.AddrPortFrom(netip.MustParseAddr(host), uint16(port)).String()
}

// pair connects a plain TCP client to ln and accepts it. The client sends a
// byte that the server reads, so the handshake is complete on both sides
// before a test closes anything.
func pair(t *testing.T, ln net.Listener) (client, server *net.TCPConn) {
	t.Helper()
	d := net.Dialer{Timeout: 2 * time.Second}
	c, err := d.Dial(ln.Addr().Network(), ln.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	_, err = c.Write([]byte{'x'})
	require.NoError(t, err)
	setDeadline(t, ln)
	s, err := ln.Accept()
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	require.NoError(t, s.SetReadDeadline(time.Now().Add(2*time.Second)))
	_, err = io.ReadFull(s, make([]byte, 1))
	require.NoError(t, err)
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func setDeadline(t *testing.T, ln net.Listener) {
	t.Helper()
	if d, ok := ln.(interface{ SetDeadline(time.Time) error }); ok {
		require.NoError(t, d.SetDeadline(time.Now().Add(2*time.Second)))
	}
}

// readErr returns what the next Read on c gives: an error, io.EOF included.
func readErr(t *testing.T, c net.Conn) error {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(2*time.Second)))
	n, err := c.Read(make([]byte, 1))
	require.Zero(t, n, "no data was sent")
	return err
}

// badCase is a call that must fail: with a *net.OpError whose message holds
// want, for which errors.Is(err, is) holds when is is set, leaving no fd
// or handle open.
type badCase struct {
	call func() (io.Closer, error)
	want string
	is   error
}

func listenCall(network, addr string, opts ...Option) func() (io.Closer, error) {
	return func() (io.Closer, error) { return Listen(network, addr, opts...) }
}

func packetCall(network, addr string, opts ...Option) func() (io.Closer, error) {
	return func() (io.Closer, error) { return ListenPacket(network, addr, opts...) }
}

func dialCall(network, laddr, raddr string, opts ...Option) func() (io.Closer, error) {
	return func() (io.Closer, error) { return Dial(network, laddr, raddr, opts...) }
}

// errBoom is what failing's Control returns.
var errBoom = errors.New("boom")

// failing is an option whose Control fails with errBoom.
var failing = WithControl(func(string, string, syscall.RawConn) error { return errBoom })

// badInput is the bad input that Linux and Windows reject alike, each case
// failing before any socket is kept; sock is a unix path that none of them
// creates. Add an OS's own cases and run them with checkBadInput.
func badInput(sock string) map[string]badCase {
	return map[string]badCase{
		"unknown network":        {call: listenCall("tcp7", ":0"), want: "unknown network tcp7"},
		"udp to Listen":          {call: listenCall("udp", "127.0.0.1:0"), want: `network "udp" is not a stream network: use ListenPacket`},
		"tcp to ListenPacket":    {call: packetCall("tcp", "127.0.0.1:0"), want: `network "tcp" is not a packet network: use Listen`},
		"bad port":               {call: listenCall("tcp", "127.0.0.1:99999"), want: "invalid port"},
		"missing port":           {call: listenCall("tcp", "127.0.0.1"), want: "missing port"},
		"nil option":             {call: listenCall("tcp", "127.0.0.1:0", WithRSTOnClose(), nil), want: "option 2 of 2 is nil"},
		"nil control":            {call: listenCall("tcp", "127.0.0.1:0", WithControl(nil)), want: "WithControl(nil)"},
		"rst on udp":             {call: packetCall("udp", "127.0.0.1:0", WithRSTOnClose()), want: "WithRSTOnClose does not apply to UDP"},
		"rst on unix":            {call: listenCall("unix", sock, WithRSTOnClose()), want: "WithRSTOnClose does not apply to unix"},
		"exclusive on unix":      {call: listenCall("unix", sock, WithExclusiveAddr(true)), want: "WithExclusiveAddr does not apply to unix"},
		"reuseport vs exclusive": {call: listenCall("tcp", "127.0.0.1:0", WithReusePort(true), WithExclusiveAddr(true)), want: "opposite"},
		"control error, tcp":     {call: listenCall("tcp", "127.0.0.1:0", failing), want: "boom", is: errBoom},
		"dial unix":              {call: dialCall("unix", "", sock), want: "unknown network unix"},
		"dial bad laddr":         {call: dialCall("tcp", "127.0.0.1:x", "127.0.0.1:1"), want: "local address"},
		"dial rst on udp":        {call: dialCall("udp", "", "127.0.0.1:1", WithRSTOnClose()), want: "WithRSTOnClose does not apply to UDP"},
		"nil context": {call: func() (io.Closer, error) {
			//lint:ignore SA1012 a nil context is the bad input under test
			return ListenContext(nil, "tcp", "127.0.0.1:0") //nolint:staticcheck
		}, want: "nil Context"},
	}
}

// checkBadInput runs each case in a subtest, with noLeak around it.
func checkBadInput(t *testing.T, cases map[string]badCase) {
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			noLeak(t, func() {
				cl, err := c.call()
				require.Error(t, err)
				require.Nil(t, cl)
				var op *net.OpError
				require.ErrorAs(t, err, &op, "%v", err)
				assert.ErrorContains(t, err, c.want)
				if c.is != nil {
					assert.ErrorIs(t, err, c.is)
				}
			})
		})
	}
}
