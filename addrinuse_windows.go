package reuse

import (
	"errors"
	"syscall"

	"golang.org/x/sys/windows"
)

// isAddrInUse: a failed bind on Windows reports WSAEADDRINUSE (10048);
// syscall.EADDRINUSE there is a value Go invented, kept for completeness.
func isAddrInUse(err error) bool {
	return errors.Is(err, windows.WSAEADDRINUSE) || errors.Is(err, syscall.EADDRINUSE)
}
