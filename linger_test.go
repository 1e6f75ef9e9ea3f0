//go:build linux

package reuse

import (
	"crypto/tls"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRSTOnClose_ClientSeesResetThenEOF: one RST; the client's first Read
// fails with ECONNRESET, the next returns io.EOF, a Write fails with EPIPE,
// and the server's port keeps no TIME_WAIT.
func TestRSTOnClose_ClientSeesResetThenEOF(t *testing.T) {
	for network, host := range hosts(t) {
		for proto, mptcp := range protocols() {
			t.Run(network+"/"+proto, func(t *testing.T) {
				ln, err := listenTCP(t, network, hostPort(host, 0), mptcp, WithRSTOnClose())
				require.NoError(t, err)
				client, server := pair(t, ln)
				require.Equal(t, int32(1), getLinger(t, server).Onoff, "inherited from the listener")
				require.NoError(t, server.Close())

				assert.True(t, isReset(readErr(t, client)), "first Read: connection reset")
				assert.ErrorIs(t, readErr(t, client), io.EOF, "second Read")
				_, err = client.Write([]byte("x"))
				assert.ErrorIs(t, err, syscall.EPIPE)
				waitStates(t, port(ln.Addr()), nil, map[State]int{})
			})
		}
	}
}

// TestRSTOnClose_DiscardsUnsentData: data still in the server's send queue
// at Close never reaches the client. Data already delivered is read first;
// then the client's Read fails with ECONNRESET.
func TestRSTOnClose_DiscardsUnsentData(t *testing.T) {
	ln, err := listenTCP(t, "tcp4", "127.0.0.1:0", false, WithRSTOnClose())
	require.NoError(t, err)
	client, server := pair(t, ln)
	require.NoError(t, client.SetReadBuffer(4096))
	require.NoError(t, server.SetWriteBuffer(4096))
	// Write until the client's window and the server's send buffer are
	// full: the write deadline ends the loop once Write blocks.
	require.NoError(t, server.SetWriteDeadline(time.Now().Add(200*time.Millisecond)))
	written := 0
	for chunk := make([]byte, 4096); written < 64<<20; {
		n, err := server.Write(chunk)
		written += n
		if err != nil {
			require.ErrorIs(t, err, os.ErrDeadlineExceeded)
			break
		}
	}
	require.NoError(t, server.Close())

	require.NoError(t, client.SetReadDeadline(time.Now().Add(2*time.Second)))
	read, err := io.Copy(io.Discard, client)
	assert.True(t, isReset(err), "read %d bytes, then %v", read, err)
	assert.Less(t, int(read), written, "unsent data was discarded")
	t.Logf("written %d, read %d", written, read)
}

// TestDial_RSTOnClose: the dialled connection aborts on Close, leaving no
// TIME_WAIT on the client's port; the server reads ECONNRESET.
func TestDial_RSTOnClose(t *testing.T) {
	ln, err := Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	c, err := Dial("tcp4", "", ln.Addr().String(), WithRSTOnClose())
	require.NoError(t, err)
	_, err = c.Write([]byte{'x'})
	require.NoError(t, err)
	setDeadline(t, ln)
	s, err := ln.Accept()
	require.NoError(t, err)
	defer s.Close()
	require.NoError(t, s.SetReadDeadline(time.Now().Add(2*time.Second)))
	_, err = io.ReadFull(s, make([]byte, 1))
	require.NoError(t, err)

	require.NoError(t, c.Close())
	assert.True(t, isReset(readErr(t, s)))
	waitStates(t, port(c.LocalAddr()), c, map[State]int{})
}

// TestAbort: Abort on one connection of a plain listener resets it; the
// listener's other connections still close gracefully.
func TestAbort(t *testing.T) {
	ln, err := listenTCP(t, "tcp4", "127.0.0.1:0", false)
	require.NoError(t, err)
	c1, s1 := pair(t, ln)
	c2, s2 := pair(t, ln)

	require.NoError(t, Abort(s1))
	assert.True(t, isReset(readErr(t, c1)))
	require.NoError(t, s2.Close())
	assert.ErrorIs(t, readErr(t, c2), io.EOF, "the other connection closes with FIN")
	require.NoError(t, c2.Close())
	waitStates(t, port(ln.Addr()), nil, map[State]int{StateTimeWait: 1})
}

// TestAbort_TLSConn: Abort unwraps *tls.Conn through NetConn.
func TestAbort_TLSConn(t *testing.T) {
	ln, err := listenTCP(t, "tcp4", "127.0.0.1:0", false)
	require.NoError(t, err)
	client, server := pair(t, ln)
	require.NoError(t, Abort(tls.Server(server, &tls.Config{})))
	assert.True(t, isReset(readErr(t, client)))
}

// TestAbort_Errors: nil, a conn that is not TCP, and a closed conn are
// errors, and a conn Abort refused is left open.
func TestAbort_Errors(t *testing.T) {
	assert.EqualError(t, Abort(nil), "reuse: Abort(nil)")

	a, b := net.Pipe()
	defer b.Close()
	assert.ErrorContains(t, Abort(a), "net.pipe is not a TCP connection")
	assert.ErrorContains(t, Abort(nilWrapper{a}), "wraps a nil connection")
	require.NoError(t, a.Close(), "left open by Abort")

	path := filepath.Join(t.TempDir(), "s.sock")
	ul, err := Listen("unix", path)
	require.NoError(t, err)
	defer ul.Close()
	uc, err := net.Dial("unix", path)
	require.NoError(t, err)
	assert.ErrorContains(t, Abort(uc), "*net.UnixConn is not a TCP connection")
	require.NoError(t, uc.Close())

	ln, err := listenTCP(t, "tcp4", "127.0.0.1:0", false)
	require.NoError(t, err)
	_, server := pair(t, ln)
	require.NoError(t, server.Close())
	err = Abort(server)
	var op *net.OpError
	require.ErrorAs(t, err, &op)
	assert.Equal(t, "abort", op.Op)
	assert.ErrorIs(t, err, net.ErrClosed)
}

// TestRSTListener: the per-connection path Listen takes where accepted
// sockets may not inherit SO_LINGER (Windows, Solaris, AIX), run here on a
// listener without linger.
func TestRSTListener(t *testing.T) {
	inner, err := listenTCP(t, "tcp4", "127.0.0.1:0", false)
	require.NoError(t, err)
	ln := &rstListener{inner}
	require.Equal(t, int32(0), getLinger(t, inner).Onoff)
	client, server := pair(t, ln)
	assert.Equal(t, int32(1), getLinger(t, server).Onoff)
	require.NoError(t, server.Close())
	assert.True(t, isReset(readErr(t, client)))

	require.NoError(t, ln.Close())
	_, err = ln.Accept()
	assert.ErrorIs(t, err, net.ErrClosed)
}

// nilWrapper is a wrapper whose NetConn has nothing to give.
type nilWrapper struct{ net.Conn }

func (nilWrapper) NetConn() net.Conn { return nil }
