package reuse

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"time"
)

// listenUnix listens on a unix socket path. On Linux, when the path is
// taken by a socket file that nobody listens on any more (its server was
// killed), it removes the file and binds again. It never removes a file that
// is not a socket, or a socket that a connect shows is alive.
//
// Two processes that do this at once are kept apart by an exclusive flock
// on path+".lock", held from before the bind until after the listen: without
// it, one could find the other's fresh socket between its bind and listen,
// take the refused connect for a dead server, and delete it. The lock file is
// left in place, since removing it would let a third process lock a new file
// while the second still holds the old one. When the lock file cannot be used
// (a read-only directory, a file another user created), Listen behaves as
// net.Listen does and only reports a stale file.
func listenUnix(ctx context.Context, lc *net.ListenConfig, network, path string) (net.Listener, error) {
	// Abstract sockets ("@name") and autobind ("") have no file. A path too
	// long for a socket address cannot be bound: net reports it as
	// net.Listen does, where the lock file would fail differently or be left
	// beside a path that can never be a socket.
	if path == "" || path[0] == '@' || !canReplaceStale || len(path) >= maxPathLen {
		return lc.Listen(ctx, network, path)
	}
	unlock, lockErr := lockFile(ctx, path+".lock")
	switch {
	case lockErr == nil:
		defer unlock()
	case ctx.Err() != nil || errors.Is(lockErr, errLockHeld):
		return nil, &net.OpError{Op: "listen", Net: network, Addr: &net.UnixAddr{Name: path, Net: network}, Err: lockErr}
	}

	var err error
	// Bind; on a stale file, remove it and bind again. Once more if the old
	// server removed its own file while we looked (Go's UnixListener.Close
	// unlinks it).
	for range 3 {
		var ln net.Listener
		ln, err = lc.Listen(ctx, network, path)
		if err == nil || !isAddrInUse(err) {
			return ln, err
		}
		inUse := func(format string, args ...any) error {
			return unixInUse(network, path, err, ReasonUnknown, fmt.Sprintf(format, args...))
		}
		if lockErr != nil {
			return nil, inUse("%s was not checked for a stale socket: %v", path, lockErr)
		}
		before, serr := os.Lstat(path)
		switch {
		case errors.Is(serr, fs.ErrNotExist):
			continue
		case serr != nil:
			return nil, inUse("%s cannot be examined: %v", path, serr)
		case before.Mode().Type() != fs.ModeSocket:
			return nil, inUse("%s is %s, not a socket; it was left alone", path, fileKind(before.Mode()))
		}
		probe := net.Dialer{Timeout: time.Second}
		c, derr := probe.DialContext(ctx, network, path)
		switch {
		case derr == nil:
			c.Close()
			return nil, inUse("a server answers at %s; it was left alone", path)
		case errors.Is(derr, fs.ErrNotExist):
			continue
		case !isConnRefused(derr):
			return nil, inUse("%s may belong to a live server (connect: %v); it was left alone", path, derr)
		}
		// Refused: the socket file outlived its server. Remove it only if
		// it is still the file that refused.
		after, serr := os.Lstat(path)
		if serr != nil || !os.SameFile(before, after) {
			continue
		}
		if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			return nil, inUse("%s is a stale socket that could not be removed: %v", path, rerr)
		}
	}
	return nil, err
}

// lockTimeout bounds the wait for another process's lock when ctx has no
// deadline; a lock is held only for one bind, listen and probe.
const lockTimeout = 10 * time.Second

// errLockHeld is returned when the lock file stays locked past the wait.
var errLockHeld = errors.New("reuse: the lock file stayed locked by another process")

func fileKind(m fs.FileMode) string {
	switch m.Type() {
	case 0:
		return "a regular file"
	case fs.ModeDir:
		return "a directory"
	case fs.ModeSymlink:
		return "a symbolic link"
	case fs.ModeNamedPipe:
		return "a named pipe"
	}
	return "a special file"
}
