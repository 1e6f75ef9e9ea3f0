package reuse

import (
	"context"
	"errors"
)

// Upgrade starts the new version of this program and hands it every
// listener and packet conn that this package's Listen and ListenPacket
// returned and that is still open, so that a restart refuses no connection:
// the sockets, and the connections waiting in their queues, are the same in
// both processes (see "Restarts that no client notices" in the package
// documentation).
//
// The new process is this program's file, at os.Executable's path, which
// has its symbolic links resolved: a binary replaced at that path is what
// starts, but a deploy that switches a link to a new release directory
// starts the old release again. On Linux, Upgrade refuses a file that a user
// other than this one and root could replace. The new process gets this
// one's arguments, standard input, output and error, environment as it is
// now, and working directory itself (even one renamed or removed since).
//
// Upgrade returns nil once the new process has called Ready; under systemd
// (NOTIFY_SOCKET set), it has told systemd that the new process is the main
// one first. The caller then drains (package
// github.com/safelisten/reuse/drain does that for net/http) and exits; it
// cannot Upgrade again, and its unix listeners no longer remove their paths
// when closed. If the new process exits, or ctx ends, before Ready, or
// systemd cannot be told, Upgrade kills the new process, waits for it, and
// returns an error that says which; that process's Ready does not return
// nil, and this one serves on as before. Processes that the new one started
// before its Ready are not killed.
//
// One Upgrade runs at a time: another one meanwhile fails at once. A process
// started by Upgrade cannot Upgrade until the one that started it has
// exited. See the package's Per OS table for where Upgrade is supported.
func Upgrade(ctx context.Context) error {
	if ctx == nil {
		return errors.New("reuse: Upgrade: nil Context")
	}
	return upgrade(ctx)
}

// Ready says that this process serves; call it once its listeners serve.
// In a process started by Upgrade it lets the parent's Upgrade return nil,
// and waits for its answer: it returns an error if the parent gave up on
// this process (its ctx ended) or has gone. In any other process under
// systemd (NOTIFY_SOCKET set) it sends READY=1. NOTIFY_SOCKET stays in the
// environment, for later generations. Inherited sockets that no Listen took
// by then are closed. With no parent and no systemd it does nothing and
// returns nil, so servers call it unconditionally. Calls after the first
// return what the first returned.
func Ready() error {
	return ready()
}
