package census

import (
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// unixStat returns the device and inode of path as stat(2) gives them.
func unixStat(t *testing.T, path string) (dev, ino uint64) {
	t.Helper()
	var st unix.Stat_t
	require.NoError(t, unix.Lstat(path, &st))
	require.Equal(t, uint32(unix.S_IFSOCK), st.Mode&unix.S_IFMT, "%s is a socket", path)
	return uint64(st.Dev), st.Ino
}

// unixDirs are directories on filesystems with different device numbers:
// the test's own (the root filesystem here: 254:0, a block device, so the
// kernel's and stat's dev_t encodings differ) and /dev/shm (tmpfs, 0:N).
func unixDirs(t *testing.T) []string {
	dirs := []string{t.TempDir()}
	if shm, err := os.MkdirTemp("/dev/shm", "census-"); err == nil {
		t.Cleanup(func() { os.RemoveAll(shm) })
		dirs = append(dirs, shm)
	}
	return dirs
}

// TestUnixBound_KernelTable: a listening socket is bound and listening; a
// socket bound with bind(2) alone is bound, not listening; a socket file
// whose socket was closed is neither; so is a file that was never a socket
// of this namespace's table (another socket's inode on another device).
func TestUnixBound_KernelTable(t *testing.T) {
	for _, dir := range unixDirs(t) {
		live := filepath.Join(dir, "live.sock")
		ln, err := net.Listen("unix", live)
		require.NoError(t, err)
		defer ln.Close()
		dev, ino := unixStat(t, live)
		t.Logf("%s: st_dev %d:%d (%#x), ino %d", live, unix.Major(dev), unix.Minor(dev), dev, ino)
		bound, listening, err := UnixBound(dev, ino)
		require.NoError(t, err)
		assert.True(t, bound, "%s is bound", live)
		assert.True(t, listening, "%s listens", live)

		bare := filepath.Join(dir, "bound.sock")
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		require.NoError(t, err)
		defer unix.Close(fd)
		require.NoError(t, unix.Bind(fd, &unix.SockaddrUnix{Name: bare}))
		dev, ino = unixStat(t, bare)
		bound, listening, err = UnixBound(dev, ino)
		require.NoError(t, err)
		assert.True(t, bound, "%s is bound", bare)
		assert.False(t, listening, "%s does not listen", bare)

		stale := filepath.Join(dir, "stale.sock")
		sl, err := net.Listen("unix", stale)
		require.NoError(t, err)
		sl.(*net.UnixListener).SetUnlinkOnClose(false)
		require.NoError(t, sl.Close())
		dev, ino = unixStat(t, stale)
		bound, listening, err = UnixBound(dev, ino)
		require.NoError(t, err)
		assert.False(t, bound, "%s is stale", stale)
		assert.False(t, listening)

		// The live socket's inode on another device is not it.
		dev, ino = unixStat(t, live)
		bound, _, err = UnixBound(dev+1, ino)
		require.NoError(t, err)
		assert.False(t, bound, "the device is part of the match")
	}
}

// unixMsg builds one reply message: a unix_diag_msg in state, with a
// UNIX_DIAG_VFS attribute when vfs is not nil.
func unixMsg(seq uint32, state uint8, vfs *unixVFS) []byte {
	ne := binary.NativeEndian
	body := make([]byte, unixSizeofDiagMsg)
	body[0], body[1], body[2] = unix.AF_UNIX, unix.SOCK_STREAM, state
	if vfs != nil {
		attr := ne.AppendUint16(nil, unix.SizeofNlAttr+unixSizeofDiagVFS)
		attr = ne.AppendUint16(attr, unixDiagVFS)
		attr = ne.AppendUint32(attr, vfs.ino)
		attr = ne.AppendUint32(attr, vfs.dev)
		body = append(body, attr...)
	}
	return unixNlMsg(unix.SOCK_DIAG_BY_FAMILY, seq, body)
}

func unixNlMsg(typ uint16, seq uint32, body []byte) []byte {
	ne := binary.NativeEndian
	b := ne.AppendUint32(nil, uint32(unix.SizeofNlMsghdr+len(body)))
	b = ne.AppendUint16(b, typ)
	b = ne.AppendUint16(b, unix.NLM_F_MULTI)
	b = ne.AppendUint32(b, seq)
	b = ne.AppendUint32(b, 0)
	return append(b, body...)
}

// TestUnixScan: replies the kernel tests above do not make on demand.
func TestUnixScan(t *testing.T) {
	want := unixVFS{ino: 7, dev: 254 << 20}
	other := unixVFS{ino: 7, dev: 27}
	minusEPERM := -int32(unix.EPERM)
	errno := binary.NativeEndian.AppendUint32(nil, uint32(minusEPERM))
	for _, c := range []struct {
		name             string
		b                []byte
		done             bool
		bound, listening bool
		err              string
	}{
		{"unbound, other file, then the one, bound", slices.Concat(unixMsg(1, 7, nil), unixMsg(1, 10, &other), unixMsg(1, 7, &want)), false, true, false, ""},
		{"listening", unixMsg(1, unixStateListen, &want), false, true, true, ""},
		{"another request's answer", unixMsg(2, unixStateListen, &want), false, false, false, ""},
		{"done", unixNlMsg(unix.NLMSG_DONE, 1, make([]byte, 4)), true, false, false, ""},
		{"dump failed", unixNlMsg(unix.NLMSG_DONE, 1, errno), false, false, false, "dump: operation not permitted"},
		{"request refused", unixNlMsg(unix.NLMSG_ERROR, 1, errno), false, false, false, "request: operation not permitted"},
		{"short message", unixNlMsg(unix.SOCK_DIAG_BY_FAMILY, 1, make([]byte, 8)), false, false, false, "malformed unix_diag_msg of 8 bytes"},
		{"length past the end", unixMsg(1, 7, &want)[:20], false, false, false, "malformed message: length 44, 20 bytes left"},
	} {
		var bound, listening bool
		done, err := eachMessage(c.b, 1, unixScan(want, &bound, &listening))
		if c.err != "" {
			assert.EqualError(t, err, c.err, c.name)
			continue
		}
		require.NoError(t, err, c.name)
		assert.Equal(t, c.done, done, c.name)
		assert.Equal(t, c.bound, bound, c.name)
		assert.Equal(t, c.listening, listening, c.name)
	}
}
