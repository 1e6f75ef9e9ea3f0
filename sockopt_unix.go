//go:build aix || darwin || dragonfly || freebsd || linux || netbsd || openbsd || solaris

package reuse

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// setsockopt carries out one step of the plan on fd. Its error names the
// option and wraps the errno, so errors.Is(err, unix.EINVAL) works.
func setsockopt(fd uintptr, s step) error {
	v := 0
	if s.on {
		v = 1
	}
	var err error
	switch s.opt {
	case soReuseAddr:
		err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, v)
	case soReusePort, soReusePortLB:
		name, ok := reusePortOption(s.opt)
		if !ok {
			err = errors.ErrUnsupported
			break
		}
		err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, name, v)
	case soLinger:
		// l_linger 0 means "abort on close" whether the unit is seconds or,
		// as for SO_LINGER on macOS, clock ticks.
		err = unix.SetsockoptLinger(int(fd), unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: int32(v)})
	default:
		err = errors.ErrUnsupported
	}
	if err != nil {
		return os.NewSyscallError("setsockopt "+s.opt.String(), err)
	}
	return nil
}
