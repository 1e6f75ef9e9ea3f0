package reuse

import (
	"errors"
	"os"
	"strings"
)

// setsockopt: Plan 9 has no socket options; the plan never asks for one
// there, and Abort reports this error.
func setsockopt(_ uintptr, s step) error {
	return os.NewSyscallError("setsockopt "+s.opt.String(), errors.ErrUnsupported)
}

// isAddrInUse: Plan 9 errors are strings; its IP stack says "address in use"
// (not verified here).
func isAddrInUse(err error) bool {
	return err != nil && strings.Contains(err.Error(), "address in use")
}
