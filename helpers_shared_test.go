//go:build linux || windows

package reuse

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

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
