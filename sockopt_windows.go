package reuse

import (
	"errors"
	"os"

	"golang.org/x/sys/windows"
)

// exclusiveAddrUse is SO_EXCLUSIVEADDRUSE, defined in winsock2.h as
// ((int)(~SO_REUSEADDR)); x/sys/windows does not have it.
const exclusiveAddrUse = ^windows.SO_REUSEADDR

// setsockopt carries out one step of the plan on fd. Its error names the
// option and wraps the WSA error, so errors.Is works on it.
func setsockopt(fd uintptr, s step) error {
	v := 0
	if s.on {
		v = 1
	}
	h := windows.Handle(fd)
	var err error
	switch s.opt {
	case soReuseAddr:
		err = windows.SetsockoptInt(h, windows.SOL_SOCKET, windows.SO_REUSEADDR, v)
	case soExclusiveAddrUse:
		err = windows.SetsockoptInt(h, windows.SOL_SOCKET, exclusiveAddrUse, v)
	case soLinger:
		// Windows' struct linger is two u_shorts: SetsockoptLinger copies
		// Onoff and Linger into one (each cut to 16 bits) and passes its 4
		// bytes, as syscall does for net.TCPConn.SetLinger.
		err = windows.SetsockoptLinger(h, windows.SOL_SOCKET, windows.SO_LINGER, &windows.Linger{Onoff: int32(v)})
	default:
		err = errors.ErrUnsupported
	}
	if err != nil {
		return os.NewSyscallError("setsockopt "+s.opt.String(), err)
	}
	return nil
}
