package reuse

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/windows"
)

// The helpers that linger_test.go and reuse_windows_test.go need on
// Windows, where they read Windows' own socket options and errors; the
// portable ones are in helpers_shared_test.go.

// onWine reports whether the test runs under Wine, whose ntdll exports
// wine_get_version and Windows' does not. Wine decides bind conflicts in
// its own table and turns on Linux SO_REUSEADDR on every TCP socket, so no
// bind rule it shows says anything about Windows.
var onWine = sync.OnceValue(func() bool {
	return windows.NewLazySystemDLL("ntdll.dll").NewProc("wine_get_version").Find() == nil
})

// unixOrSkip skips under Wine 8.0, which has no AF_UNIX sockets
// (WSAEAFNOSUPPORT); Windows 10 and later have them. If a Wine version
// has them, the test runs.
func unixOrSkip(t *testing.T) {
	t.Helper()
	if !onWine() {
		return
	}
	ln, err := net.Listen("unix", filepath.Join(os.TempDir(), fmt.Sprintf("reuse-probe-%d.sock", os.Getpid())))
	if err == nil {
		ln.Close()
		return
	}
	require.ErrorIs(t, err, windows.WSAEAFNOSUPPORT, "the known Wine failure, not another one")
	t.Skipf("under Wine: no AF_UNIX sockets (%v)", err)
}

func skipOnWine(t *testing.T, why string) {
	t.Helper()
	if onWine() {
		t.Skip("under Wine: " + why)
	}
}

// protocols: Windows has no MPTCP for Go to choose.
func protocols() map[string]bool { return map[string]bool{"tcp": false} }

// listenTCP listens as ListenConfig(opts...) does, on plain TCP.
func listenTCP(t *testing.T, network, addr string, mptcp bool, opts ...Option) (*net.TCPListener, error) {
	t.Helper()
	require.False(t, mptcp, "no MPTCP on Windows")
	lc := ListenConfig(opts...)
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(t.Context(), network, addr)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener), nil
}

// waitStates would compare the kernel's TCP states on port with want; this
// project reads that table on Linux only (GetTcpTable2 under Wine would show
// Linux's states, not Windows').
func waitStates(t *testing.T, port int, _ net.Conn, want map[State]int) {
	t.Helper()
	t.Logf("not checked on Windows: TCP states on local port %d, want %v", port, want)
}

// isReset: a reset connection reads WSAECONNRESET on Windows, or
// ERROR_NETNAME_DELETED when the read was already pending (as Go's own
// Windows tests allow); syscall.ECONNRESET there is a value Go invented.
func isReset(err error) bool {
	return errors.Is(err, windows.WSAECONNRESET) || errors.Is(err, windows.ERROR_NETNAME_DELETED)
}

func getInt(t *testing.T, c syscall.Conn, level, opt int) int {
	t.Helper()
	rc, err := c.SyscallConn()
	require.NoError(t, err)
	var v int
	var serr error
	require.NoError(t, rc.Control(func(fd uintptr) { v, serr = windows.GetsockoptInt(windows.Handle(fd), level, opt) }))
	require.NoError(t, serr)
	return v
}

// getLinger reads SO_LINGER, which Windows keeps as two u_shorts (struct
// linger in winsock2.h); x/sys/windows has no GetsockoptLinger.
func getLinger(t *testing.T, c syscall.Conn) windows.Linger {
	t.Helper()
	rc, err := c.SyscallConn()
	require.NoError(t, err)
	var l struct{ Onoff, Linger uint16 }
	n := int32(unsafe.Sizeof(l))
	var serr error
	require.NoError(t, rc.Control(func(fd uintptr) {
		serr = windows.Getsockopt(windows.Handle(fd), windows.SOL_SOCKET, windows.SO_LINGER, (*byte)(unsafe.Pointer(&l)), &n)
	}))
	require.NoError(t, serr)
	require.Equal(t, int32(unsafe.Sizeof(l)), n, "getsockopt SO_LINGER length")
	return windows.Linger{Onoff: int32(l.Onoff), Linger: int32(l.Linger)}
}

var procGetProcessHandleCount = windows.NewLazySystemDLL("kernel32.dll").NewProc("GetProcessHandleCount")

// handles counts this process's open handles, sockets included.
func handles(t *testing.T) uint32 {
	t.Helper()
	var n uint32
	r, _, err := procGetProcessHandleCount.Call(uintptr(windows.CurrentProcess()), uintptr(unsafe.Pointer(&n)))
	require.NotZero(t, r, "GetProcessHandleCount: %v", err)
	return n
}

// noLeak runs fn and checks that it leaves the handle count as it found
// it. The runtime opens some handles lazily (threads, events), once: a
// count that differs is measured again, and only one that grows on every
// run of fn fails.
func noLeak(t *testing.T, fn func()) {
	t.Helper()
	fn()
	var before, after uint32
	for range 3 {
		before = handles(t)
		fn()
		if after = handles(t); after == before {
			return
		}
	}
	require.Equal(t, before, after, "open handles before and after")
}
