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

// listenUnix listens on a unix socket path. When the path is taken by a
// socket file that nobody listens on any more (its server was killed), it
// removes the file and binds again. It never removes a file that is not a
// socket, or a socket that a connect shows is alive.
//
// Two processes that do this at once are kept apart by an exclusive flock
// on path+".lock", held from before the bind until after the listen: without
// it, one could find the other's fresh socket between its bind and listen,
// take the refused connect for a dead server, and delete it. The lock file is
// left in place, since removing it would let a third process lock a new file
// while the second still holds the old one.
func listenUnix(ctx context.Context, lc *net.ListenConfig, network, path string) (net.Listener, error) {
	// Abstract sockets ("@name") and autobind ("") have no file.
	if path == "" || path[0] == '@' || !canLock {
		return lc.Listen(ctx, network, path)
	}
	addr := &net.UnixAddr{Name: path, Net: network}
	unlock, err := lockFile(ctx, path+".lock")
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Addr: addr, Err: err}
	}
	defer unlock()

	ln, err := lc.Listen(ctx, network, path)
	if err == nil || !isAddrInUse(err) {
		return ln, err
	}
	inUse := func(format string, args ...any) error {
		return &AddrInUseError{Network: network, Address: path, Err: err, why: fmt.Sprintf(format, args...)}
	}
	fi, serr := os.Lstat(path)
	switch {
	case serr != nil:
		return nil, inUse("%s cannot be examined: %v", path, serr)
	case fi.Mode().Type() != fs.ModeSocket:
		return nil, inUse("%s is %s, not a socket; it was left alone", path, fileKind(fi.Mode()))
	}
	probe := net.Dialer{Timeout: time.Second}
	c, derr := probe.DialContext(ctx, network, path)
	switch {
	case derr == nil:
		c.Close()
		return nil, inUse("a server answers at %s; it was left alone", path)
	case !isConnRefused(derr):
		return nil, inUse("%s may belong to a live server (connect: %v); it was left alone", path, derr)
	}
	// Refused: the socket file outlived its server.
	if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		return nil, inUse("%s is a stale socket that could not be removed: %v", path, rerr)
	}
	return lc.Listen(ctx, network, path)
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
