//go:build js || plan9 || wasip1

package reuse

import (
	"errors"
	"os"
)

// setsockopt: js/wasm, wasip1 and Plan 9 have no socket options to set; the plan
// never asks for one there, and Abort reports this error.
func setsockopt(_ uintptr, s step) error {
	return os.NewSyscallError("setsockopt "+s.opt.String(), errors.ErrUnsupported)
}
