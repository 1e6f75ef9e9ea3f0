package reuse

import (
	"context"
	"net"
)

// listenUnix binds a unix socket path exactly as net.Listen does. Only when
// that bind finds the path taken does it look at what holds it, and on Linux
// replace a stale socket file (see replaceStale). Abstract sockets ("@name")
// and autobind ("") have no file, and a path too long for sockaddr_un fails
// with EINVAL, not EADDRINUSE: their errors are net.Listen's.
func listenUnix(ctx context.Context, lc *net.ListenConfig, network, path string) (net.Listener, error) {
	ln, err := lc.Listen(ctx, network, path)
	if err == nil || !isAddrInUse(err) || path == "" || path[0] == '@' {
		return ln, err
	}
	return replaceStale(ctx, lc, network, path, err)
}
