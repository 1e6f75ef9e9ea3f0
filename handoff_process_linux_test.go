package reuse

// Handoff tests that run real processes, from a review of the handoff: the
// harness of handoff_linux_test.go (a supervisor and generations of
// TestHelperServer), a probe started with a handoff's fds and variables as a
// dead parent would leave them, and Upgrade run by the test process itself,
// whose child is this test binary acting in init (see envReviewChild).

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/safelisten/reuse/internal/loadgen"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// TestUpgrade_UnixPathSurvivesANewProcessThatFails: a new process takes
// the unix listener, then fails before Ready and returns from main, its
// deferred ln.Close running. Upgrade reports the failure and the old process
// "goes on serving as if nothing happened", but the child's Close has
// removed the socket's path: no client can connect any more.
func TestUpgrade_UnixPathSurvivesANewProcessThatFails(t *testing.T) {
	ctl := t.TempDir()
	path := filepath.Join(t.TempDir(), "app.sock")
	f, first := startFamily(t, serverConfig{Network: "unix", Addr: path, Ctl: ctl, UpgradeTimeout: 5 * time.Second})
	require.NoError(t, os.WriteFile(filepath.Join(ctl, "next"), []byte("close-exit"), 0o600))
	require.NoError(t, syscall.Kill(first.Pid, syscall.SIGHUP))
	up := f.next(eventOf("upgrade", first.Pid))
	require.Contains(t, up.Err, "exited before Ready", "the Upgrade failed")

	_, err := os.Stat(path)
	assert.NoError(t, err, "the old process serves on: its path is still there")
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err == nil {
		c.Close()
	}
	assert.NoError(t, err, "a client can still connect to the old process")
	f.stop(first)
}

// TestUpgrade_FailsWhenSystemdCannotBeTold: under systemd (NOTIFY_SOCKET),
// the old main process tells systemd the new one's MAINPID before it lets
// the new one's Ready return. When that fails, the Upgrade fails and kills
// the new process, whose Ready never returns nil: both agree, and the old
// process serves on.
func TestUpgrade_FailsWhenSystemdCannotBeTold(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	ns, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	require.NoError(t, err)
	t.Setenv("NOTIFY_SOCKET", path)
	f, first := startFamily(t, serverConfig{Network: "tcp4", Addr: "127.0.0.1:0"})
	require.Empty(t, first.Err)
	// systemd's notify socket goes away (a daemon-reexec, a sandbox that
	// hides /run): the next notification fails.
	ns.Close()
	require.NoError(t, os.Remove(path))

	require.NoError(t, syscall.Kill(first.Pid, syscall.SIGHUP))
	up := f.next(eventOf("upgrade", first.Pid))
	assert.Contains(t, up.Err, "notify systemd at NOTIFY_SOCKET="+path)
	assert.Contains(t, up.Err, "was killed")
	c, err := net.Dial("tcp4", first.Addr)
	require.NoError(t, err, "the old process serves on")
	c.Close()
	f.stop(first)
	<-f.done // the supervisor has exited: every event of the family is in
	for len(f.events) > 0 {
		f.pending = append(f.pending, <-f.events)
	}
	for _, e := range f.pending {
		assert.False(t, e.Event == "ready" && e.Pid != first.Pid, "the new process's Ready did not return: %+v", e)
	}
}

// probeReport is what TestHelperProbe saw.
type probeReport struct {
	Open       []int  `json:"open"`       // fds 3..9 open in the probe after init
	NoCloexec  []int  `json:"nocloexec"`  // of those, the ones a child of the probe inherits
	Grandchild []int  `json:"grandchild"` // fds 3..9 that /bin/sh started by the probe has
	Env        string `json:"env"`        // REUSE_HANDOFF and LISTEN_* in the probe's child
	ListenErr  string `json:"listen_err"` // its Listen on the address it was given
	SameSocket bool   `json:"same"`       // that Listen returned the socket passed as fd 5
	ReadyErr   string `json:"ready_err"`
}

const envProbe = "REUSE_TEST_PROBE" // the address the probe Listens on

// TestHelperProbe is not a test: started with fds and variables of a
// handoff or of systemd, it reports what it sees (probeReport) on stdout.
func TestHelperProbe(t *testing.T) {
	addr := os.Getenv(envProbe)
	if addr == "" {
		t.Skip("child process only")
	}
	var r probeReport
	var fd5 uint64
	for fd := 3; fd <= 9; fd++ {
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil {
			continue
		}
		r.Open = append(r.Open, fd)
		if fl&unix.FD_CLOEXEC == 0 {
			r.NoCloexec = append(r.NoCloexec, fd)
		}
		if fd == 5 {
			var st unix.Stat_t
			if unix.Fstat(fd, &st) == nil {
				fd5 = st.Ino
			}
		}
	}
	out, err := exec.Command("/bin/sh", "-c", `for f in 3 4 5 6 7 8 9; do [ -e /proc/$$/fd/$f ] && echo $f; done; env`).Output()
	if err != nil {
		r.Env = "sh: " + err.Error()
	}
	for _, l := range strings.Split(string(out), "\n") {
		if n, err := strconv.Atoi(l); err == nil {
			r.Grandchild = append(r.Grandchild, n)
		} else if strings.HasPrefix(l, "LISTEN_") || strings.HasPrefix(l, envHandoff) {
			r.Env += l + " "
		}
	}
	if addr != "-" {
		ln, err := Listen("tcp4", addr)
		if err != nil {
			r.ListenErr = err.Error()
		} else {
			r.SameSocket = fd5 != 0 && inodeOf(ln.(syscall.Conn)) == fd5
			defer ln.Close()
		}
	}
	r.ReadyErr = errString(Ready())
	b, _ := json.Marshal(r)
	fmt.Printf("PROBE %s\n", b)
}

// probe runs TestHelperProbe with extra files from fd 3 and env added.
func probe(t *testing.T, addr string, extra []*os.File, env ...string) probeReport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := helperCmd(ctx, os.Args[0], "TestHelperProbe", append(env, envProbe+"="+addr)...)
	cmd.ExtraFiles = extra
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	require.NoError(t, err)
	for _, l := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(l, "PROBE "); ok {
			var r probeReport
			require.NoError(t, json.Unmarshal([]byte(rest), &r))
			return r
		}
	}
	require.FailNow(t, "no report from the probe", "%s", out)
	return probeReport{}
}

// dupFile returns a new *os.File on a dup of c's socket.
func dupFile(t *testing.T, c syscall.Conn) *os.File {
	t.Helper()
	rc, err := c.SyscallConn()
	require.NoError(t, err)
	var fd int
	var derr error
	require.NoError(t, rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }))
	require.NoError(t, derr)
	f := os.NewFile(uintptr(fd), "dup")
	t.Cleanup(func() { f.Close() })
	return f
}

// TestInherit_HandoffNotForThisParent: a process is started as Upgrade
// starts one (the pipes at fds 3 and 4, a listening socket at 5,
// REUSE_HANDOFF) but REUSE_HANDOFF does not name its parent. That is what a
// new process sees when the old one dies (SIGKILL, OOM) between starting it
// and its init, as it is reparented; also a garbled or newer-format
// REUSE_HANDOFF. No fd of the handoff reaches the process's children, and
// when the value can be read, its Listen takes the socket, the only copy
// left.
func TestInherit_HandoffNotForThisParent(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	toR, toW, err := os.Pipe()
	require.NoError(t, err)
	defer toR.Close()
	defer toW.Close()
	fromR, fromW, err := os.Pipe()
	require.NoError(t, err)
	defer fromR.Close()
	defer fromW.Close()
	extra := []*os.File{toW, fromR, dupFile(t, ln.(syscall.Conn))}
	for name, v := range map[string]string{
		"the parent died, reparented": "1:1:-",
		"garbled flags":               "1:" + strconv.Itoa(os.Getpid()) + ":x",
		"a newer format":              "2:" + strconv.Itoa(os.Getpid()) + ":-",
	} {
		t.Run(name, func(t *testing.T) {
			r := probe(t, ln.Addr().String(), extra, envHandoff+"="+v)
			t.Logf("%+v", r)
			assert.Empty(t, r.NoCloexec, "no fd of the handoff is left to the process's children")
			assert.Empty(t, r.Grandchild, "a child of the process gets no fd of the handoff")
			assert.Empty(t, r.Env)
			if strings.HasPrefix(name, "the parent died") {
				assert.True(t, r.SameSocket, "Listen takes the handed-over socket: %s", r.ListenErr)
				assert.Empty(t, r.ReadyErr, "nobody is waiting for Ready")
			}
		})
	}
}

// TestInherit_ListenVariablesRemovedWithoutListenPID: LISTEN_FDS and
// LISTEN_FDNAMES without LISTEN_PID are not for this process, and reach
// none of its children.
func TestInherit_ListenVariablesRemovedWithoutListenPID(t *testing.T) {
	r := probe(t, "-", nil, "LISTEN_FDS=1", "LISTEN_FDNAMES=web")
	assert.Empty(t, r.Env, "no LISTEN_* reaches a child")
}

// reviewChild: in a process started by the Upgrade of a review test (the
// test binary itself, as os.Executable), act as REUSE_TEST_CHILD says and
// exit before any test runs.
const envReviewChild = "REUSE_TEST_CHILD"

func init() {
	mode := os.Getenv(envReviewChild)
	if mode == "" || inheritance.parent == 0 {
		return
	}
	switch mode {
	case "exit":
		os.Exit(3)
	case "hang":
		time.Sleep(time.Minute)
	case "ready":
		if Ready() != nil {
			os.Exit(4)
		}
		os.Exit(0)
	case "exe":
		exe, err := os.Executable()
		if err != nil {
			exe = err.Error()
		}
		os.WriteFile(os.Getenv("REUSE_TEST_OUT"), []byte(exe), 0o600)
		Ready()
		os.Exit(0)
	case "cwd":
		var st unix.Stat_t
		unix.Stat(".", &st)
		wd, _ := os.Getwd()
		os.WriteFile(os.Getenv("REUSE_TEST_OUT"), []byte(fmt.Sprintf("%d %s", st.Ino, wd)), 0o600)
		Ready()
		os.Exit(0)
	}
	os.Exit(5)
}

// forgetUpgrade lets this process Upgrade again after a test's Upgrade in
// the test process itself succeeded: a real server exits after one.
func forgetUpgrade(t *testing.T) {
	t.Cleanup(func() {
		registry.mu.Lock()
		registry.upgraded = 0
		registry.mu.Unlock()
	})
}

// children returns the pids of this process's children.
func children(t *testing.T) map[int]bool {
	t.Helper()
	out := map[int]bool{}
	tasks, err := os.ReadDir("/proc/self/task")
	require.NoError(t, err)
	for _, task := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + task.Name() + "/children")
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			n, _ := strconv.Atoi(f)
			out[n] = true
		}
	}
	return out
}

// reapNew waits for the children that are not in before, for a successful
// Upgrade's child, which the Upgrade leaves to this process to reap.
func reapNew(t *testing.T, before map[int]bool) {
	t.Helper()
	for pid := range children(t) {
		if before[pid] {
			continue
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			var ws unix.WaitStatus
			if got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); got == pid || err != nil && err != unix.EINTR {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("child %d did not exit within 10 s: killed", pid)
				unix.Kill(pid, unix.SIGKILL)
				unix.Wait4(pid, &ws, 0, nil)
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// TestUpgrade_InProcessLeavesNothing runs Upgrade in the test process
// (the child is this binary, told what to do by REUSE_TEST_CHILD): after a
// child that exits, one that hangs, and one that is Ready, this process has
// the fds and goroutines it had, and no child of the failed Upgrades is left.
func TestUpgrade_InProcessLeavesNothing(t *testing.T) {
	forgetUpgrade(t)
	t.Setenv("GORACE", "atexit_sleep_ms=0")
	ln, err := Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	run := func(mode string, timeout time.Duration) error {
		t.Setenv(envReviewChild, mode)
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return Upgrade(ctx)
	}
	run("exit", 10*time.Second) // the netpoller's and the pidfd's lazily made fds
	for _, c := range []struct {
		mode    string
		timeout time.Duration
		err     string
	}{
		{"exit", 10 * time.Second, "exited before Ready: exit status 3"},
		{"hang", 2 * time.Second, "did not call Ready in time and was killed"},
		{"ready", 10 * time.Second, ""},
	} {
		t.Run(c.mode, func(t *testing.T) {
			fdsBefore, kids, ignore := fds(t), children(t), goleak.IgnoreCurrent()
			err := run(c.mode, c.timeout)
			if c.err == "" {
				require.NoError(t, err)
				reapNew(t, kids)
			} else {
				require.ErrorContains(t, err, c.err)
				assert.Equal(t, kids, children(t), "no child left, zombie or running")
			}
			assert.Equal(t, fdsBefore, fds(t), "open fds")
			goleak.VerifyNone(t, ignore)
		})
	}
}

// TestUpgrade_RacesListenAndClose: Listen and Close in other goroutines
// while two Upgrades run at once, under -race: one succeeds, the other fails
// at once (another is running) or after it (this process upgraded already).
func TestUpgrade_RacesListenAndClose(t *testing.T) {
	forgetUpgrade(t)
	t.Setenv("GORACE", "atexit_sleep_ms=0")
	t.Setenv(envReviewChild, "ready")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var cycles atomic.Int64 // Listen and Close, in the other goroutines
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ln, err := Listen("tcp4", "127.0.0.1:0")
				if err != nil {
					t.Error(err)
					return
				}
				ln.Close()
				cycles.Add(1)
			}
		}()
	}
	for deadline := time.Now().Add(10 * time.Second); cycles.Load() < 10; {
		require.True(t, time.Now().Before(deadline), "the Listen and Close goroutines run")
		runtime.Gosched()
	}
	before := cycles.Load()
	kids := children(t)
	var errs [2]error
	var uw sync.WaitGroup
	for i := range errs {
		uw.Add(1)
		go func() {
			defer uw.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			errs[i] = Upgrade(ctx)
		}()
	}
	uw.Wait()
	during := cycles.Load() - before
	close(stop)
	wg.Wait()
	reapNew(t, kids)
	assert.Positive(t, during, "Listen and Close cycles during the Upgrades")
	t.Logf("%d Listen and Close cycles during the Upgrades", during)
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
		} else {
			assert.Regexp(t, "another Upgrade is running|upgraded to pid [0-9]+ already", err.Error())
		}
	}
	assert.Equal(t, 1, ok, "Upgrades that succeeded: %v", errs)
}

// TestUpgrade_KeepsTheWorkingDirectory: another user (uid 65534) who can
// rename a directory above this process's working directory moves it away
// and puts one of theirs at its path before an Upgrade. The new process
// (root here) still starts in this process's directory: it inherits the
// directory itself, not a path to it.
func TestUpgrade_KeepsTheWorkingDirectory(t *testing.T) {
	forgetUpgrade(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root to act as uid 65534")
	}
	t.Setenv("GORACE", "atexit_sleep_ms=0")
	base, err := os.MkdirTemp("", "reuse-review-cwd-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(base) })
	require.NoError(t, os.Chmod(base, 0o755))
	shared := filepath.Join(base, "shared") // another user's directory
	require.NoError(t, os.Mkdir(shared, 0o755))
	require.NoError(t, os.Chown(shared, 65534, 65534))
	app := filepath.Join(shared, "app") // root's, inside it
	require.NoError(t, os.Mkdir(app, 0o755))
	var st unix.Stat_t
	require.NoError(t, unix.Stat(app, &st))
	t.Chdir(app)

	as65534 := func(name string, args ...string) {
		cmd := exec.Command(name, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		cmd.Dir = "/"
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s %v as uid 65534: %s", name, args, out)
	}
	as65534("/bin/mv", app, app+".old")
	as65534("/bin/mkdir", app)

	out := filepath.Join(base, "report")
	t.Setenv("REUSE_TEST_OUT", out)
	t.Setenv(envReviewChild, "cwd")
	kids := children(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, Upgrade(ctx))
	reapNew(t, kids)
	b, err := os.ReadFile(out)
	require.NoError(t, err)
	ino, wd, _ := strings.Cut(string(b), " ")
	t.Logf("the new process started in %s", wd)
	assert.Equal(t, strconv.FormatUint(st.Ino, 10), ino, "the new process's working directory is this process's")
}

const envUpgrader = "REUSE_TEST_UPGRADER"

// TestHelperUpgrader is not a test: it waits for a line on stdin,
// Upgrades (its child acting as REUSE_TEST_CHILD says), reaps that child,
// and prints "UPGRADE <error>".
func TestHelperUpgrader(t *testing.T) {
	if os.Getenv(envUpgrader) == "" {
		t.Skip("child process only")
	}
	fmt.Println("WAITING")
	bufio.NewReader(os.Stdin).ReadString('\n')
	kids := children(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := Upgrade(ctx)
	reapNew(t, kids)
	fmt.Printf("UPGRADE %v\n", err)
}

// TestUpgrade_RefusesAnExecutableAnotherUserCanReplace: the server (root
// here) runs from a directory that another user (uid 65534) can write. That
// user renames a script of theirs over the binary; the next Upgrade must not
// run it as root: it refuses, as Listen refuses to act on a unix socket path
// that another user can change.
func TestUpgrade_RefusesAnExecutableAnotherUserCanReplace(t *testing.T) {
	bin := nobodyBinary(t) // skips unless root
	dir := filepath.Dir(bin)
	require.NoError(t, os.Chown(dir, 65534, 65534)) // uid 65534's directory
	out := filepath.Join(t.TempDir(), "report")

	res := upgradeAt(t, bin, out, func() {
		// uid 65534 replaces the binary.
		attack := exec.Command("/bin/sh", "-c", `printf '#!/bin/sh\nid -u > "$REUSE_TEST_OUT"\n' > "$1/x" && chmod 755 "$1/x" && mv -f "$1/x" "$2"`, "sh", dir, bin)
		attack.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		attack.Dir = "/"
		b, err := attack.CombinedOutput()
		require.NoError(t, err, "%s", b)
	})
	t.Logf("Upgrade: %s", res)
	assert.Contains(t, res, "could be replaced by another user, and Upgrade would run what they put there")
	_, err := os.Stat(out)
	assert.ErrorIs(t, err, os.ErrNotExist, "uid 65534's script did not run")
}

// upgradeAt starts TestHelperUpgrader from bin, its child writing
// os.Executable to out; runs between once it waits; lets it Upgrade, and
// returns what its Upgrade returned.
func upgradeAt(t *testing.T, bin, out string, between func()) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	cmd := helperCmd(ctx, bin, "TestHelperUpgrader", envUpgrader+"=1", envReviewChild+"=exe", "REUSE_TEST_OUT="+out)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
		cancel()
	})
	sc := bufio.NewScanner(stdout)
	line := func(prefix string) string {
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), prefix); ok {
				return rest
			}
		}
		require.FailNow(t, "no "+prefix+" from the server")
		return ""
	}
	line("WAITING")
	between()
	fmt.Fprintln(stdin, "upgrade")
	return line("UPGRADE ")
}

// TestUpgrade_InARemovedDirectory: a deploy that keeps the last N releases
// removes the directory an old server runs in. Upgrade still works: the new
// process inherits the directory, with no path to look up.
func TestUpgrade_InARemovedDirectory(t *testing.T) {
	forgetUpgrade(t)
	t.Setenv("GORACE", "atexit_sleep_ms=0")
	t.Setenv(envReviewChild, "ready")
	dir := filepath.Join(t.TempDir(), "release-1")
	require.NoError(t, os.Mkdir(dir, 0o755))
	t.Chdir(dir)
	require.NoError(t, os.Remove(dir))
	kids := children(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := Upgrade(ctx)
	reapNew(t, kids)
	assert.NoError(t, err)
}

const envAccept = "REUSE_TEST_ACCEPT" // set for TestHelperAccept

// TestHelperAccept is not a test: systemd-socket-activate --accept
// starts it with a connected socket as fd 3, as an inetd-style service is.
// It reports what its own code can still find of that socket, after Ready,
// and writes "hello" to it.
func TestHelperAccept(t *testing.T) {
	if os.Getenv(envAccept) == "" {
		t.Skip("child process only")
	}
	seen := "LISTEN_FDS=" + os.Getenv("LISTEN_FDS")
	rerr := Ready()
	_, werr := unix.Write(3, []byte("hello"))
	fmt.Printf("ACCEPT %s ready=%v write=%v\n", seen, rerr, werr)
}

// TestInherit_LeavesAcceptedConnectionsToTheProgram: a service
// socket-activated with Accept=yes (systemd-socket-activate --accept) gets
// its connection as fd 3, which no Listen can take. The package leaves it,
// and LISTEN_FDS, to the program's own code: Ready does not close it.
func TestInherit_LeavesAcceptedConnectionsToTheProgram(t *testing.T) {
	bin, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate is not installed (Debian: apt-get install systemd)")
	}
	addr := hostPort("127.0.0.1", freePort(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--accept", "-l", addr, "-E", envAccept+"=1", "-E", "GORACE=atexit_sleep_ms=0",
		os.Args[0], "-test.run=^TestHelperAccept$")
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	var c net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err = net.Dial("tcp4", addr); err == nil {
			break
		}
		require.True(t, time.Now().Before(deadline), "systemd-socket-activate never listened")
		time.Sleep(5 * time.Millisecond)
	}
	defer c.Close()
	sc := bufio.NewScanner(stdout)
	report := ""
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "ACCEPT "); ok {
			report = rest
			break
		}
	}
	t.Logf("the service saw: %s", report)
	require.NotEmpty(t, report)
	assert.Contains(t, report, "LISTEN_FDS=1 ", "the variables are left for the program")
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	b := make([]byte, 5)
	_, err = io.ReadFull(c, b)
	assert.NoError(t, err, "the service answers on its connection")
	assert.Equal(t, "hello", string(b))
	// The service exits, closing its connection; systemd-socket-activate
	// reaps it before it is stopped itself, so nothing is left to init.
	_, err = io.Copy(io.Discard, c)
	require.NoError(t, err, "the service closed its connection")
	kids := fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid)
	for deadline := time.Now().Add(10 * time.Second); ; {
		b, err := os.ReadFile(kids)
		require.NoError(t, err)
		if len(strings.Fields(string(b))) == 0 {
			break
		}
		require.True(t, time.Now().Before(deadline), "the service is still a child of systemd-socket-activate: %s", b)
		time.Sleep(5 * time.Millisecond)
	}
}

// TestREADME_QuickStartUpgradesOnSIGHUP: the quick start (Example_upgrade,
// which TestREADME_QuickStart holds equal to README.md's) upgrades on SIGHUP
// without failing a request, under load from clients that never retry, and
// stops on SIGTERM. It runs in a network namespace of its own, where its
// fixed port 8080 is free and only that namespace's loopback reaches it.
func TestREADME_QuickStartUpgradesOnSIGHUP(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, for a network namespace of its own: the quick start listens on the fixed port 8080")
	}
	f := supervise(t, true, envHelper+"=TestHelperQuickStart")
	first := f.next(eventOf("started", 0)).Ppid
	dial := dialIn(t, f.cmd.Process.Pid)
	const addr = "127.0.0.1:8080"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var loads []*loadgen.Load
	for _, mode := range []loadgen.Mode{loadgen.KeepAlive, loadgen.PerRequest} {
		l, err := loadgen.Start(context.Background(), loadgen.Config{Network: "tcp4", Addr: addr, Dial: dial, Mode: mode, Clients: 4})
		require.NoError(t, err)
		t.Cleanup(func() { l.Stop() })
		loads = append(loads, l)
	}
	// The first requests may come before its Listen: wait until it serves,
	// then count from there.
	for _, l := range loads {
		require.NoError(t, l.WaitOK(ctx, 1), "the quick start serves on %s", addr)
	}
	var before []loadgen.Result
	for _, l := range loads {
		before = append(before, l.Snapshot())
	}

	require.NoError(t, syscall.Kill(first, syscall.SIGHUP))
	reaped := f.next(func(e event) bool { return e.Event == "reaped" && e.Ppid == first })
	assert.Equal(t, "exit 0", reaped.Status, "the old process drained and returned")
	second := childOf(t, f.cmd.Process.Pid)
	for _, l := range loads {
		// Served by the new process alone.
		require.NoError(t, l.WaitOK(ctx, l.Snapshot().OK+100))
	}
	for i, l := range loads {
		r := l.Stop()
		t.Logf("%v: %v", loadgen.Mode(i), r)
		assert.Zero(t, r.Failures()-before[i].Failures(), "requests failed from the first response on: %v", r)
	}

	require.NoError(t, syscall.Kill(second, syscall.SIGTERM))
	assert.Equal(t, "exit 0", f.end(second).Status, "the new process stopped on SIGTERM")
}

// childOf returns the one child of pid, after a deadline fails the test.
func childOf(t *testing.T, pid int) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var kids []int
		ents, err := os.ReadDir("/proc")
		require.NoError(t, err)
		for _, e := range ents {
			p, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
			if err != nil {
				continue
			}
			// pid (comm) state ppid ...: comm may hold spaces and parentheses.
			fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
			if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
				kids = append(kids, p)
			}
		}
		if len(kids) == 1 {
			return kids[0]
		}
		require.True(t, time.Now().Before(deadline), "children of %d: %v, want one", pid, kids)
		time.Sleep(10 * time.Millisecond)
	}
}

// dialIn returns a dial function whose sockets are made in the network
// namespace of process pid: a goroutine locked to a thread that joined it
// makes them. The thread is never unlocked, so it ends with the goroutine at
// cleanup and no other goroutine runs on it.
func dialIn(t *testing.T, pid int) func(ctx context.Context, network, addr string) (net.Conn, error) {
	t.Helper()
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
	require.NoError(t, err)
	type dialed struct {
		c   net.Conn
		err error
	}
	type call struct {
		ctx           context.Context
		network, addr string
		res           chan dialed
	}
	calls, joined, done := make(chan call), make(chan error, 1), make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET)
		ns.Close()
		joined <- err
		if err != nil {
			return
		}
		for c := range calls {
			var d net.Dialer
			conn, err := d.DialContext(c.ctx, c.network, c.addr)
			c.res <- dialed{conn, err}
		}
	}()
	require.NoError(t, <-joined, "setns")
	t.Cleanup(func() {
		close(calls)
		<-done
	})
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c := call{ctx, network, addr, make(chan dialed, 1)}
		select {
		case calls <- c:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		r := <-c.res
		return r.c, r.err
	}
}
