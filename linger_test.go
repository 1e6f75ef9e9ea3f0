//go:build linux || windows

package reuse

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The tests in this file run on Linux and Windows. The socket table
// (waitStates) is read on Linux only, and errors are matched by errno
// (isReset), never by message.

// listenRST listens with WithRSTOnClose as a server would: through
// ListenConfig where accepted sockets inherit SO_LINGER, so that MPTCP or
// plain TCP can be chosen; through Listen, which sets it on each accepted
// connection, where they may not (Windows).
func listenRST(t *testing.T, network, addr string, mptcp bool) net.Listener {
	t.Helper()
	if traitsOf(runtime.GOOS).lingerInherited {
		ln, err := listenTCP(t, network, addr, mptcp, WithRSTOnClose())
		require.NoError(t, err)
		return ln
	}
	require.False(t, mptcp)
	ln, err := Listen(network, addr, WithRSTOnClose())
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	require.IsType(t, &lingerListener{}, ln, "Listen sets SO_LINGER on each accepted connection here")
	return ln
}

// sawReset reads from c, whose peer has just closed, and reports whether
// the close was a reset. Wine 8.0 hands a reset to Read as io.EOF, so under
// Wine the Write that follows tells: after a reset it fails with
// WSAECONNRESET, after a FIN it succeeds.
func sawReset(t *testing.T, c net.Conn) bool {
	t.Helper()
	err := readErr(t, c)
	if onWine() && errors.Is(err, io.EOF) {
		_, err = c.Write([]byte{'x'})
	}
	if !isReset(err) {
		t.Logf("not a reset: %v", err)
		return false
	}
	return true
}

// TestRSTOnClose_ClientSeesResetThenEOF: one RST; the client's first Read
// fails with ECONNRESET (WSAECONNRESET on Windows) and the server's port
// keeps no TIME_WAIT. On Linux the next Read returns io.EOF and a Write
// fails with EPIPE; Windows documents no such sequence, and Wine would show
// Linux's.
func TestRSTOnClose_ClientSeesResetThenEOF(t *testing.T) {
	for network, host := range hosts(t) {
		for proto, mptcp := range protocols() {
			t.Run(network+"/"+proto, func(t *testing.T) {
				ln := listenRST(t, network, hostPort(host, 0), mptcp)
				client, server := pair(t, ln)
				require.Equal(t, int32(1), getLinger(t, server).Onoff, "SO_LINGER on the accepted connection")
				require.NoError(t, server.Close())

				assert.True(t, sawReset(t, client), "first Read: connection reset")
				if runtime.GOOS == "linux" {
					assert.ErrorIs(t, readErr(t, client), io.EOF, "second Read")
					_, err := client.Write([]byte("x"))
					assert.ErrorIs(t, err, syscall.EPIPE)
				}
				waitStates(t, port(ln.Addr()), nil, map[State]int{})
			})
		}
	}
}

// TestRSTOnClose_DiscardsUnsentData: data still in the server's send queue
// at Close never reaches the client. Data already delivered is read first;
// then the client's Read fails with ECONNRESET.
func TestRSTOnClose_DiscardsUnsentData(t *testing.T) {
	ln := listenRST(t, "tcp4", "127.0.0.1:0", false)
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
	if onWine() && err == nil {
		_, err = client.Write([]byte{'x'}) // see sawReset
	}
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
	assert.True(t, sawReset(t, s))
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
	assert.True(t, sawReset(t, c1))
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
	assert.True(t, sawReset(t, client))
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

	t.Run("unix", func(t *testing.T) {
		unixOrSkip(t)
		path := filepath.Join(t.TempDir(), "s.sock")
		ul, err := Listen("unix", path)
		require.NoError(t, err)
		defer ul.Close()
		uc, err := net.Dial("unix", path)
		require.NoError(t, err)
		assert.ErrorContains(t, Abort(uc), "*net.UnixConn is not a TCP connection")
		require.NoError(t, uc.Close())
	})

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

// TestAbort_NilAndZeroValues: every nil, typed nil and zero value that
// Abort's net.Conn accepts is an error, never a panic, and one that wraps a
// real connection leaves it open.
func TestAbort_NilAndZeroValues(t *testing.T) {
	cfg := &tls.Config{}
	for name, c := range map[string]struct {
		conn net.Conn
		want string
	}{
		"nil":                           {nil, "reuse: Abort(nil)"},
		"nil *net.TCPConn":              {(*net.TCPConn)(nil), "reuse: Abort of a nil *net.TCPConn"},
		"nil *net.UnixConn":             {(*net.UnixConn)(nil), "reuse: Abort of a nil *net.UnixConn"},
		"nil *net.UDPConn":              {(*net.UDPConn)(nil), "reuse: Abort of a nil *net.UDPConn"},
		"nil *tls.Conn":                 {(*tls.Conn)(nil), "reuse: Abort of a nil *tls.Conn"},
		"tls over a nil *net.TCPConn":   {tls.Client((*net.TCPConn)(nil), cfg), "reuse: Abort: *tls.Conn wraps a nil connection"},
		"tls over nil":                  {tls.Server(nil, cfg), "reuse: Abort: *tls.Conn wraps a nil connection"},
		"zero tls.Conn":                 {&tls.Conn{}, "reuse: Abort: *tls.Conn wraps a nil connection"},
		"wrapper of a nil *net.TCPConn": {typedNilWrapper{}, "reuse: Abort: reuse.typedNilWrapper wraps a nil connection"},
		"nil wrapper pointer":           {(*typedNilWrapper)(nil), "reuse: Abort of a nil *reuse.typedNilWrapper"},
		"zero net.TCPConn":              {&net.TCPConn{}, "reuse: Abort: *net.TCPConn has no socket"},
		"zero net.UnixConn":             {&net.UnixConn{}, "reuse: Abort: *net.UnixConn has no socket"},
		"tls over a zero net.TCPConn":   {tls.Client(&net.TCPConn{}, cfg), "reuse: Abort: *net.TCPConn has no socket"},
	} {
		t.Run(name, func(t *testing.T) {
			var err error
			require.NotPanics(t, func() { err = Abort(c.conn) })
			assert.EqualError(t, err, c.want)
		})
	}

	// A tls.Conn over a live connection whose inner wrapper gives up: the
	// connection is left open.
	ln, err := listenTCP(t, "tcp4", "127.0.0.1:0", false)
	require.NoError(t, err)
	client, server := pair(t, ln)
	assert.Error(t, Abort(tls.Client(nilWrapper{server}, cfg)))
	_, err = server.Write([]byte{'y'})
	require.NoError(t, err, "left open by Abort")
	require.NoError(t, client.SetReadDeadline(time.Now().Add(2*time.Second)))
	_, err = io.ReadFull(client, make([]byte, 1))
	require.NoError(t, err)
}

// TestRSTListener: the per-connection path Listen takes where accepted
// sockets may not inherit SO_LINGER (Windows, Solaris, AIX), run here on a
// listener without linger.
func TestRSTListener(t *testing.T) {
	inner, err := listenTCP(t, "tcp4", "127.0.0.1:0", false)
	require.NoError(t, err)
	ln := &lingerListener{inner, true}
	require.Equal(t, int32(0), getLinger(t, inner).Onoff)
	client, server := pair(t, ln)
	assert.Equal(t, int32(1), getLinger(t, server).Onoff)
	require.NoError(t, server.Close())
	assert.True(t, sawReset(t, client))

	require.NoError(t, ln.Close())
	_, err = ln.Accept()
	assert.ErrorIs(t, err, net.ErrClosed)
}

// nilWrapper is a wrapper whose NetConn has nothing to give.
type nilWrapper struct{ net.Conn }

func (nilWrapper) NetConn() net.Conn { return nil }

// typedNilWrapper is a wrapper whose NetConn gives a typed nil.
type typedNilWrapper struct{ net.Conn }

func (typedNilWrapper) NetConn() net.Conn { return (*net.TCPConn)(nil) }
