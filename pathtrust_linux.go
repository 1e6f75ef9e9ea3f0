package reuse

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// maxSymlinks is the kernel's own limit on links in one lookup.
const maxSymlinks = 40

// walkTrusted resolves dir as the kernel does, one element at a time, with
// openat(O_PATH|O_NOFOLLOW) from "/" or the working directory, following
// symbolic links itself. It returns an O_PATH descriptor of the directory
// and why someone other than this user and root could change what dir
// resolves to ("" when no one can). No one can when every directory on the
// way belongs to this user or root and no other user can write it, except
// that one on the way, not the last, may be a sticky directory that others
// can write when what the walk takes from it belongs to this user or root
// (in a sticky directory only a file's owner can rename or remove it).
//
// Write permission granted by a POSIX ACL needs no separate look: with
// named entries, the mode's group bits are the ACL's mask, which bounds
// what every named entry grants, so a mode without group write means no
// named user or group can write either.
func walkTrusted(dir string) (fd int, distrust string, err error) {
	euid := uint32(os.Geteuid())
	mistrust := func(format string, args ...any) {
		if distrust == "" {
			distrust = fmt.Sprintf(format, args...)
		}
	}
	ours := func(uid uint32) bool { return uid == euid || uid == 0 }
	othersWrite := func(st *unix.Stat_t) bool { return st.Mode&0o022 != 0 }
	sticky := func(st *unix.Stat_t) bool { return othersWrite(st) && st.Mode&unix.S_ISVTX != 0 }
	checkDir := func(st *unix.Stat_t, name string) {
		switch {
		case !ours(st.Uid):
			mistrust("%s belongs to user %d", quoteName(name), st.Uid)
		case othersWrite(st) && !sticky(st):
			mistrust("%s can be written by other users", quoteName(name))
		}
	}

	var cur int
	var curSt unix.Stat_t
	start := func(name string) error {
		var err error
		if cur, curSt, err = openStat(unix.AT_FDCWD, name, unix.O_DIRECTORY); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		checkDir(&curSt, name)
		return nil
	}
	name := "."
	if filepath.IsAbs(dir) {
		name = "/"
	}
	if err := start(name); err != nil {
		return -1, "", err
	}
	fail := func(err error) (int, string, error) {
		unix.Close(cur)
		return -1, "", err
	}

	rest := strings.Split(dir, "/")
	links := 0
	for len(rest) > 0 {
		elem := rest[0]
		rest = rest[1:]
		switch elem {
		case "", ".":
			continue
		case "..":
			// The kernel goes to the directory's real parent, which is what
			// openat(cur, "..") opens; at the root it stays.
			up, st, err := openStat(cur, "..", unix.O_DIRECTORY)
			if err != nil {
				return fail(fmt.Errorf("%s/..: %w", quoteName(name), err))
			}
			if st.Dev == curSt.Dev && st.Ino == curSt.Ino {
				unix.Close(up)
				continue
			}
			parent := filepath.Join(name, "..")
			if sticky(&st) && !ours(curSt.Uid) {
				mistrust("%s belongs to user %d and is in %s, which other users can write", quoteName(name), curSt.Uid, quoteName(parent))
			}
			checkDir(&st, parent)
			unix.Close(cur)
			cur, curSt, name = up, st, parent
			continue
		}
		entry := filepath.Join(name, elem)
		next, st, err := openStat(cur, elem, unix.O_NOFOLLOW)
		if err != nil {
			return fail(fmt.Errorf("%s: %w", quoteName(entry), err))
		}
		if sticky(&curSt) && !ours(st.Uid) {
			mistrust("%s belongs to user %d and is in %s, which other users can write", quoteName(entry), st.Uid, quoteName(name))
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			checkDir(&st, entry)
			unix.Close(cur)
			cur, curSt, name = next, st, entry
		case unix.S_IFLNK:
			target, err := readlinkFD(next)
			unix.Close(next)
			if err != nil {
				return fail(fmt.Errorf("%s: %w", quoteName(entry), err))
			}
			if links++; links > maxSymlinks {
				return fail(fmt.Errorf("%s: %w", quoteName(dir), os.NewSyscallError("open", unix.ELOOP)))
			}
			// A link in /proc (/proc/self/cwd, /proc/N/root) leads to an
			// object, not to its text: the walk cannot follow it as the
			// kernel does.
			var fs unix.Statfs_t
			if unix.Fstatfs(cur, &fs) != nil || fs.Type == unix.PROC_SUPER_MAGIC {
				mistrust("%s is a link in /proc, which the walk cannot follow as the kernel does", quoteName(entry))
			}
			if filepath.IsAbs(target) {
				unix.Close(cur)
				if err := start("/"); err != nil {
					return -1, "", err
				}
				name = "/"
			}
			rest = append(strings.Split(target, "/"), rest...)
		default:
			unix.Close(next)
			return fail(fmt.Errorf("%s: %w", quoteName(entry), os.NewSyscallError("openat", unix.ENOTDIR)))
		}
	}
	if othersWrite(&curSt) {
		mistrust("%s can be written by other users", quoteName(name))
	}
	return cur, distrust, nil
}

// openStat opens name in dir with O_PATH (which opens nothing: not a
// device, not a named pipe) and flags, and returns the descriptor with its
// fstat.
func openStat(dir int, name string, flags int) (int, unix.Stat_t, error) {
	var st unix.Stat_t
	fd, err := unix.Openat(dir, name, unix.O_PATH|unix.O_CLOEXEC|flags, 0)
	if err != nil {
		return -1, st, os.NewSyscallError("openat", err)
	}
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, st, os.NewSyscallError("fstat", err)
	}
	return fd, st, nil
}

// readlinkFD reads the symbolic link that the O_PATH descriptor fd holds.
func readlinkFD(fd int) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(fd, "", buf)
		if err != nil {
			return "", os.NewSyscallError("readlinkat", err)
		}
		if n < size {
			return string(buf[:n]), nil
		}
		if size >= unix.PathMax {
			return "", os.NewSyscallError("readlinkat", unix.ENAMETOOLONG)
		}
	}
}
