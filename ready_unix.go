//go:build unix

package reuse

import (
	"fmt"
	"io"
	"net"
	"os"
)

// sdNotify sends msg to systemd's notify socket, when there is one.
func sdNotify(msg string) error {
	sock := os.Getenv("NOTIFY_SOCKET")
	if sock == "" {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err == nil {
		_, err = c.Write([]byte(msg))
		c.Close()
	}
	if err != nil {
		return fmt.Errorf("notify systemd at NOTIFY_SOCKET=%s: %w", sock, err)
	}
	return nil
}

func ready() error {
	inheritance.readyOnce.Do(func() { inheritance.readyErr = readyOnce() })
	return inheritance.readyErr
}

func readyOnce() error {
	defer closeUnclaimed()
	if inheritance.toParent != nil {
		// The parent told systemd, if there is one, that this process is
		// the main one now.
		return tellParent()
	}
	if err := sdNotify("READY=1"); err != nil {
		return fmt.Errorf("reuse: Ready: %w", err)
	}
	return nil
}

// tellParent tells the parent's Upgrade that this process serves, and waits
// for its answer: "ok", or nothing if it gave up on this process. After
// "ok", unix listeners handed over remove their paths on Close again, as
// net.Listen's do.
func tellParent() error {
	to, from := inheritance.toParent, inheritance.fromParent
	defer to.Close()
	defer from.Close()
	var b [len("ok\n")]byte
	_, err := to.Write([]byte("ready\n"))
	if err == nil {
		_, err = io.ReadFull(from, b[:])
	}
	if err != nil || string(b[:]) != "ok\n" {
		return fmt.Errorf("reuse: Ready: the Upgrade of pid %d gave up on this process (its context ended, or it exited)", inheritance.parent)
	}
	inheritance.mu.Lock()
	defer inheritance.mu.Unlock()
	inheritance.answered = true
	for _, ul := range inheritance.unlinkLater {
		ul.SetUnlinkOnClose(true)
	}
	inheritance.unlinkLater = nil
	return nil
}

// closeUnclaimed closes the inherited sockets that no Listen took.
func closeUnclaimed() {
	inheritance.mu.Lock()
	defer inheritance.mu.Unlock()
	inheritance.readied = true
	kept := inheritance.socks[:0]
	for _, s := range inheritance.socks {
		if s.claimed {
			kept = append(kept, s) // a Listen is taking it: release closes it if it fails
			continue
		}
		s.f.Close()
	}
	inheritance.socks = kept
	inheritance.open.Store(int32(len(kept)))
}
