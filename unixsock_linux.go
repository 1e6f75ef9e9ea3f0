package reuse

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/safelisten/reuse/internal/census"
	"golang.org/x/sys/unix"
)

// unixLockWait bounds the wait for another process's lock on a stale socket
// when ctx has no deadline. A peer holds the lock for one check (its netlink
// read takes a second at most), one unlink, one bind and one listen.
const unixLockWait = 3 * time.Second

// replaceStale is called when bind found path taken. On a stale socket file,
// one whose server died without removing it, it removes the file and binds
// again; in every other case it returns the bind's error with what holds the
// path (an *AddrInUseError).
//
// A file is stale when a connect to it is refused (on Linux a live server
// with a full queue gives EAGAIN, never ECONNREFUSED) and no socket in this
// network namespace is bound to it: a socket between bind and listen also
// refuses connects.
//
// Other users must not be able to turn this against the caller, so the
// directory is resolved once, by walkTrusted, and every later step works on
// the very file found there: the probe connects through the /proc link of
// an O_PATH descriptor, and the unlink is relative to the directory's
// descriptor and never removes a directory. Nothing is replaced unless
// only this user and root can change what the path resolves to. The re-bind
// goes by name, as net.Listen's, which the walk showed is theirs alone.
//
// Two processes replacing the same file at once are kept apart by an flock
// on path+".lock", created only here, in a directory that is theirs alone,
// and removed before it is released, so nothing is left beside the socket.
func replaceStale(ctx context.Context, lc *net.ListenConfig, network, path string, err error) (net.Listener, error) {
	c := staleCheck{network: network, path: path}
	dir, name := splitUnixPath(path)
	if name == "" {
		return nil, c.inUse(err, ReasonUnknown, "not checked for a stale socket: %s does not end in a file name", path)
	}
	var werr error
	c.dir, c.distrust, werr = walkTrusted(dir)
	if werr != nil {
		return nil, c.inUse(err, ReasonUnknown, "not checked for a stale socket: %v", werr)
	}
	defer unix.Close(c.dir)
	c.name = name
	for range 3 {
		f := c.examine()
		switch {
		case f.gone:
			// Its owner removed it (Go's UnixListener.Close does): bind again.
			var ln net.Listener
			if ln, err = lc.Listen(ctx, network, path); err == nil || !isAddrInUse(err) {
				return ln, err
			}
			continue
		case f.reason != ReasonStale:
			return nil, c.inUse(err, f.reason, "%s", f.why)
		case c.distrust != "":
			return nil, c.inUse(err, ReasonStale, "%s; not replaced: %s", f.why, c.distrust)
		case f.uid != uint32(os.Geteuid()):
			return nil, c.inUse(err, ReasonStale, "%s; not replaced: it belongs to user %d", f.why, f.uid)
		}
		ln, rerr, again := c.replace(ctx, lc, err, f)
		if !again {
			return ln, rerr
		}
	}
	return nil, c.inUse(err, ReasonUnknown, "%s changed each time Listen looked; not replaced", path)
}

// staleCheck is one Listen's look at a unix socket path that bind found
// taken.
type staleCheck struct {
	network, path string
	dir           int    // O_PATH descriptor of the directory holding the file
	name          string // the file's name in dir
	distrust      string // why others could change what path resolves to; "" if none can
}

// found is what examine saw at the path.
type found struct {
	gone   bool   // no file at the path now
	reason Reason // ReasonStale when the file is stale
	why    string
	id     fileID // which file it was
	uid    uint32
}

// fileID tells files apart even where an inode number is reused at once (as
// on ext4, where a new socket may get the number of the one just removed).
type fileID struct {
	dev, ino uint64
	ctime    unix.Timespec
}

func idOf(st *unix.Stat_t) fileID { return fileID{uint64(st.Dev), st.Ino, st.Ctim} }

// examine says what is at the path now. In a directory that others can
// change it does not connect, so as not to reach a socket of their choosing:
// the kernel's table alone tells a listener from a bound socket and a stale
// file there.
func (c *staleCheck) examine() found {
	fd, st, err := openStat(c.dir, c.name, unix.O_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		return found{gone: true}
	}
	if err != nil {
		return found{reason: ReasonUnknown, why: fmt.Sprintf("not checked for a stale socket: %s: %v", c.path, err)}
	}
	defer unix.Close(fd)
	f := found{id: idOf(&st), uid: st.Uid}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		f.reason, f.why = ReasonNotSocket, fmt.Sprintf("%s is %s, not a socket; it was left alone", c.path, unixFileKind(st.Mode))
		return f
	}
	var cerr error = unix.ECONNREFUSED
	if c.distrust == "" {
		cerr = c.probe(fd)
		switch cerr {
		case nil, unix.EAGAIN: // EAGAIN: a live server's queue is full
			f.reason, f.why = ReasonListener, fmt.Sprintf("a server answers at %s; it was left alone", c.path)
			return f
		}
	}
	bound, listening, err := census.UnixBound(f.id.dev, f.id.ino)
	switch {
	case err != nil:
		f.reason, f.why = ReasonUnknown, fmt.Sprintf("not replaced: whether a socket is bound to %s is not known: %v", c.path, err)
	case listening:
		f.reason, f.why = ReasonListener, fmt.Sprintf("a socket listens at %s; it was left alone", c.path)
	case bound:
		f.reason, f.why = ReasonBound, fmt.Sprintf("a socket is bound to %s without listening (its server may be starting); it was left alone", c.path)
	case cerr == unix.ENOENT: // no /proc to connect through
		f.reason, f.why = ReasonUnknown, fmt.Sprintf("not replaced: %s cannot be probed without /proc", c.path)
	case cerr != unix.ECONNREFUSED:
		f.reason, f.why = ReasonUnknown, fmt.Sprintf("not replaced: %s may belong to a live server (connect: %v)", c.path, cerr)
	default:
		f.reason, f.why = ReasonStale, fmt.Sprintf("%s is a stale socket (no socket in this network namespace is bound to it)", c.path)
	}
	return f
}

// probe connects to the socket fd holds, through its /proc link: the kernel
// finds the very inode of fd, wherever its name has gone since. It does not
// wait: a full queue gives EAGAIN.
func (c *staleCheck) probe(fd int) error {
	typ := unix.SOCK_STREAM
	if c.network == "unixpacket" {
		typ = unix.SOCK_SEQPACKET
	}
	s, err := unix.Socket(unix.AF_UNIX, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	defer unix.Close(s)
	sa := &unix.SockaddrUnix{Name: "/proc/self/fd/" + strconv.Itoa(fd)}
	for {
		if err = unix.Connect(s, sa); err != unix.EINTR {
			return err
		}
	}
}

// replace removes the stale file that examine found (seen) and binds, under
// the lock. It removes at most once: if the bind still finds the path taken,
// someone else bound it in between, and that is reported. A file other than
// seen is not removed, however stale it looks: it is new, and a socket
// caught inside another process's bind, after the kernel made its file and
// before it entered the table, looks stale. again asks the caller to look
// afresh; it is set only when nothing was removed.
func (c *staleCheck) replace(ctx context.Context, lc *net.ListenConfig, err error, seen found) (_ net.Listener, _ error, again bool) {
	unlock, why, lerr := c.lock(ctx)
	switch {
	case lerr != nil:
		return nil, lerr, false
	case why != "":
		return nil, c.inUse(err, ReasonStale, "%s; not replaced: %s", seen.why, why), false
	}
	defer unlock()
	f := c.examine() // again: a peer may have replaced it while we waited
	switch {
	case f.gone:
	case f.reason != ReasonStale:
		return nil, c.inUse(err, f.reason, "%s", f.why), false
	case f.id != seen.id:
		return nil, nil, true
	default:
		// Only this user and root can rename into this directory, so a
		// file here other than the one examined would be theirs, not an
		// attacker's. Still, look once more right before.
		var st unix.Stat_t
		if serr := unix.Fstatat(c.dir, c.name, &st, unix.AT_SYMLINK_NOFOLLOW); serr != nil || idOf(&st) != f.id {
			return nil, nil, true
		}
		if uerr := unix.Unlinkat(c.dir, c.name, 0); uerr != nil && uerr != unix.ENOENT {
			return nil, c.inUse(err, ReasonStale, "%s; it could not be removed: %v", f.why, os.NewSyscallError("unlinkat", uerr)), false
		}
	}
	ln, err := lc.Listen(ctx, c.network, c.path)
	if err != nil && isAddrInUse(err) {
		f := c.examine()
		if f.gone {
			f.reason, f.why = ReasonUnknown, "it is gone again"
		}
		return nil, c.inUse(err, f.reason, "another process bound %s first: %s", c.path, f.why), false
	}
	return ln, err, false
}

// lock takes an exclusive flock on the lock file beside the socket,
// creating it, and returns its release, which removes it. It waits for a
// peer's lock until ctx's deadline, or for unixLockWait without one. A lock
// file that is not a regular file of this user, or that other users could
// open (and so hold locked), is not used. why says why there is no lock;
// err is ctx's end.
func (c *staleCheck) lock(ctx context.Context) (unlock func(), why string, err error) {
	name := c.name + ".lock"
	shown := c.path + ".lock"
	deadline, hasDeadline := ctx.Deadline()
	if !hasDeadline {
		deadline = time.Now().Add(unixLockWait)
	}
	for {
		// O_RDWR: NFS emulates flock with fcntl locks, which need it.
		fd, oerr := unix.Openat(c.dir, name, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0o600)
		if oerr != nil {
			return nil, fmt.Sprintf("lock file %s %s", shown, unixLockOpenErr(oerr)), nil
		}
		var st unix.Stat_t
		if serr := unix.Fstat(fd, &st); serr != nil {
			unix.Close(fd)
			return nil, fmt.Sprintf("lock file %s: %v", shown, os.NewSyscallError("fstat", serr)), nil
		}
		var bad string
		switch {
		case st.Mode&unix.S_IFMT != unix.S_IFREG:
			bad = "is " + unixFileKind(st.Mode)
		case st.Uid != uint32(os.Geteuid()):
			bad = fmt.Sprintf("belongs to user %d", st.Uid)
		case st.Mode&0o077 != 0:
			bad = fmt.Sprintf("can be opened by other users (mode %04o)", st.Mode&0o7777)
		}
		if bad != "" {
			unix.Close(fd)
			return nil, fmt.Sprintf("lock file %s %s", shown, bad), nil
		}
		switch werr := unixWaitLock(ctx, fd, deadline); {
		case werr == nil:
		case werr == errLockHeld:
			unix.Close(fd)
			return nil, fmt.Sprintf("%s stayed locked by another process for %v", shown, unixLockWait), nil
		case werr == context.Canceled || werr == context.DeadlineExceeded:
			unix.Close(fd)
			return nil, "", &net.OpError{Op: "listen", Net: c.network, Addr: &net.UnixAddr{Name: c.path, Net: c.network},
				Err: fmt.Errorf("%w while waiting for %s, which another process holds while it replaces a stale socket", werr, shown)}
		default:
			unix.Close(fd)
			return nil, fmt.Sprintf("lock file %s: %v", shown, werr), nil
		}
		// The holder we waited for removed the file before releasing it:
		// this lock is then on a file no one else will open. Start again.
		var now unix.Stat_t
		if unix.Fstatat(c.dir, name, &now, unix.AT_SYMLINK_NOFOLLOW) != nil || now.Dev != st.Dev || now.Ino != st.Ino {
			unix.Close(fd)
			continue
		}
		return func() {
			unix.Unlinkat(c.dir, name, 0) // before the release: see above
			unix.Close(fd)
		}, "", nil
	}
}

// errLockHeld ends a wait for a lock that has no deadline of ctx's.
var errLockHeld = errors.New("lock held")

// unixWaitLock polls flock on fd until it is taken, ctx ends or deadline
// passes. A ctx deadline gives context.DeadlineExceeded even before ctx's
// own timer has fired.
func unixWaitLock(ctx context.Context, fd int, deadline time.Time) error {
	var t *time.Timer
	defer func() {
		if t != nil {
			t.Stop()
		}
	}()
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if err != unix.EWOULDBLOCK && err != unix.EINTR {
			return os.NewSyscallError("flock", err)
		}
		left := time.Until(deadline)
		if left <= 0 {
			if _, ok := ctx.Deadline(); ok {
				return context.DeadlineExceeded
			}
			return errLockHeld
		}
		step := min(left, 2*time.Millisecond)
		if t == nil {
			t = time.NewTimer(step)
		} else {
			t.Reset(step)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func unixLockOpenErr(err error) string {
	switch err {
	case unix.ELOOP:
		return "is a symbolic link"
	case unix.EISDIR:
		return "is a directory"
	}
	return "cannot be opened: " + os.NewSyscallError("openat", err).Error()
}

// inUse is the error of a Listen that found the path taken.
func (c *staleCheck) inUse(err error, r Reason, format string, args ...any) error {
	return unixInUse(c.network, c.path, err, r, fmt.Sprintf(format, args...))
}

// splitUnixPath splits path before its last element; name is "" when the
// path does not end in a file name.
func splitUnixPath(path string) (dir, name string) {
	i := strings.LastIndexByte(path, '/')
	dir, name = ".", path
	if i >= 0 {
		dir, name = path[:i+1], path[i+1:]
	}
	if name == "." || name == ".." {
		name = ""
	}
	return dir, name
}

// quoteName returns name as it is, or quoted when it holds a character that
// is not printable: names on the way can be chosen by other users, and end
// up in log lines.
func quoteName(name string) string {
	for _, r := range name {
		if !unicode.IsPrint(r) {
			return strconv.Quote(name)
		}
	}
	return name
}

func unixFileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "a regular file"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFLNK:
		return "a symbolic link"
	case unix.S_IFIFO:
		return "a named pipe"
	case unix.S_IFSOCK:
		return "a socket"
	}
	return "a device file"
}
