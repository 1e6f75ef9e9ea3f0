package reuse

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// attackEnv carries "verb args..." to TestHelperUnixAttacker.
const attackEnv = "REUSE_HELPER_UNIX_ATTACK"

// TestHelperUnixAttacker is not a test: it is the other user of the attack
// tests, run as nobody. Verbs:
//
//	flipdir SHARED PRIVATE   make SHARED/mallory/stale/app.sock (stale) and
//	                         swap the links SHARED/mallory/cur (-> stale)
//	                         and SHARED/mallory/alt (-> PRIVATE)
//	fliplink SHARED PRIVATE  make SHARED/mallory-stale/app.sock (stale) and
//	                         swap her links SHARED/link and SHARED/link2
//	lock PATH                make PATH.lock, mode 0666, and hold an flock on it
//	create DIR               try to create a file in DIR
//
// It prints READY (or RESULT for create), works until its stdin closes,
// and prints FLIPS n for the flip verbs.
func TestHelperUnixAttacker(t *testing.T) {
	args := strings.Fields(os.Getenv(attackEnv))
	if len(args) == 0 {
		t.Skip("child process only")
	}
	// closed is closed when stdin is: the parent's signal to stop. The
	// verbs that wait for it do so before they return, so the reader ends.
	closed := make(chan struct{})
	if args[0] != "create" {
		go func() {
			io.Copy(io.Discard, os.Stdin)
			close(closed)
		}()
	}
	staleAt := func(dir string) {
		require.NoError(t, os.Mkdir(dir, 0o755))
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		require.NoError(t, err)
		require.NoError(t, unix.Bind(fd, &unix.SockaddrUnix{Name: filepath.Join(dir, "app.sock")}))
		require.NoError(t, unix.Close(fd))
	}
	flip := func(a, b string) {
		fmt.Println("READY")
		n := 0
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); n++ {
			select {
			case <-closed:
				fmt.Println("FLIPS", n)
				return
			default:
			}
			require.NoError(t, unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE))
		}
		fmt.Println("FLIPS", n)
	}
	switch args[0] {
	case "flipdir":
		shared, private := args[1], args[2]
		her := filepath.Join(shared, "mallory")
		require.NoError(t, os.Mkdir(her, 0o755))
		staleAt(filepath.Join(her, "stale"))
		require.NoError(t, os.Symlink("stale", filepath.Join(her, "cur")))
		require.NoError(t, os.Symlink(private, filepath.Join(her, "alt")))
		flip(filepath.Join(her, "cur"), filepath.Join(her, "alt"))
	case "fliplink":
		shared, private := args[1], args[2]
		staleAt(filepath.Join(shared, "mallory-stale"))
		require.NoError(t, os.Symlink(filepath.Join(shared, "mallory-stale"), filepath.Join(shared, "link")))
		require.NoError(t, os.Symlink(private, filepath.Join(shared, "link2")))
		flip(filepath.Join(shared, "link"), filepath.Join(shared, "link2"))
	case "lock":
		fd, err := unix.Open(args[1]+".lock", unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o666)
		require.NoError(t, err)
		require.NoError(t, unix.Fchmod(fd, 0o666)) // past the umask
		require.NoError(t, unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB))
		fmt.Println("READY")
		<-closed // holds the lock until told to stop
	case "create":
		name := filepath.Join(args[1], "by-nobody")
		err := os.WriteFile(name, nil, 0o600)
		result := "ok"
		var errno syscall.Errno
		if errors.As(err, &errno) {
			result = unix.ErrnoName(errno)
		} else if err != nil {
			result = err.Error()
		}
		os.Remove(name)
		fmt.Println("RESULT", result)
	}
}

// attacker is a running TestHelperUnixAttacker.
type attacker struct {
	stdin io.Closer
	out   *bufio.Scanner
	wait  func() error
	first string // the line it printed first: READY or RESULT ...
}

// attack starts TestHelperUnixAttacker as nobody and waits for its first
// line. The test reaps it, at stop or at cleanup.
func attack(t *testing.T, bin string, args ...string) *attacker {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	cmd := helperCmd(ctx, bin, "TestHelperUnixAttacker", attackEnv+"="+strings.Join(args, " "))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	cmd.Dir = filepath.Dir(bin)
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		cancel()
		if errors.Is(err, fs.ErrPermission) {
			t.Skipf("nobody cannot run %s: %v", bin, err)
		}
		require.NoError(t, err)
	}
	var waited atomic.Bool
	a := &attacker{stdin: stdin, out: bufio.NewScanner(stdout)}
	a.wait = func() error {
		if waited.Swap(true) {
			return nil
		}
		stdin.Close()
		for a.out.Scan() {
		}
		defer cancel()
		return cmd.Wait()
	}
	t.Cleanup(func() { a.wait() })
	for a.out.Scan() {
		line := a.out.Text()
		if line == "READY" || strings.HasPrefix(line, "RESULT ") {
			a.first = line
			return a
		}
	}
	a.wait()
	t.Fatalf("the attacker said nothing; stderr:\n%s", stderr.String())
	return nil
}

// stop ends the attacker, reaps it and returns the lines it printed since
// its first.
func (a *attacker) stop(t *testing.T) []string {
	t.Helper()
	a.stdin.Close()
	var lines []string
	for a.out.Scan() {
		lines = append(lines, a.out.Text())
	}
	require.NoError(t, a.wait(), "the attacker exits cleanly: %v", lines)
	return lines
}

// sharedBase returns a test directory that nobody can traverse: t.TempDir
// and its parent are made 0755 (neither becomes writable to others).
func sharedBase(t *testing.T) string {
	t.Helper()
	base := t.TempDir()
	for _, d := range []string{filepath.Dir(base), base} {
		require.NoError(t, os.Chmod(d, 0o755))
	}
	return base
}

// mkdirMode makes dir with mode exactly (sticky bit included) and owner uid.
func mkdirMode(t *testing.T, dir string, mode uint32, uid, gid int) {
	t.Helper()
	require.NoError(t, os.Mkdir(dir, 0o700))
	require.NoError(t, unix.Chmod(dir, mode)) // os.Chmod would drop 0o1000
	require.NoError(t, os.Lchown(dir, uid, gid))
}

// TestUnix_AttackSymlinkFlip: another user who controls a directory on the
// path (her directory in a sticky one, or her symbolic link there) swaps,
// with renameat2(RENAME_EXCHANGE), between a directory of hers holding a
// stale socket and root's own directory holding a live socket of the same
// name, while root Listens on the path in a loop. Listen must never remove
// the live socket (nor, here, anything), and must fail wherever net.Listen
// fails: both targets hold a socket, so that is every time. Before the
// trust walk, root's Listen removed the live socket in 7 to 157 tries.
func TestUnix_AttackSymlinkFlip(t *testing.T) {
	bin := nobodyBinary(t)
	for _, c := range []struct{ verb, path string }{
		{"flipdir", "mallory/cur/app.sock"},
		{"fliplink", "link/app.sock"},
	} {
		t.Run(c.verb, func(t *testing.T) {
			base := sharedBase(t)
			shared := filepath.Join(base, "shared")
			mkdirMode(t, shared, 0o1777, 0, 0)
			private := filepath.Join(base, "private")
			mkdirMode(t, private, 0o700, 0, 0)
			livePath := filepath.Join(private, "app.sock")
			live, err := net.Listen("unix", livePath)
			require.NoError(t, err)
			defer live.Close()
			liveID := inode(t, livePath)

			a := attack(t, bin, c.verb, shared, private)
			herStale := filepath.Join(shared, "mallory", "stale", "app.sock")
			if c.verb == "fliplink" {
				herStale = filepath.Join(shared, "mallory-stale", "app.sock")
			}
			herID := inode(t, herStale)
			path := filepath.Join(shared, c.path)

			const maxTries = 3000
			reasons := map[Reason]int{}
			tries, bound, removed := 0, 0, 0
			for deadline := time.Now().Add(10 * time.Second); tries < maxTries && time.Now().Before(deadline); tries++ {
				std, stdErr := net.Listen("unix", path)
				if std != nil {
					std.Close()
				}
				if errors.Is(stdErr, unix.EACCES) {
					t.Skipf("fs.protected_symlinks keeps root from following her link: %v", stdErr)
				}
				require.Error(t, stdErr, "net.Listen fails: both targets hold a socket")
				ln, err := Listen("unix", path)
				if ln != nil {
					bound++ // where net.Listen fails; leave a stale socket, as before
					ln.(*net.UnixListener).SetUnlinkOnClose(false)
					ln.Close()
				} else {
					reasons[requireAddrInUse(t, err).Diagnosis().Reason]++
				}
				require.Equal(t, liveID, inode(t, livePath), "try %d: the live socket outside her directory is intact", tries)
				if id := inode(t, herStale); id != herID {
					removed++
					herID = id
				}
			}
			lines := a.stop(t)
			answers(t, "unix", livePath)
			t.Logf("%s: %d tries of Listen while she swapped (%s); reasons: listener %d, stale %d; bound %d, removed %d",
				c.verb, tries, strings.Join(lines, ", "), reasons[ReasonListener], reasons[ReasonStale], bound, removed)
			assert.Zero(t, bound, "Listen bound where net.Listen failed")
			assert.Zero(t, removed, "Listen removed a file")
			assert.Equal(t, tries, reasons[ReasonListener]+reasons[ReasonStale], "%v", reasons)
			assert.Greater(t, reasons[ReasonStale], 0, "the stale target was seen")
		})
	}
}

// TestUnix_AttackLockFile: another user pre-creates PATH.lock (mode 0666),
// in a sticky directory and in a group-writable one, and holds an flock on
// it. A Listen on a free PATH succeeds at once, as net.Listen does (it takes
// no lock); on a stale PATH it fails at once, as net.Listen does, and
// removes nothing: the directory is not trusted.
func TestUnix_AttackLockFile(t *testing.T) {
	bin := nobodyBinary(t)
	base := sharedBase(t)
	for _, c := range []struct {
		name string
		mode uint32
		gid  int
	}{{"sticky", 0o1777, 0}, {"group-writable", 0o775, nobody}} {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(base, c.name)
			mkdirMode(t, dir, c.mode, 0, c.gid)
			path := filepath.Join(dir, "app.sock")
			a := attack(t, bin, "lock", path)
			lock := path + ".lock"
			lockID := inode(t, lock)

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			start := time.Now()
			ln, err := ListenContext(ctx, "unix", path)
			took := time.Since(start)
			require.NoError(t, err, "a free path binds whatever lies beside it")
			assert.Less(t, took, time.Second, "no wait")
			require.NoError(t, ln.Close())
			std, err := net.Listen("unix", path)
			require.NoError(t, err, "as net.Listen")
			require.NoError(t, std.Close())

			stale(t, "unix", path)
			sockID := inode(t, path)
			_, stdErr := net.Listen("unix", path)
			require.True(t, IsAddrInUse(stdErr))
			noLeak(t, func() {
				start := time.Now()
				_, err := ListenContext(ctx, "unix", path)
				assert.Less(t, time.Since(start), time.Second, "no wait")
				msg := requireUnixInUse(t, err, ReasonStale)
				assert.Contains(t, msg, "not replaced: "+dir+" can be written by other users")
			})
			assert.Equal(t, sockID, inode(t, path), "the stale socket was not removed")
			assert.Equal(t, lockID, inode(t, lock), "her lock file is as she left it")
			fd, err := unix.Open(lock, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			require.NoError(t, err)
			assert.ErrorIs(t, unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB), unix.EWOULDBLOCK, "and still holds it")
			unix.Close(fd)
			a.stop(t)
		})
	}
}

// posixACL encodes a system.posix_acl_access value (include/uapi/linux/
// posix_acl_xattr.h): owner rwx, user nobody rwx, group r-x, the given
// mask, others r-x.
func posixACL(mask uint16) []byte {
	const undefined = ^uint32(0)
	entries := []struct {
		tag, perm uint16
		id        uint32
	}{
		{0x01, 7, undefined}, // ACL_USER_OBJ
		{0x02, 7, nobody},    // ACL_USER
		{0x04, 5, undefined}, // ACL_GROUP_OBJ
		{0x10, mask, undefined},
		{0x20, 5, undefined}, // ACL_OTHER
	}
	b := binary.LittleEndian.AppendUint32(nil, 2) // POSIX_ACL_XATTR_VERSION
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, e.id)
	}
	return b
}

// TestUnix_ACLMaskBoundsNamedEntries: the walk reads no ACL, because the
// mode's group bits are the ACL's mask. An ACL granting user nobody rwx
// with mask rwx shows as group write: nobody can create files there, and a
// stale socket is not replaced. With mask r-x the same entry grants no
// write, the mode shows none, nobody cannot create a file, and the socket
// is replaced.
func TestUnix_ACLMaskBoundsNamedEntries(t *testing.T) {
	bin := nobodyBinary(t)
	base := sharedBase(t)
	dir := filepath.Join(base, "acl")
	mkdirMode(t, dir, 0o755, 0, 0)
	path := filepath.Join(dir, "s.sock")
	for _, c := range []struct {
		mask     uint16
		mode     uint32
		create   string
		replaced bool
	}{{7, 0o775, "ok", false}, {5, 0o755, "EACCES", true}} {
		err := unix.Setxattr(dir, "system.posix_acl_access", posixACL(c.mask), 0)
		if errors.Is(err, unix.EOPNOTSUPP) {
			t.Skipf("no POSIX ACLs on %s", dir)
		}
		require.NoError(t, err)
		var st unix.Stat_t
		require.NoError(t, unix.Stat(dir, &st))
		require.Equal(t, c.mode, st.Mode&0o7777, "the mode shows the mask")
		assert.Equal(t, "RESULT "+c.create, attack(t, bin, "create", dir).first, "nobody's write with mask %o", c.mask)

		stale(t, "unix", path)
		ln, err := Listen("unix", path)
		if !c.replaced {
			msg := requireUnixInUse(t, err, ReasonStale)
			assert.Contains(t, msg, "not replaced: "+dir+" can be written by other users")
			require.NoError(t, os.Remove(path))
			continue
		}
		require.NoError(t, err)
		answers(t, "unix", path)
		require.NoError(t, ln.Close())
	}
}
