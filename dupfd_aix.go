package reuse

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// dupCloseOnExec duplicates fd and makes the copy close-on-exec. AIX has no
// F_DUPFD_CLOEXEC in x/sys: holding ForkLock keeps a concurrent fork from
// inheriting the copy between the two calls.
func dupCloseOnExec(fd int) (int, error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	nfd, err := unix.Dup(fd)
	if err != nil {
		return -1, err
	}
	unix.CloseOnExec(nfd)
	return nfd, nil
}
