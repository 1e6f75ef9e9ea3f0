package reuse

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// executable returns the path Upgrade starts the new process from: this
// program's file (os.Executable). Upgrade refuses a file that a user other
// than this one and root could replace, by writing it or a directory on its
// path, as Listen refuses to replace a unix socket in such a place; where
// no other user can, only this user and root can change what the path
// leads to between the check and the start.
func executable() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	d, distrust, err := walkTrusted(filepath.Dir(exe))
	if err != nil {
		return "", err
	}
	defer unix.Close(d)
	fd, st, err := openStat(d, filepath.Base(exe), unix.O_NOFOLLOW)
	if err != nil {
		return "", fmt.Errorf("%s: %w", exe, err)
	}
	unix.Close(fd)
	euid := uint32(os.Geteuid())
	switch {
	case distrust != "":
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		distrust = exe + " is not a regular file"
	case st.Uid != euid && st.Uid != 0:
		distrust = fmt.Sprintf("%s belongs to user %d", exe, st.Uid)
	case st.Mode&0o022 != 0:
		distrust = exe + " can be written by other users"
	}
	if distrust != "" {
		return "", fmt.Errorf("%s could be replaced by another user, and Upgrade would run what they put there: %s", exe, distrust)
	}
	return exe, nil
}
