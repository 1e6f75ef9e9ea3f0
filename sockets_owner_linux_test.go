package reuse

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestSocketsOwnerChild: sockets that only a child process holds carry the
// child's PID and command name, found by the scan of other processes.
func TestSocketsOwnerChild(t *testing.T) {
	pid, port := startSocketHolder(t, 3)
	local := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	socks, err := Sockets(int(port))
	require.NoError(t, err)
	// Without the TIME_WAIT entries that the port number's earlier users
	// may have left on it.
	mine := slices.DeleteFunc(censusAt(socks, local), func(s Socket) bool { return s.Inode == 0 })
	require.Equal(t, map[State]int{StateListen: 1, StateEstablished: 3}, censusCounts(mine), censusFormat(socks))

	comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	require.NoError(t, err)
	want := string(comm[:len(comm)-1])
	require.Equal(t, want, commOf(filepath.Base(os.Args[0])), "the child is this test binary")
	for _, s := range mine {
		assert.Equal(t, pid, s.PID, "%v", s)
		assert.Equal(t, want, s.Command, "%v", s)
	}
}

// commOf is the command name Linux keeps for an executable named base: at
// most 15 bytes of it.
func commOf(base string) string { return base[:min(len(base), 15)] }

// TestResolveOwnersMatchesV0 runs the owner lookup and the one it replaced
// (resolveOwnersV0, below) on a fixture of known sockets and checks that both
// give the same PIDs and commands, the documented ones: the caller when it
// is one of the holders, else the first holder in /proc's order, which is
// PID order.
func TestResolveOwnersMatchesV0(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	self := os.Getpid()
	selfComm := censusSelfComm(t)

	// Descriptors of this process with unused numbers between them and one
	// far above the others, so that both the tried numbers and the listed
	// tail of /proc/self/fd are used.
	spread(t)

	// This process's own listener and connections.
	ownLn, own := censusListen(t, "tcp4", lo)
	censusConnect(t, ownLn, 2)

	// listenerFile returns a listener's socket as a file to hand to a
	// child, and its inode. Unless keep, the listener is closed: the
	// child's copy is the only one.
	listenerFile := func(keep bool) (*os.File, uint64) {
		ln, _ := censusListen(t, "tcp4", lo)
		f, err := ln.File()
		require.NoError(t, err)
		t.Cleanup(func() { f.Close() })
		var st unix.Stat_t
		require.NoError(t, unix.Fstat(int(f.Fd()), &st))
		if !keep {
			require.NoError(t, ln.Close())
		}
		return f, st.Ino
	}
	sharedFile, sharedIno := listenerFile(true) // this process and child 1
	twoFile, twoIno := listenerFile(false)      // children 1 and 2

	pid1, port1 := startSocketHolder(t, 2, sharedFile, twoFile)
	pid2, port2 := startSocketHolder(t, 1, twoFile)
	require.NoError(t, sharedFile.Close())
	require.NoError(t, twoFile.Close())
	first := min(pid1, pid2)

	var fixture []Socket
	for _, port := range []uint16{own.Port(), port1, port2} {
		socks, err := socketsNetlink(port)
		require.NoError(t, err)
		fixture = append(fixture, censusAt(socks, netip.AddrPortFrom(lo, port))...)
	}
	fixture = append(fixture,
		Socket{Inode: sharedIno},
		Socket{Inode: twoIno},
		Socket{State: StateTimeWait},       // no inode: no owner
		Socket{Inode: 1<<63 + 12345},       // nobody's: the whole of /proc is scanned
		Socket{Inode: 1<<63 + 12345 + 101}, // ditto, and the map keeps both
	)

	got := slices.Clone(fixture)
	resolveOwners(got)
	v0 := slices.Clone(fixture)
	resolveOwnersV0(v0)
	assert.Equal(t, v0, got, "new:\n%sV0:\n%s", censusFormat(got), censusFormat(v0))

	comm := commOf(filepath.Base(os.Args[0]))
	for i, s := range got {
		var pid int
		switch {
		case s.Inode == 0 || s.Inode > 1<<63:
			pid = 0
		case s.Inode == sharedIno:
			pid = self
		case s.Inode == twoIno:
			pid = first
		case s.Local.Port() == own.Port():
			pid = self
		case s.Local.Port() == port1:
			pid = pid1
		case s.Local.Port() == port2:
			pid = pid2
		}
		assert.Equal(t, pid, s.PID, "fixture[%d]: %v", i, s)
		switch pid {
		case 0:
			assert.Empty(t, s.Command, "fixture[%d]", i)
		case self:
			assert.Equal(t, selfComm, s.Command, "fixture[%d]", i)
		default:
			assert.Equal(t, comm, s.Command, "fixture[%d]", i)
		}
	}
}

// spread opens descriptors in this process, until the test ends, with
// unused numbers among them and one numbered far above the others.
func spread(t *testing.T) {
	t.Helper()
	var fds []int
	t.Cleanup(func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	})
	for i := range 64 {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		require.NoError(t, err)
		if i%3 == 0 {
			defer unix.Close(fd) // a hole, once spread returns
			continue
		}
		fds = append(fds, fd)
	}
	high, err := unix.FcntlInt(uintptr(fds[0]), unix.F_DUPFD_CLOEXEC, 3000)
	require.NoError(t, err)
	fds = append(fds, high)
}

// TestEachFD: eachFD sees every descriptor that a listing of the fd
// directory shows, in this process (with fstat, as scanSelf uses it) and in
// another (with readlinkat, as scanOther does), however the numbers are
// spread.
func TestEachFD(t *testing.T) {
	spread(t)
	pid, _ := startSocketHolder(t, 5)
	for name, dirName := range map[string]string{"self": "/proc/self/fd", "child": "/proc/" + strconv.Itoa(pid) + "/fd"} {
		t.Run(name, func(t *testing.T) {
			self := name == "self"
			o := ownerScan{dents: make([]byte, 256)} // several getdents calls
			dir, err := unix.Open(dirName, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			require.NoError(t, err)
			defer unix.Close(dir)
			// The listing to compare with, opened first: its own
			// descriptor is open for eachFD too.
			list, err := os.Open(dirName)
			require.NoError(t, err)
			defer list.Close()

			seen := map[int]string{}
			calls := 0
			o.eachFD(dir, func(fd int, name []byte) bool {
				calls++
				if name != nil {
					require.Equal(t, byte(0), name[len(name)-1], "NUL-terminated")
					require.Equal(t, strconv.Itoa(fd), string(name[:len(name)-1]))
				}
				if self {
					var st unix.Stat_t
					if unix.Fstat(fd, &st) == nil {
						seen[fd] = "open"
					}
					return false
				}
				if name == nil {
					name = append(strconv.AppendUint(o.name[:0], uint64(fd), 10), 0)
				}
				if n, err := readlinkat(dir, &name[0], o.link[:]); err == nil {
					seen[fd] = string(o.link[:n])
				}
				return false
			})

			ents, err := list.Readdirnames(-1)
			require.NoError(t, err)
			for _, e := range ents {
				fd, err := strconv.Atoi(e)
				require.NoError(t, err)
				_, ok := seen[fd]
				assert.True(t, ok, "descriptor %d of %s not seen", fd, dirName)
				if self {
					continue
				}
				link, err := os.Readlink(dirName + "/" + e)
				require.NoError(t, err)
				if len(link) > len(o.link) {
					link = link[:len(o.link)]
				}
				assert.Equal(t, link, seen[fd], "descriptor %d", fd)
			}
			if fdDirSizeIsCount() {
				var st unix.Stat_t
				require.NoError(t, unix.Fstat(dir, &st))
				assert.Equal(t, len(ents), int(st.Size), "the size counts the open descriptors")
				assert.Less(t, calls, 2*len(ents), "numbers tried: the open ones and the holes below their count")
			}
			t.Logf("%s: %d descriptors, %d calls", dirName, len(seen), calls)
		})
	}
}

func TestNextDirent(t *testing.T) {
	dir, err := unix.Open("/proc", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(dir)
	buf := make([]byte, 64<<10)
	n, err := unix.Getdents(dir, buf)
	require.NoError(t, err)
	var names []string
	for b := buf[:n]; ; {
		name, rest, ok := nextDirent(b)
		if !ok {
			assert.Empty(t, b, "the whole result is parsed")
			break
		}
		b = rest
		names = append(names, string(name))
	}
	_, _, std := unix.ParseDirent(buf[:n], -1, nil) // without "." and ".."
	assert.Equal(t, append([]string{".", ".."}, std...), names)
	assert.Contains(t, names, "self")
	assert.Contains(t, names, strconv.Itoa(os.Getpid()))

	// Malformed: too short, a record length past the end, no NUL.
	for _, b := range [][]byte{make([]byte, 10), append(make([]byte, 16), 0xff, 0, 0, 'x'), append(make([]byte, 16), 20, 0, 0, 'x')} {
		_, _, ok := nextDirent(b)
		assert.False(t, ok, "%q", b)
	}
}

// resolveOwnersV0 and ownersInV0 are the owner lookup as it was before
// eachFD, kept to check that the new one gives the same results.
func resolveOwnersV0(socks []Socket) {
	var want map[uint64]int // inode -> index in socks
	for i, s := range socks {
		if s.Inode == 0 {
			continue
		}
		if want == nil {
			want = make(map[uint64]int, len(socks))
		}
		want[s.Inode] = i
	}
	if len(want) == 0 {
		return
	}
	self := os.Getpid()
	link := make([]byte, len("socket:[18446744073709551615]"))
	if ownersInV0("self", self, true, want, socks, link); len(want) == 0 {
		return
	}
	proc, err := os.Open("/proc")
	if err != nil {
		return
	}
	names, _ := proc.Readdirnames(-1)
	proc.Close()
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid <= 0 || pid == self {
			continue
		}
		if ownersInV0(name, pid, false, want, socks, link); len(want) == 0 {
			return
		}
	}
}

func ownersInV0(name string, pid int, self bool, want map[uint64]int, socks []Socket, link []byte) {
	dir, err := os.Open("/proc/" + name + "/fd")
	if err != nil {
		return
	}
	defer dir.Close()
	fds, err := dir.Readdirnames(-1)
	if err != nil || len(fds) == 0 {
		return
	}
	rc, err := dir.SyscallConn()
	if err != nil {
		return
	}
	var comm string
	var st unix.Stat_t
	rc.Control(func(dirfd uintptr) {
		for _, fd := range fds {
			var ino uint64
			if self {
				n, err := strconv.Atoi(fd)
				if err != nil || unix.Fstat(n, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
					continue
				}
				ino = uint64(st.Ino)
			} else {
				n, err := unix.Readlinkat(int(dirfd), fd, link)
				if err != nil {
					continue
				}
				var ok bool
				if ino, ok = socketInode(link[:n]); !ok {
					continue
				}
			}
			i, ok := want[ino]
			if !ok {
				continue
			}
			delete(want, ino)
			if comm == "" {
				comm = readComm(name)
			}
			socks[i].PID, socks[i].Command = pid, comm
			if len(want) == 0 {
				return
			}
		}
	})
}

// BenchmarkResolveOwners measures the owner lookup alone, and the one it
// replaced, when the holder of the sockets looked for has 10,000 sockets
// open: this process (holder=self: the 4 sockets of a port opened last, found
// with an fstat of each descriptor) or a child (holder=child: the 5,001 of
// the child's port, found with a link read per descriptor, after this
// process's own few).
func BenchmarkResolveOwners(b *testing.B) {
	const pairs = 5000
	lo := netip.MustParseAddr("127.0.0.1")
	impls := []struct {
		name string
		fn   func([]Socket)
	}{{"new", resolveOwners}, {"v0", resolveOwnersV0}}
	run := func(b *testing.B, fixture []Socket, pid int) {
		for _, impl := range impls {
			b.Run("impl="+impl.name, func(b *testing.B) {
				b.ReportAllocs()
				socks := slices.Clone(fixture)
				for b.Loop() {
					for i := range socks {
						socks[i].PID = 0
					}
					impl.fn(socks)
				}
				for _, s := range socks {
					require.Equal(b, pid, s.PID)
				}
			})
		}
	}
	b.Run("holder=self", func(b *testing.B) {
		benchRaiseNOFILE(b, 2*pairs+64)
		others, _ := censusListen(b, "tcp4", lo)
		benchConnect(b, others, pairs)
		ln, local := censusListen(b, "tcp4", lo)
		benchConnect(b, ln, 3)
		socks, err := socketsNetlink(local.Port())
		require.NoError(b, err)
		run(b, censusAt(socks, local), os.Getpid())
	})
	b.Run("holder=child", func(b *testing.B) {
		pid, port := startSocketHolder(b, pairs)
		// All the sockets on the child's port, the last of them among its
		// last descriptors: the scan reads every link of the child.
		socks, err := socketsNetlink(port)
		require.NoError(b, err)
		run(b, censusAt(socks, netip.AddrPortFrom(lo, port)), pid)
	})
}
