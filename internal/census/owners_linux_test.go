package census

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestSocketsOwnerChild: sockets that only a child process holds carry the
// child's PID and command name, found by the scan of other processes.
func TestSocketsOwnerChild(t *testing.T) {
	pid, port := startSocketHolder(t, 3)
	local := netip.AddrPortFrom(lo4, port)
	socks := readAll(t, port)
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

// TestOwnersShared: a socket that several processes hold is named after the
// caller when it is one of them, else after the first in /proc's order,
// which is PID order; sockets without an inode, or that no process holds,
// get no owner, and then the whole of /proc was read: nothing is hidden
// from root, and the lookup did not time out.
func TestOwnersShared(t *testing.T) {
	self := os.Getpid()

	// listenerFile returns a listener's socket as a file to hand to a
	// child, and its inode. Unless keep, the listener is closed: the
	// children's copies are the only ones.
	listenerFile := func(keep bool) (*os.File, uint64) {
		ln, _ := censusListen(t, "tcp4", lo4)
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
	pid1, _ := startSocketHolder(t, 0, sharedFile, twoFile)
	pid2, _ := startSocketHolder(t, 0, twoFile)
	require.NoError(t, sharedFile.Close())
	require.NoError(t, twoFile.Close())

	socks := []Socket{
		{Inode: sharedIno},
		{Inode: twoIno},
		{State: StateTimeWait},       // no inode: no owner
		{Inode: 1<<63 + 12345},       // nobody's: the whole of /proc is read
		{Inode: 1<<63 + 12345 + 101}, // ditto
	}
	o := lookupOwners(socks, time.Now().Add(DefaultTimeout))
	assert.Equal(t, self, socks[0].PID, "the caller first")
	assert.Equal(t, censusSelfComm(t), socks[0].Command)
	assert.Equal(t, min(pid1, pid2), socks[1].PID, "the lower PID of two")
	assert.Equal(t, commOf(filepath.Base(os.Args[0])), socks[1].Command)
	for _, s := range socks[2:] {
		assert.Zero(t, s.PID, "%+v", s)
		assert.Empty(t, s.Command, "%+v", s)
	}
	assert.False(t, o.TimedOut)
	if os.Geteuid() == 0 {
		assert.Zero(t, o.Hidden, "root reads every process's descriptors")
	}
}

// TestOwnersDeadline: the owner lookup stops at its deadline and says so.
func TestOwnersDeadline(t *testing.T) {
	ln, local := censusListen(t, "tcp4", lo4)
	censusConnect(t, ln, 1)
	socks := censusWait(t, local, "listener and connection", censusHas(map[State]int{StateListen: 1, StateEstablished: 1}))
	for i := range socks {
		socks[i].PID, socks[i].Command = 0, ""
	}
	o := lookupOwners(socks, time.Now().Add(-time.Millisecond))
	assert.True(t, o.TimedOut)
	for _, s := range socks {
		assert.Zero(t, s.PID, "no process was looked at")
	}

	tab, err := Read(Query{Port: local.Port(), Owners: true})
	require.NoError(t, err)
	assert.False(t, tab.Owners.TimedOut)
	for _, s := range censusAt(tab.Sockets, local) {
		assert.Equal(t, os.Getpid(), s.PID)
	}
}
