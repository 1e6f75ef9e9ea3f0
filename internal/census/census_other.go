//go:build !linux

package census

import (
	"errors"
	"time"
)

// Only Linux exposes a socket table (netlink sock_diag, /proc/net/tcp) that
// this package knows how to read; Read reports errors.ErrUnsupported here
// before it calls these.

func readNetlink(uint16, time.Time, func(Socket)) error { return errors.ErrUnsupported }

func readProc(uint16, time.Time, func(Socket)) error { return errors.ErrUnsupported }

func lookupOwners([]Socket, time.Time) Owners { return Owners{} }
