package reuse

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// stale leaves a socket file at path that no one listens on, as a server
// killed with SIGKILL does.
func stale(t *testing.T, network, path string) {
	t.Helper()
	ln, err := net.Listen(network, path)
	require.NoError(t, err)
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	require.NoError(t, ln.Close())
	fi, err := os.Lstat(path)
	require.NoError(t, err)
	require.Equal(t, os.ModeSocket, fi.Mode().Type())
}

// inode returns path's identity (see fileID), not following a final
// symbolic link.
func inode(t *testing.T, path string) fileID {
	t.Helper()
	var st unix.Stat_t
	require.NoError(t, unix.Lstat(path, &st), path)
	return idOf(&st)
}

// names lists dir.
func names(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// answers checks that a server listens at path.
func answers(t *testing.T, network, path string) {
	t.Helper()
	c, err := net.DialTimeout(network, path, 2*time.Second)
	require.NoError(t, err, "a server answers at %s", path)
	c.Close()
}

// requireUnixInUse checks a unix Listen's address-in-use error and its
// reason, and returns its message.
func requireUnixInUse(t *testing.T, err error, r Reason) string {
	t.Helper()
	e := requireAddrInUse(t, err)
	assert.Equal(t, r, e.Diagnosis().Reason, "reason of %q", e.Error())
	return e.Error()
}

// TestUnix_StaleSocketIsReplaced: a socket file whose server is gone is
// removed and bound again, and nothing is left beside the new socket.
func TestUnix_StaleSocketIsReplaced(t *testing.T) {
	for _, network := range []string{"unix", "unixpacket"} {
		t.Run(network, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "s.sock")
			stale(t, network, path)
			_, err := net.Listen(network, path)
			require.True(t, IsAddrInUse(err), "the stdlib fails on a stale file: %v", err)

			noLeak(t, func() {
				old := inode(t, path)
				ln, err := Listen(network, path)
				require.NoError(t, err)
				assert.NotEqual(t, old, inode(t, path), "a new socket file")
				answers(t, network, path)
				assert.Equal(t, []string{"s.sock"}, names(t, dir), "nothing beside the socket")
				ln.(*net.UnixListener).SetUnlinkOnClose(false)
				require.NoError(t, ln.Close()) // leaves the file stale again for the next run
			})
		})
	}
}

// TestUnix_LeftoverLockFileIsRemoved: a lock file left by a peer that
// crashed while it held it (this user's, mode 0600, unlocked) is taken and
// removed with the stale socket; files beside it that are not the lock are
// left alone.
func TestUnix_LeftoverLockFileIsRemoved(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	stale(t, "unix", path)
	require.NoError(t, os.WriteFile(path+".lock", nil, 0o600))
	require.NoError(t, os.WriteFile(path+".old", []byte("keep"), 0o600))
	ln, err := Listen("unix", path)
	require.NoError(t, err)
	defer ln.Close()
	answers(t, "unix", path)
	assert.Equal(t, []string{"s.sock", "s.sock.old"}, names(t, dir))
}

// TestUnix_FreshBindTakesNoLock: a Listen on a free path binds as net.Listen
// does and makes no file beside the socket.
func TestUnix_FreshBindTakesNoLock(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	ln, err := Listen("unix", path)
	require.NoError(t, err)
	assert.Equal(t, []string{"s.sock"}, names(t, dir))
	require.NoError(t, ln.Close())
	assert.Empty(t, names(t, dir), "Close unlinks, as net's does")
}

// TestUnix_LiveSocketIsLeftAlone: a path where a server answers is never
// removed, nor one whose accept queue is full (EAGAIN, not ECONNREFUSED).
func TestUnix_LiveSocketIsLeftAlone(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	live, err := Listen("unix", path)
	require.NoError(t, err)
	defer live.Close()
	noLeak(t, func() {
		_, err := Listen("unix", path)
		msg := requireUnixInUse(t, err, ReasonListener)
		assert.Contains(t, msg, "a server answers at "+path+"; it was left alone")
	})
	answers(t, "unix", path)

	// A listener with backlog 0 whose queue is full.
	full := filepath.Join(dir, "full.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(fd)
	require.NoError(t, unix.Bind(fd, &unix.SockaddrUnix{Name: full}))
	require.NoError(t, unix.Listen(fd, 0))
	var queued []net.Conn
	defer func() {
		for _, c := range queued {
			c.Close()
		}
	}()
	for range 8 {
		d := net.Dialer{Timeout: 100 * time.Millisecond}
		c, err := d.Dial("unix", full)
		if err != nil {
			break
		}
		queued = append(queued, c)
	}
	require.Less(t, len(queued), 8, "the queue filled up")
	_, err = Listen("unix", full)
	msg := requireUnixInUse(t, err, ReasonListener)
	assert.Contains(t, msg, "a server answers at "+full)
	assert.Equal(t, []string{"full.sock", "s.sock"}, names(t, dir), "no lock file either")
}

// TestUnix_NotASocketIsLeftAlone: a regular file, a directory, a named pipe
// or a symbolic link (even to a stale socket) at the path is never touched.
func TestUnix_NotASocketIsLeftAlone(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	content := []byte("precious bytes\n")
	require.NoError(t, os.WriteFile(file, content, 0o600))
	sub := filepath.Join(dir, "dir")
	require.NoError(t, os.Mkdir(sub, 0o700))
	fifo := filepath.Join(dir, "fifo")
	require.NoError(t, unix.Mkfifo(fifo, 0o600))
	target := filepath.Join(dir, "target.sock")
	stale(t, "unix", target)
	link := filepath.Join(dir, "link")
	require.NoError(t, os.Symlink(target, link))
	before := map[string]fileID{}
	for _, p := range []string{file, sub, fifo, target, link} {
		before[p] = inode(t, p)
	}
	for path, what := range map[string]string{
		file: "a regular file", sub: "a directory", fifo: "a named pipe", link: "a symbolic link",
	} {
		noLeak(t, func() {
			_, err := Listen("unix", path)
			msg := requireUnixInUse(t, err, ReasonNotSocket)
			assert.Contains(t, msg, path+" is "+what+", not a socket; it was left alone")
		})
	}
	for p, ino := range before {
		assert.Equal(t, ino, inode(t, p), "%s is the same file", p)
	}
	got, err := os.ReadFile(file)
	require.NoError(t, err)
	assert.Equal(t, content, got, "the regular file's bytes are unchanged")
	assert.ElementsMatch(t, []string{"file", "dir", "fifo", "target.sock", "link"}, names(t, dir))
}

// TestUnix_BoundNotListeningIsLeftAlone: a socket bound but not yet
// listening refuses connects just as a stale one does; the kernel's table
// tells them apart, and Listen leaves it to its owner.
func TestUnix_BoundNotListeningIsLeftAlone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(fd)
	require.NoError(t, unix.Bind(fd, &unix.SockaddrUnix{Name: path}))
	_, err = net.DialTimeout("unix", path, time.Second)
	require.ErrorIs(t, err, syscall.ECONNREFUSED, "it refuses like a stale one")
	ino := inode(t, path)
	noLeak(t, func() {
		_, err := Listen("unix", path)
		msg := requireUnixInUse(t, err, ReasonBound)
		assert.Contains(t, msg, "a socket is bound to "+path+" without listening")
	})
	assert.Equal(t, ino, inode(t, path))
	require.NoError(t, unix.Listen(fd, 8))
	answers(t, "unix", path) // its owner's socket still works
}

// TestUnix_OtherUsersSocketIsLeftAlone: in a directory only root can
// write, a stale socket that belongs to another user is not this user's to
// replace.
func TestUnix_OtherUsersSocketIsLeftAlone(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a file away")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	stale(t, "unix", path)
	require.NoError(t, os.Lchown(path, nobody, nobody))
	ino := inode(t, path)
	noLeak(t, func() {
		_, err := Listen("unix", path)
		msg := requireUnixInUse(t, err, ReasonStale)
		assert.Contains(t, msg, path+" is a stale socket (no socket in this network namespace is bound to it); not replaced: it belongs to user 65534")
	})
	assert.Equal(t, ino, inode(t, path))
	assert.Equal(t, []string{"s.sock"}, names(t, dir))
}

// TestUnix_ConcurrentStartsOnStalePath: processes starting at once on a
// stale path (here goroutines, which take the same flock on separate open
// files) end with exactly one listener, it answers, and nothing is left
// beside it. The others report a server, or a socket not yet listening.
func TestUnix_ConcurrentStartsOnStalePath(t *testing.T) {
	for range 20 {
		dir := t.TempDir()
		path := filepath.Join(dir, "s.sock")
		stale(t, "unix", path)
		const n = 8
		type result struct {
			ln  net.Listener
			err error
		}
		results := make(chan result, n)
		for range n {
			go func() {
				ln, err := Listen("unix", path)
				results <- result{ln, err}
			}()
		}
		var winners []net.Listener
		for range n {
			r := <-results
			if r.err != nil {
				// Between the winner's bind and listen, its socket is
				// bound without listening; after, it answers.
				e := requireAddrInUse(t, r.err)
				assert.Contains(t, []Reason{ReasonListener, ReasonBound}, e.Diagnosis().Reason, "%v", e)
				continue
			}
			winners = append(winners, r.ln)
		}
		require.Len(t, winners, 1)
		answers(t, "unix", path)
		assert.Equal(t, []string{"s.sock"}, names(t, dir), "nothing beside the socket")
		winners[0].Close()
	}
}

// TestUnix_UnusableLockFile: when path.lock is not a regular file of this
// user that only this user can open (a directory, a symbolic link, which
// is not followed, a named pipe, a file others can read, another user's
// file), a stale file is reported, not replaced, and the lock file is left
// as it was; a free path binds regardless, as the lock is not looked at.
func TestUnix_UnusableLockFile(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	for name, c := range map[string]struct {
		make func(lock string) error
		why  string
	}{
		"dir":     {func(l string) error { return os.Mkdir(l, 0o700) }, "is a directory"},
		"symlink": {func(l string) error { return os.Symlink(target, l) }, "is a symbolic link"},
		"fifo":    {func(l string) error { return unix.Mkfifo(l, 0o600) }, "is a named pipe"},
		"mode":    {func(l string) error { return os.WriteFile(l, nil, 0o644) }, "can be opened by other users (mode 0644)"},
		"owner": {func(l string) error {
			return errors.Join(os.WriteFile(l, nil, 0o600), os.Lchown(l, nobody, nobody))
		}, "belongs to user 65534"},
	} {
		t.Run(name, func(t *testing.T) {
			if name == "owner" && os.Geteuid() != 0 {
				t.Skip("needs root to give a file away")
			}
			path := filepath.Join(dir, name+".sock")
			lock := path + ".lock"
			require.NoError(t, c.make(lock))
			ln, err := Listen("unix", path)
			require.NoError(t, err, "a free path binds")
			require.NoError(t, ln.Close())

			stale(t, "unix", path)
			ino, lockIno := inode(t, path), inode(t, lock)
			noLeak(t, func() {
				_, err := Listen("unix", path)
				msg := requireUnixInUse(t, err, ReasonStale)
				assert.Contains(t, msg, path+" is a stale socket")
				assert.Contains(t, msg, "not replaced: lock file "+lock+" "+c.why)
			})
			assert.Equal(t, ino, inode(t, path))
			assert.Equal(t, lockIno, inode(t, lock))
			_, err = os.Lstat(target)
			assert.ErrorIs(t, err, os.ErrNotExist, "the lock file's symbolic link was not followed")
		})
	}
}

// TestUnix_AbstractAutobindMissingDir: paths without a file fail or
// succeed as net.Listen's do, with its error.
func TestUnix_AbstractAutobindMissingDir(t *testing.T) {
	name := "@reuse-test-" + strconv.Itoa(os.Getpid())
	ln, err := Listen("unix", name)
	require.NoError(t, err)
	defer ln.Close()
	_, stdErr := net.Listen("unix", name)
	require.True(t, IsAddrInUse(stdErr))
	noLeak(t, func() {
		_, err = Listen("unix", name)
		require.Error(t, err)
		assert.Equal(t, stdErr.Error(), err.Error(), "an abstract socket has no file to replace")
	})

	auto, err := Listen("unix", "")
	require.NoError(t, err, "autobind")
	assert.True(t, strings.HasPrefix(auto.Addr().String(), "@"), "%s", auto.Addr())
	require.NoError(t, auto.Close())

	dir := t.TempDir() + "/" // not a file name: a directory, with a slash
	_, stdErr = net.Listen("unix", dir)
	t.Logf("net.Listen(%q): %v", dir, stdErr)
	noLeak(t, func() {
		_, err = Listen("unix", dir)
		require.Error(t, err)
		assert.Equal(t, errnoOf(stdErr), errnoOf(err))
		if IsAddrInUse(err) {
			assert.Contains(t, requireUnixInUse(t, err, ReasonUnknown), dir+" does not end in a file name")
		}
	})

	missing := filepath.Join(t.TempDir(), "missing", "s.sock")
	_, stdErr = net.Listen("unix", missing)
	_, err = Listen("unix", missing)
	require.Error(t, err)
	assert.ErrorIs(t, err, os.ErrNotExist)
	assert.Equal(t, stdErr.Error(), err.Error())
}

// TestUnix_PathTooLongFailsAsNetListenDoes: a path too long for
// sockaddr_un fails with EINVAL, as net.Listen's does, and nothing is made
// beside it.
func TestUnix_PathTooLongFailsAsNetListenDoes(t *testing.T) {
	dir := t.TempDir()
	for _, path := range []string{
		filepath.Join(dir, strings.Repeat("x", 120)),
		filepath.Join(dir, strings.Repeat("y", 252)),
		filepath.Join(dir, "missing", strings.Repeat("z", 100)),
	} {
		_, stdErr := net.Listen("unix", path)
		require.ErrorIs(t, stdErr, syscall.EINVAL)
		noLeak(t, func() {
			ln, err := Listen("unix", path)
			require.Nil(t, ln)
			assert.ErrorIs(t, err, syscall.EINVAL)
			assert.Equal(t, stdErr.Error(), err.Error())
		})
	}
	assert.Empty(t, names(t, dir))
}

// holdLock takes the lock a peer instance would hold on path's stale
// socket, as this package takes it, and returns its release, which removes
// the file first, as the package's does.
func holdLock(t *testing.T, path string) func() {
	t.Helper()
	fd, err := unix.Open(path+".lock", unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	require.NoError(t, err)
	require.NoError(t, unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB))
	done := false
	release := func() {
		if !done {
			done = true
			unix.Unlink(path + ".lock")
			unix.Close(fd)
		}
	}
	t.Cleanup(release)
	return release
}

// TestUnix_LockWaitEndsAtTheDeadline: while a peer (same user) holds the
// lock on a stale path, Listen waits until ctx's deadline, a longer one
// longer, with an error for which errors.Is(err, context.DeadlineExceeded)
// holds; without a deadline it waits unixLockWait. Nothing is removed.
func TestUnix_LockWaitEndsAtTheDeadline(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	stale(t, "unix", path)
	holdLock(t, path)
	ino := inode(t, path)
	for _, wait := range []time.Duration{300 * time.Millisecond, 1200 * time.Millisecond, 0} {
		before := fds(t)
		start := time.Now() // before the deadline is set, so took >= wait
		ctx, cancel := context.Background(), func() {}
		if wait > 0 {
			ctx, cancel = context.WithTimeout(ctx, wait)
		}
		ln, err := ListenContext(ctx, "unix", path)
		took := time.Since(start)
		cancel()
		require.Nil(t, ln)
		t.Logf("deadline %v: returned after %v: %v", wait, took, err)
		if wait > 0 {
			assert.ErrorIs(t, err, context.DeadlineExceeded)
			assert.False(t, IsAddrInUse(err), "%v", err)
			var op *net.OpError
			assert.ErrorAs(t, err, &op)
			assert.Contains(t, err.Error(), "while waiting for "+path+".lock")
			assert.GreaterOrEqual(t, took, wait)
			assert.Less(t, took, wait+time.Second, "not the default %v", unixLockWait)
		} else {
			msg := requireUnixInUse(t, err, ReasonStale)
			assert.Contains(t, msg, path+".lock stayed locked by another process for 3s")
			assert.GreaterOrEqual(t, took, unixLockWait)
			assert.Less(t, took, unixLockWait+time.Second)
		}
		assert.Equal(t, before, fds(t), "open fds")
	}
	assert.Equal(t, ino, inode(t, path), "the stale socket is still there")
	assert.ElementsMatch(t, []string{"s.sock", "s.sock.lock"}, names(t, dir), "the peer's lock file is its own")
}

// TestUnix_LockWaitEndsWhenThePeerIsDone: a Listen that waits for a peer's
// lock goes on when the peer releases it, and replaces the stale socket,
// also when the peer left a new one; one whose ctx is cancelled returns
// context.Canceled at once.
func TestUnix_LockWaitEndsWhenThePeerIsDone(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	stale(t, "unix", path)
	release := holdLock(t, path)
	done := make(chan error, 1)
	go listenWaitingForLock(context.Background(), path, done)
	waitForGoroutine(t, "reuse.listenWaitingForLock", "reuse.unixWaitLock")
	release()
	select {
	case err := <-done:
		require.NoError(t, err, "the stale socket was replaced once the peer was done")
	case <-time.After(unixLockWait):
		t.Fatal("still waiting after the peer released the lock")
	}
	assert.Empty(t, names(t, dir), "the listener closed, and no lock file is left")

	// A peer that left a new stale file (it crashed after its bind) before
	// releasing: the file is not the one seen before the wait, so Listen
	// looks again from the start, then replaces it.
	stale(t, "unix", path)
	release = holdLock(t, path)
	go listenWaitingForLock(context.Background(), path, done)
	waitForGoroutine(t, "reuse.listenWaitingForLock", "reuse.unixWaitLock")
	require.NoError(t, os.Remove(path))
	stale(t, "unix", path)
	release()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(unixLockWait):
		t.Fatal("still waiting after the peer released the lock")
	}
	assert.Empty(t, names(t, dir))

	stale(t, "unix", path)
	holdLock(t, path)
	before := fds(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go listenWaitingForLock(ctx, path, done)
	waitForGoroutine(t, "reuse.listenWaitingForLock", "reuse.unixWaitLock")
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.Canceled)
		assert.False(t, IsAddrInUse(err), "%v", err)
		var op *net.OpError
		assert.ErrorAs(t, err, &op)
		t.Logf("returned %v after cancel: %v", time.Since(start), err)
	case <-time.After(unixLockWait):
		t.Fatal("still waiting after cancel")
	}
	assert.Equal(t, before, fds(t), "open fds")
	assert.ElementsMatch(t, []string{"s.sock", "s.sock.lock"}, names(t, dir))
}

func listenWaitingForLock(ctx context.Context, path string, done chan<- error) {
	ln, err := ListenContext(ctx, "unix", path)
	if ln != nil {
		ln.Close()
	}
	done <- err
}

// TestUnix_TrustWalk: a stale socket is replaced only where no user but
// this one and root can change what the path resolves to.
func TestUnix_TrustWalk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give directories away")
	}
	type layout struct {
		name  string
		setup func(t *testing.T, base string) string // returns the socket's path
		why   string                                 // "" when it is replaced
	}
	mkdir := func(t *testing.T, dir string, mode uint32, uid int) {
		t.Helper()
		require.NoError(t, os.Mkdir(dir, 0o700))
		require.NoError(t, unix.Chmod(dir, mode)) // os.Chmod would drop 0o1000
		require.NoError(t, os.Lchown(dir, uid, uid))
	}
	in := func(mode uint32, uid int) func(*testing.T, string) string {
		return func(t *testing.T, base string) string {
			mkdir(t, filepath.Join(base, "d"), mode, uid)
			return filepath.Join(base, "d", "s.sock")
		}
	}
	for _, c := range []layout{
		{"0700", in(0o700, 0), ""},
		{"0755", in(0o755, 0), ""},
		{"group-writable", in(0o775, 0), "/d can be written by other users"},
		{"world-writable", in(0o757, 0), "/d can be written by other users"},
		{"sticky, last", in(0o1777, 0), "/d can be written by other users"},
		{"another user's", in(0o755, nobody), "/d belongs to user 65534"},
		{"root's dir in a sticky dir", func(t *testing.T, base string) string {
			mkdir(t, filepath.Join(base, "tmp"), 0o1777, 0)
			mkdir(t, filepath.Join(base, "tmp", "d"), 0o755, 0)
			return filepath.Join(base, "tmp", "d", "s.sock")
		}, ""},
		{"another user's dir in a sticky dir", func(t *testing.T, base string) string {
			mkdir(t, filepath.Join(base, "tmp"), 0o1777, 0)
			mkdir(t, filepath.Join(base, "tmp", "d"), 0o700, nobody)
			return filepath.Join(base, "tmp", "d", "s.sock")
		}, "/tmp/d belongs to user 65534"},
		{"root's link in a sticky dir", func(t *testing.T, base string) string {
			mkdir(t, filepath.Join(base, "tmp"), 0o1777, 0)
			mkdir(t, filepath.Join(base, "d"), 0o755, 0)
			require.NoError(t, os.Symlink(filepath.Join(base, "d"), filepath.Join(base, "tmp", "link")))
			return filepath.Join(base, "tmp", "link", "s.sock")
		}, ""},
		{"another user's link in a sticky dir", func(t *testing.T, base string) string {
			mkdir(t, filepath.Join(base, "tmp"), 0o1777, 0)
			mkdir(t, filepath.Join(base, "d"), 0o755, 0)
			link := filepath.Join(base, "tmp", "link")
			require.NoError(t, os.Symlink(filepath.Join(base, "d"), link))
			require.NoError(t, os.Lchown(link, nobody, nobody))
			return filepath.Join(link, "s.sock")
		}, "/tmp/link belongs to user 65534 and is in "},
		{"relative links and dot-dot", func(t *testing.T, base string) string {
			mkdir(t, filepath.Join(base, "a"), 0o755, 0)
			mkdir(t, filepath.Join(base, "a", "b"), 0o755, 0)
			mkdir(t, filepath.Join(base, "c"), 0o700, 0)
			require.NoError(t, os.Symlink("../../c", filepath.Join(base, "a", "b", "up")))
			return base + "/a/b/up/../a/./b//up/s.sock" // up/.. is base, not filepath.Join's a/b
		}, ""},
		{"dot-dot into a writable dir", func(t *testing.T, base string) string {
			mkdir(t, filepath.Join(base, "w"), 0o777, 0)
			mkdir(t, filepath.Join(base, "w", "d"), 0o755, 0)
			require.NoError(t, os.Symlink(filepath.Join(base, "w", "d"), filepath.Join(base, "link")))
			return base + "/link/../s.sock" // w, not filepath.Join's base
		}, "/w can be written by other users"},
		{"relative to the working directory", func(t *testing.T, base string) string {
			mkdir(t, filepath.Join(base, "d"), 0o755, 0)
			t.Chdir(base)
			return filepath.Join("d", "s.sock")
		}, ""},
		{"through /proc", func(t *testing.T, base string) string {
			mkdir(t, filepath.Join(base, "d"), 0o755, 0)
			t.Chdir(filepath.Join(base, "d"))
			return "/proc/self/cwd/s.sock"
		}, "/proc/self is a link in /proc"},
	} {
		t.Run(c.name, func(t *testing.T) {
			base := t.TempDir()
			path := c.setup(t, base)
			stale(t, "unix", path)
			ino := inode(t, path)
			dir := path[:strings.LastIndexByte(path, '/')] // not filepath.Dir, which cleans ".."
			if c.why == "" {
				ln, err := Listen("unix", path)
				require.NoError(t, err)
				defer ln.Close()
				assert.NotEqual(t, ino, inode(t, path), "replaced")
				answers(t, "unix", path)
				assert.Equal(t, []string{"s.sock"}, names(t, dir))
				return
			}
			noLeak(t, func() {
				_, err := Listen("unix", path)
				msg := requireUnixInUse(t, err, ReasonStale)
				assert.Contains(t, msg, "is a stale socket")
				assert.Contains(t, msg, "; not replaced: ")
				assert.Contains(t, msg, c.why)
			})
			assert.Equal(t, ino, inode(t, path), "not replaced")
			assert.NotContains(t, names(t, dir), "s.sock.lock")
		})
	}
}

// BenchmarkUnixListen compares Listen with net.Listen on a free path (the
// same calls), on a path where a server answers (both fail; Listen also
// connects), on a stale path in a directory others can write (both fail;
// Listen also reads the kernel's table), and Listen replacing a stale
// socket against a plain remove and net.Listen.
func BenchmarkUnixListen(b *testing.B) {
	listen := map[string]func(string) (net.Listener, error){
		"net.Listen": func(p string) (net.Listener, error) { return net.Listen("unix", p) },
		"Listen":     func(p string) (net.Listener, error) { return Listen("unix", p) },
	}
	dir := b.TempDir()
	free := filepath.Join(dir, "free.sock")
	live := filepath.Join(dir, "live.sock")
	ln, err := net.Listen("unix", live)
	require.NoError(b, err)
	defer ln.Close()
	open := filepath.Join(dir, "open")
	require.NoError(b, os.Mkdir(open, 0o700))
	require.NoError(b, os.Chmod(open, 0o777))
	untrusted := filepath.Join(open, "stale.sock")
	staleB(b, untrusted)
	for _, name := range []string{"net.Listen", "Listen"} {
		b.Run("free/"+name, func(b *testing.B) {
			for b.Loop() {
				ln, err := listen[name](free)
				if err != nil {
					b.Fatal(err)
				}
				ln.Close()
			}
		})
	}
	for _, c := range []struct{ name, path string }{{"live", live}, {"stale-untrusted", untrusted}} {
		for _, name := range []string{"net.Listen", "Listen"} {
			b.Run(c.name+"/"+name, func(b *testing.B) {
				for b.Loop() {
					if _, err := listen[name](c.path); !IsAddrInUse(err) {
						b.Fatal(err)
					}
				}
			})
		}
	}
	replace := filepath.Join(dir, "stale.sock")
	for name, replaceStale := range map[string]func() (net.Listener, error){
		"remove+net.Listen": func() (net.Listener, error) {
			os.Remove(replace)
			return net.Listen("unix", replace)
		},
		"Listen": func() (net.Listener, error) { return Listen("unix", replace) },
	} {
		b.Run("stale-replaced/"+name, func(b *testing.B) {
			os.Remove(replace)
			staleB(b, replace)
			for b.Loop() {
				ln, err := replaceStale()
				if err != nil {
					b.Fatal(err)
				}
				ln.(*net.UnixListener).SetUnlinkOnClose(false)
				ln.Close()
			}
		})
	}
}

func staleB(b *testing.B, path string) {
	ln, err := net.Listen("unix", path)
	require.NoError(b, err)
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	require.NoError(b, ln.Close())
}
