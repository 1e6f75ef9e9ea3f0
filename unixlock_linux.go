package reuse

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// canReplaceStale: on Linux a connect to a unix socket that has a listener
// never fails with ECONNREFUSED (a full accept queue gives EAGAIN), so a
// refused connect proves the file is stale. On macOS and the BSDs a full
// queue also gives ECONNREFUSED, so a busy live server would look dead.
const canReplaceStale = true

// maxPathLen is the size of sockaddr_un's sun_path: a path this long or
// longer cannot be bound, and Go's syscall package refuses it with EINVAL.
const maxPathLen = len(unix.RawSockaddrUnix{}.Path)

// lockFile takes an exclusive flock on name, creating it (mode 0600, so that
// another user cannot hold it), and returns its release. It polls rather than
// blocks, so that ctx and lockTimeout bound the wait. It does not follow a
// symbolic link at name, and takes only a regular file.
func lockFile(ctx context.Context, name string) (func(), error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("reuse: lock file: %w", err)
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("reuse: lock file %s is not a regular file", name)
	}
	deadline := time.Now().Add(lockTimeout)
	ctxDeadline := false
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline, ctxDeadline = d, true
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil // closing the file releases the lock
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("reuse: lock %s: %w", name, os.NewSyscallError("flock", err))
		}
		if ctx.Err() != nil {
			f.Close()
			return nil, ctx.Err()
		}
		if time.Now().After(deadline) {
			f.Close()
			if ctxDeadline {
				// ctx's own timer may not have fired yet: ctx.Err() above
				// is nil as often as not, but its deadline ended the wait.
				return nil, fmt.Errorf("%w: %s: %w", errLockHeld, name, context.DeadlineExceeded)
			}
			return nil, fmt.Errorf("%w: %s", errLockHeld, name)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func isConnRefused(err error) bool { return errors.Is(err, unix.ECONNREFUSED) }
