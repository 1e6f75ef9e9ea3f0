//go:build !windows && !plan9

package reuse

import (
	"errors"
	"syscall"
)

// isAddrInUse: every Unix, js/wasm and wasip1 report a taken address as
// EADDRINUSE.
func isAddrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE)
}
