package reuse

import (
	"context"
	"errors"
)

// Upgrade starts a new copy of this program and hands it every listener and
// packet conn that this package returned and that is still open, so that a
// restart refuses no connection: the listening sockets, and the connections
// waiting in their queues, are the same in both processes.
//
// The new process is the executable at os.Executable's path now (a binary
// replaced on disk is what starts), with this process's arguments, working
// directory, standard input, output and error, and its environment as it is
// now. Its Listen, ListenContext, ListenPacket and ListenPacketContext take
// the sockets handed over, matched by address (see Listen), and no handoff
// variable stays in its environment.
//
// Upgrade returns nil once the new process has called Ready. The caller then
// stops accepting and drains its connections (package
// github.com/safelisten/reuse/drain does that for net/http) and exits; a unix
// listener handed over no longer removes its path when it is closed. If the
// new process exits, or ctx ends, before it calls Ready, Upgrade kills it,
// waits for it and returns an error that says which; that process's Ready
// returns an error too, and this process goes on serving as before.
//
// One Upgrade runs at a time: a second one returns an error at once. A
// process started by Upgrade cannot Upgrade until the process that started
// it has exited. On Windows, Plan 9, js/wasm and wasip1 Upgrade returns an
// error for which errors.Is(err, errors.ErrUnsupported) holds. Listeners and
// conns made through ListenConfig or Control, and not by this package's
// Listen and ListenPacket, are not handed over.
func Upgrade(ctx context.Context) error {
	if ctx == nil {
		return errors.New("reuse: Upgrade: nil Context")
	}
	return upgrade(ctx)
}

// Ready says that this process serves. Call it once its listeners are
// serving; servers can call it unconditionally.
//
// In a process started by Upgrade it lets the parent's Upgrade return nil,
// and returns an error if the parent has given up on it (its ctx ended) or
// has gone. Under systemd (NOTIFY_SOCKET set) it sends READY=1, with
// MAINPID=<this pid> when this process replaced another, so that a
// Type=notify unit with NotifyAccess=all follows the new process.
// NOTIFY_SOCKET stays in the environment, for later generations. Inherited
// sockets that no Listen took by then are closed. Where there is no parent
// and no NOTIFY_SOCKET it does nothing and returns nil. Calls after the
// first return what the first returned.
func Ready() error {
	return ready()
}
