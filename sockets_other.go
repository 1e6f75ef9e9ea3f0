//go:build !linux

package reuse

import (
	"errors"
	"fmt"
	"runtime"
)

// sockets has no socket table to read here: only Linux exposes one
// (netlink sock_diag, /proc/net/tcp) that this package knows how to read.
func sockets(uint16) ([]Socket, error) {
	return nil, fmt.Errorf("reuse: Sockets on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}

// haveCensus: AddrInUseError is made only where Sockets can read the table.
const haveCensus = false
