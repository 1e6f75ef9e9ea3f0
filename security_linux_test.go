package reuse

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// joinEnv carries "verb network address option" to TestHelperJoin: verb is
// listen or packet, option reuseport, reuseaddr or none.
const joinEnv = "REUSE_HELPER_JOIN"

// nobody is the user and group the other-user children run as.
const nobody = 65534

// TestHelperJoin is not a test: it is the child process of the tests that
// try to take a port from another user. It binds as asked, prints
// "JOIN uid=U result=R" with R "ok" or the errno's name, holds the socket
// until its stdin closes, and exits 0 either way.
func TestHelperJoin(t *testing.T) {
	spec := strings.Fields(os.Getenv(joinEnv))
	if len(spec) != 4 {
		t.Skip("child process only")
	}
	var opts []Option
	switch spec[3] {
	case "reuseport":
		opts = append(opts, WithReusePort(true))
	case "reuseaddr":
		opts = append(opts, WithReuseAddr(true))
	}
	var c io.Closer
	var err error
	if spec[0] == "packet" {
		c, err = ListenPacket(spec[1], spec[2], opts...)
	} else {
		c, err = Listen(spec[1], spec[2], opts...)
	}
	result := "ok"
	if err != nil {
		result = "error"
		if e := errnoOf(err); e != 0 {
			result = unix.ErrnoName(e)
		}
	}
	fmt.Printf("JOIN uid=%d result=%s err=%v\n", os.Geteuid(), result, err)
	if c != nil {
		io.Copy(io.Discard, os.Stdin) // until the parent closes stdin
		c.Close()
	}
}

// nobodyBinary returns a copy of the test binary that user nobody can run,
// or skips the test: the binary may lie under a directory closed to other
// users (a test's TempDir is 0700), so the copy goes, mode 0755, into a
// directory of its own, 0755, in the system's temp directory.
func nobodyBinary(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to start a process as another user")
	}
	dir, err := os.MkdirTemp("", "reuse-nobody-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	src, err := os.Open(os.Args[0])
	require.NoError(t, err)
	defer src.Close()
	path := filepath.Join(dir, filepath.Base(os.Args[0]))
	dst, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	require.NoError(t, err)
	_, err = io.Copy(dst, src)
	require.NoError(t, errors.Join(err, dst.Close()))
	return path
}

// join runs TestHelperJoin from bin, as uid unless it is -1, waits for its
// verdict and returns it: "ok" or an errno name. The child keeps what it
// bound until the test ends.
func join(t *testing.T, bin string, uid int, verb, network, address, option string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	cmd := helperCmd(ctx, bin, "TestHelperJoin", joinEnv+"="+strings.Join([]string{verb, network, address, option}, " "))
	if uid >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
		cmd.Dir = filepath.Dir(bin)
	}
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		cancel()
		if errors.Is(err, fs.ErrPermission) {
			t.Skipf("uid %d cannot run %s (a directory above it is closed to other users?): %v", uid, bin, err)
		}
		require.NoError(t, err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
		cancel()
	})
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "JOIN "); ok {
			t.Logf("child: %s", rest)
			f := strings.Fields(rest)
			if uid >= 0 {
				require.Equal(t, fmt.Sprintf("uid=%d", uid), f[0], "the child runs as the other user")
			}
			return strings.TrimPrefix(f[1], "result=")
		}
	}
	stdin.Close()
	cmd.Wait() // before reading stderr, which exec writes from another goroutine
	t.Fatalf("the child said no verdict; stderr:\n%s", stderr.String())
	return ""
}

// TestReusePort_AnotherUserCannotJoin: a WithReusePort listener shares its
// port with a process of the same user (the test's control) but not with
// one of another user, also asking for SO_REUSEPORT: that one gets
// EADDRINUSE, and the port keeps one listener.
func TestReusePort_AnotherUserCannotJoin(t *testing.T) {
	bin := nobodyBinary(t)
	for network, host := range hosts(t) {
		t.Run(network, func(t *testing.T) {
			ln, err := listenTCP(t, network, hostPort(host, 0), mptcpOK(), WithReusePort(true))
			require.NoError(t, err)
			addr := ln.Addr().String()

			assert.Equal(t, "EADDRINUSE", join(t, bin, nobody, "listen", network, addr, "reuseport"), "uid %d joins root's group", nobody)
			assert.Equal(t, "EADDRINUSE", join(t, bin, nobody, "listen", network, addr, "reuseaddr"), "uid %d binds past root's listener", nobody)
			socks, err := Sockets(port(ln.Addr()))
			require.NoError(t, err)
			require.Len(t, socks, 1, "%v", socks)
			assert.Equal(t, StateListen, socks[0].State)
			assert.Zero(t, socks[0].UID)

			// Control: the same user, with the same option, can join.
			assert.Equal(t, "ok", join(t, os.Args[0], -1, "listen", network, addr, "reuseport"), "the same user joins")
			socks, err = Sockets(port(ln.Addr()))
			require.NoError(t, err)
			assert.Len(t, socks, 2, "two listeners now: %v", socks)
		})
	}
}

// TestListenPacket_AnotherUserCannotTakeADefaultUDPPort: a UDP socket made
// with the defaults has no SO_REUSEADDR, so another user's socket cannot
// bind its port even with SO_REUSEADDR or SO_REUSEPORT and receive its
// datagrams. With WithReuseAddr(true) it can: the reason it is not a
// default.
func TestListenPacket_AnotherUserCannotTakeADefaultUDPPort(t *testing.T) {
	bin := nobodyBinary(t)
	for network, host := range map[string]string{"udp4": "127.0.0.1", "udp6": hosts(t)["tcp6"]} {
		if host == "" {
			continue
		}
		t.Run(network, func(t *testing.T) {
			pc, err := ListenPacket(network, hostPort(host, 0))
			require.NoError(t, err)
			defer pc.Close()
			addr := pc.LocalAddr().String()
			assert.Equal(t, "EADDRINUSE", join(t, bin, nobody, "packet", network, addr, "reuseaddr"))
			assert.Equal(t, "EADDRINUSE", join(t, bin, nobody, "packet", network, addr, "reuseport"))
			assert.Equal(t, "EADDRINUSE", join(t, bin, nobody, "packet", network, addr, "none"))

			shared, err := ListenPacket(network, hostPort(host, 0), WithReuseAddr(true))
			require.NoError(t, err)
			defer shared.Close()
			assert.Equal(t, "ok", join(t, bin, nobody, "packet", network, shared.LocalAddr().String(), "reuseaddr"),
				"SO_REUSEADDR on both: another user shares the port")
		})
	}
}

// TestUDP_NoSocketOptionByDefault: ListenPacket and Dial leave UDP sockets
// without SO_REUSEADDR and SO_REUSEPORT unless asked, on every UDP network.
func TestUDP_NoSocketOptionByDefault(t *testing.T) {
	h := hosts(t)
	addrs := map[string]string{"udp": "127.0.0.1:0", "udp4": "127.0.0.1:0"}
	if v6, ok := h["tcp6"]; ok {
		addrs["udp6"] = hostPort(v6, 0)
	}
	for network, addr := range addrs {
		pc, err := ListenPacket(network, addr)
		require.NoError(t, err, network)
		c, err := Dial(network, "", pc.LocalAddr().String())
		require.NoError(t, err, network)
		for what, conn := range map[string]syscall.Conn{"ListenPacket": pc.(*net.UDPConn), "Dial": c.(*net.UDPConn)} {
			assert.Zero(t, getInt(t, conn, unix.SOL_SOCKET, unix.SO_REUSEADDR), "%s %s: SO_REUSEADDR", what, network)
			assert.Zero(t, getInt(t, conn, unix.SOL_SOCKET, unix.SO_REUSEPORT), "%s %s: SO_REUSEPORT", what, network)
		}
		c.Close()
		pc.Close()
	}
}

// optionCombos is every valid combination of the options that can touch a
// port's sharing: SO_REUSEADDR and SO_REUSEPORT unset, on or off, with
// nothing else, WithExclusiveAddr(true) or WithRSTOnClose().
func optionCombos() (combos [][]Option, names []string, reusePort []bool) {
	for _, ra := range []fuzzOption{numFuzzOptions, optReuseAddrOn, optReuseAddrOff} {
		for _, rp := range []fuzzOption{numFuzzOptions, optReusePortOn, optReusePortOff} {
			for _, extra := range []fuzzOption{numFuzzOptions, optExclusiveOn, optRST} {
				if rp == optReusePortOn && extra == optExclusiveOn {
					continue // refused before a socket exists
				}
				var opts []Option
				var name []string
				for _, o := range []fuzzOption{ra, rp, extra} {
					if o == numFuzzOptions {
						continue
					}
					opts = append(opts, map[fuzzOption]Option{
						optReuseAddrOn: WithReuseAddr(true), optReuseAddrOff: WithReuseAddr(false),
						optReusePortOn: WithReusePort(true), optReusePortOff: WithReusePort(false),
						optExclusiveOn: WithExclusiveAddr(true), optRST: WithRSTOnClose(),
					}[o])
					name = append(name, o.String())
				}
				combos = append(combos, opts)
				names = append(names, "["+strings.Join(name, " ")+"]")
				reusePort = append(reusePort, rp == optReusePortOn)
			}
		}
	}
	return combos, names, reusePort
}

// TestSecondLiveListener_EveryOptionCombination extends
// TestSecondLiveListener to tcp6 and to every pair of option combinations:
// a second listener on a live port is let in only when both have
// WithReusePort(true), whatever else either asks for.
func TestSecondLiveListener_EveryOptionCombination(t *testing.T) {
	combos, names, reusePort := optionCombos()
	require.Len(t, combos, 24)
	for proto, mptcp := range protocols() {
		for network, host := range hosts(t) {
			for i, first := range combos {
				ln, err := listenTCP(t, network, hostPort(host, 0), mptcp, first...)
				require.NoError(t, err)
				for j, second := range combos {
					lc := ListenConfig(second...)
					lc.SetMultipathTCP(mptcp)
					ln2, err := lc.Listen(context.Background(), network, ln.Addr().String())
					if reusePort[i] && reusePort[j] {
						if assert.NoError(t, err, "%s %s: %s then %s", proto, network, names[i], names[j]) {
							ln2.Close()
						}
						continue
					}
					if assert.Error(t, err, "%s %s: %s then %s", proto, network, names[i], names[j]) {
						assert.True(t, IsAddrInUse(err), "%v", err)
					} else {
						ln2.Close()
					}
				}
				require.NoError(t, ln.Close())
			}
		}
	}
}

// TestPlan_WindowsNeverSharesATCPPort extends
// TestPlan_WindowsNeverSetsReuseAddrOnTCP to every sequence of up to three
// options, through Listen and through Control, for listeners and Dial: on
// Windows no TCP socket ever gets SO_REUSEADDR, a listener gets
// SO_EXCLUSIVEADDRUSE unless the last word on it was
// WithExclusiveAddr(false), a dialled socket only when asked, and
// WithReusePort(true) and WithReuseAddr(true) are refused.
func TestPlan_WindowsNeverSharesATCPPort(t *testing.T) {
	alphabet := []fuzzOption{optReuseAddrOn, optReuseAddrOff, optReusePortOn, optReusePortOff, optExclusiveOn, optExclusiveOff, optRST}
	seqs := [][]fuzzOption{{}}
	for n := 0; n < 3; n++ {
		for _, s := range seqs {
			if len(s) == n {
				for _, o := range alphabet {
					seqs = append(seqs, append(slices.Clone(s), o))
				}
			}
		}
	}
	require.Len(t, seqs, 1+7+49+343)
	opt := map[fuzzOption]Option{
		optReuseAddrOn: WithReuseAddr(true), optReuseAddrOff: WithReuseAddr(false),
		optReusePortOn: WithReusePort(true), optReusePortOff: WithReusePort(false),
		optExclusiveOn: WithExclusiveAddr(true), optExclusiveOff: WithExclusiveAddr(false), optRST: WithRSTOnClose(),
	}
	for _, seq := range seqs {
		m := modelOf(seq)
		opts := make([]Option, len(seq))
		for i, o := range seq {
			opts[i] = opt[o]
		}
		for _, k := range []kind{kindTCPListen, kindTCPDial} {
			for _, v := range []via{viaListen, viaControl} {
				where := fmt.Sprintf("kind %d via %d %v", k, v, seq)
				got, err := planOf(t, "windows", k, v, opts...)
				switch {
				case m.err != "":
					assert.EqualError(t, err, m.err, where)
					continue
				case m.reuseAddr == on:
					assert.ErrorIs(t, err, errors.ErrUnsupported, where)
					assert.ErrorContains(t, err, "WithReuseAddr(true)", where)
					continue
				case m.reusePort == on:
					assert.ErrorIs(t, err, errors.ErrUnsupported, where)
					assert.ErrorContains(t, err, "WithReusePort", where)
					continue
				case m.rst && k == kindTCPListen && v == viaControl:
					assert.ErrorIs(t, err, errors.ErrUnsupported, "%s: accepted sockets may not inherit SO_LINGER", where)
					continue
				}
				require.NoError(t, err, where)
				assert.NotContains(t, fmt.Sprint(got), "SO_REUSEADDR", where)
				exclusive := m.exclusive == on || k == kindTCPListen && m.exclusive == unset
				assert.Equal(t, exclusive, slices.Contains(got, "SO_EXCLUSIVEADDRUSE=1"), where)
			}
		}
	}
}
