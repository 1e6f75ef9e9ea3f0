//go:build aix || darwin || dragonfly || freebsd || linux || netbsd || openbsd || solaris

package reuse

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

const canLock = true

// lockFile takes an exclusive flock on name, creating it (mode 0600, so that
// another user cannot hold it), and returns its release. It polls rather than
// blocks, so that ctx and lockTimeout bound the wait.
func lockFile(ctx context.Context, name string) (func(), error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("reuse: lock file: %w", err)
	}
	deadline := time.Now().Add(lockTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
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
			return nil, fmt.Errorf("%w: %s", errLockHeld, name)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func isConnRefused(err error) bool { return errors.Is(err, unix.ECONNREFUSED) }
