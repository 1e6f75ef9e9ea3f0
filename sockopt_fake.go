//go:build js || wasip1

package reuse

import (
	"errors"
	"os"
	"syscall"
)

// setsockopt: js/wasm and wasip1 have no socket options to set; the plan
// never asks for one there, and Abort reports this error.
func setsockopt(_ uintptr, s step) error {
	return os.NewSyscallError("setsockopt "+s.opt.String(), errors.ErrUnsupported)
}

func isAddrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE)
}
