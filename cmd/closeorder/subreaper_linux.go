package main

import (
	"errors"

	"golang.org/x/sys/unix"
)

// adoptOrphans makes this process the reaper of its orphaned descendants,
// as systemd is for a service: each generation of the demo's server is
// started by the one before, which exits, and ends as this process's child.
func adoptOrphans() bool {
	return unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == nil
}

// reap waits for pid, a child adopted by adoptOrphans, to exit.
func reap(pid int) {
	var ws unix.WaitStatus
	for {
		if _, err := unix.Wait4(pid, &ws, 0, nil); !errors.Is(err, unix.EINTR) {
			return
		}
	}
}
