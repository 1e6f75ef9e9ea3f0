package census

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// lookupOwners fills in PID and Command of the sockets with an inode. Linux
// tells which process holds a socket only through the links
// "socket:[inode]" under /proc/PID/fd, so this reads the links of one
// process after another, the caller's first and then the others in /proc's
// order (by PID), until every inode is found or deadline passes.
func lookupOwners(socks []Socket, deadline time.Time) Owners {
	l := ownerLookup{socks: socks, deadline: deadline, want: map[uint64]int{}}
	for i, s := range socks {
		if s.Inode != 0 {
			l.want[s.Inode] = i
		}
	}
	if len(l.want) == 0 {
		return Owners{}
	}
	// /proc/self, unlike /proc/<Getpid()>, is right even when /proc is
	// another PID namespace's.
	self := os.Getpid()
	if l.scan("self", self); l.done() {
		return l.o
	}
	proc, err := os.Open("/proc")
	if err != nil {
		l.o.Hidden++ // no process can be looked at
		return l.o
	}
	defer proc.Close()
	for !l.done() {
		names, err := proc.Readdirnames(128)
		for _, name := range names {
			pid, perr := strconv.Atoi(name)
			if perr != nil || pid <= 0 || pid == self {
				continue // not a process, or done already
			}
			if l.scan(name, pid); l.done() {
				break
			}
		}
		if err != nil { // io.EOF: every process was looked at
			if !errors.Is(err, io.EOF) {
				l.o.Hidden++
			}
			break
		}
	}
	return l.o
}

// ownerLookup is the state of one lookupOwners call.
type ownerLookup struct {
	socks    []Socket
	want     map[uint64]int // inode -> index in socks, of the sockets not found yet
	deadline time.Time
	o        Owners
	// link holds a link's target; a longer one, never a socket's, is cut.
	link [len("socket:[18446744073709551615]")]byte
}

// done reports whether the lookup is over: every socket found, or the
// deadline passed, which it records.
func (l *ownerLookup) done() bool {
	if len(l.want) == 0 {
		return true
	}
	if !l.o.TimedOut && time.Now().After(l.deadline) {
		l.o.TimedOut = true
	}
	return l.o.TimedOut
}

// scan reads the fd links of the process named name under /proc, whose PID
// is pid. A process that exits meanwhile holds nothing any more.
func (l *ownerLookup) scan(name string, pid int) {
	dir, err := os.Open("/proc/" + name + "/fd")
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			l.o.Hidden++ // another user's process, to a caller who is not root
		}
		return
	}
	defer dir.Close()
	dirfd := int(dir.Fd())
	comm := ""
	for !l.done() {
		fds, err := dir.Readdirnames(256)
		for _, fd := range fds {
			n, err := unix.Readlinkat(dirfd, fd, l.link[:])
			if err != nil {
				continue // closed meanwhile
			}
			i, ok := l.want[socketInode(l.link[:n])]
			if !ok {
				continue
			}
			delete(l.want, l.socks[i].Inode)
			if comm == "" {
				comm = readComm(name)
			}
			l.socks[i].PID, l.socks[i].Command = pid, comm
		}
		if err != nil {
			return
		}
	}
}

// socketInode parses the target of a /proc/PID/fd link to a socket,
// "socket:[12345]", and returns 0 for any other.
func socketInode(link []byte) uint64 {
	const prefix = "socket:["
	if len(link) <= len(prefix)+1 || string(link[:len(prefix)]) != prefix || link[len(link)-1] != ']' {
		return 0
	}
	ino, err := parseUint(link[len(prefix):len(link)-1], 10, 64)
	if err != nil {
		return 0
	}
	return ino
}

// readComm returns the command name of process name, or "" if it is gone.
func readComm(name string) string {
	b, err := os.ReadFile("/proc/" + name + "/comm")
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(b), "\n")
}
