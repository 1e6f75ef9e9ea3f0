package reuse

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/safelisten/reuse/drain"
	"github.com/safelisten/reuse/internal/loadgen"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// The handoff tests run real generations of a server: the test binary
// started as TestHelperServer, under TestHelperSupervisor, which makes
// itself a child subreaper (as systemd is for a service) so that every
// generation ends as its child and is reaped by it. Each process reports
// what it sees as one JSON line on the shared stdout.

const (
	envServer    = "REUSE_TEST_SERVER"    // a serverConfig, as JSON
	envSupervise = "REUSE_TEST_SUPERVISE" // set for the supervisor only
	envHelper    = "REUSE_TEST_HELPER"    // the test the supervisor runs, if not TestHelperServer
	envNetns     = "REUSE_TEST_NETNS"     // set: the supervisor is in a network namespace of its own
)

// serverConfig is what every generation of TestHelperServer does.
type serverConfig struct {
	Network, Addr string // its Listen
	UDP           string // if set, also ListenPacket("udp4", UDP)
	// Ctl is a directory; a file "next" in it tells the next generation to
	// fail before Ready: "exit" or "hang". The generation removes it.
	Ctl string
	// UpgradeTimeout bounds each Upgrade (default 30 s).
	UpgradeTimeout time.Duration
	// Linger is how long a generation goes on serving after its Upgrade
	// succeeded, before it stops.
	Linger time.Duration
}

// event is one line a helper process prints.
type event struct {
	Event  string `json:"event"` // started, ready, upgrade, exit, reaped, error
	Pid    int    `json:"pid"`
	Ppid   int    `json:"ppid,omitempty"`    // ready: the pid whose Upgrade started it; started, reaped: the pid started, reaped
	Ino    uint64 `json:"ino,omitempty"`     // the listener's socket inode
	UDPIno uint64 `json:"udp_ino,omitempty"` // the packet conn's
	FDs    int    `json:"fds,omitempty"`     // open fds after Ready
	Proto  int    `json:"proto,omitempty"`   // the listener's SO_PROTOCOL
	Addr   string `json:"addr,omitempty"`
	UDP    string `json:"udp,omitempty"`
	Got    int    `json:"got,omitempty"` // datagrams received, on exit
	Err    string `json:"err,omitempty"`
	Status string `json:"status,omitempty"` // reaped: the wait status

	Inherited []uint64 `json:"inherited,omitempty"` // activated: inodes of fds 3...
	Listened  []uint64 `json:"listened,omitempty"`  // activated: inodes Listen returned
	Env       string   `json:"env,omitempty"`       // activated: handoff variables seen
}

var emitMu sync.Mutex

func emit(e event) {
	emitMu.Lock()
	defer emitMu.Unlock()
	e.Pid = os.Getpid()
	b, _ := json.Marshal(e)
	os.Stdout.Write(append(b, '\n'))
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// inodeOf returns the socket inode of c's file descriptor.
func inodeOf(c syscall.Conn) uint64 {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	var st unix.Stat_t
	rc.Control(func(fd uintptr) { unix.Fstat(int(fd), &st) })
	return st.Ino
}

// openFDs counts this process's open fds but for connections, which come
// and go with the load: what a generation holds of its own. Under load a
// connection can close between the listing and the look, and its number go
// to a new one: an fd that is gone counts as a connection, and the listing's
// own fd is known by number, not guessed.
func openFDs() int {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return -1
	}
	defer d.Close()
	rc, err := d.SyscallConn()
	if err != nil {
		return -1
	}
	self := -1
	rc.Control(func(fd uintptr) { self = int(fd) })
	names, err := d.Readdirnames(-1)
	if err != nil {
		return -1
	}
	n := 0
	for _, name := range names {
		fd, err := strconv.Atoi(name)
		if err != nil || fd == self {
			continue
		}
		typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		if errors.Is(err, unix.EBADF) {
			continue // closed since the listing
		}
		if err == nil && typ == unix.SOCK_STREAM {
			listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
			if errors.Is(err, unix.EBADF) || err == nil && listening == 0 {
				continue // a connection, or one closed since
			}
		}
		n++
	}
	return n
}

// TestHelperServer is not a test: it is one generation of a server (see
// serverConfig). SIGHUP makes it Upgrade and, once that succeeds, stop;
// SIGTERM makes it stop.
func TestHelperServer(t *testing.T) {
	raw := os.Getenv(envServer)
	if raw == "" || os.Getenv(envSupervise) != "" {
		t.Skip("child process only")
	}
	var cfg serverConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		emit(event{Event: "error", Err: err.Error()})
		os.Exit(2)
	}
	ln, err := Listen(cfg.Network, cfg.Addr)
	if err != nil {
		emit(event{Event: "error", Err: err.Error()})
		os.Exit(2)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })}
	d := drain.New(srv)
	go srv.Serve(d.Listener(ln))
	var pc net.PacketConn
	got := make(chan int, 1)
	if cfg.UDP != "" {
		if pc, err = ListenPacket("udp4", cfg.UDP); err != nil {
			emit(event{Event: "error", Err: err.Error()})
			os.Exit(2)
		}
		go func() {
			n := 0
			buf := make([]byte, 64)
			for {
				m, _, err := pc.ReadFrom(buf)
				if err != nil {
					got <- n
					return
				}
				if string(buf[:m]) == "end" {
					emit(event{Event: "udpend", Got: n})
					continue
				}
				n++
			}
		}()
	}
	if b, err := os.ReadFile(filepath.Join(cfg.Ctl, "next")); err == nil {
		os.Remove(filepath.Join(cfg.Ctl, "next"))
		switch strings.TrimSpace(string(b)) {
		case "exit":
			os.Exit(3)
		case "hang":
			select {}
		case "close-exit":
			// A new process that fails after its Listen, and returns from
			// main, its deferred ln.Close running.
			ln.Close()
			os.Exit(3)
		}
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM)
	rerr := Ready()
	e := event{Event: "ready", Ppid: inheritance.parent, Ino: inodeOf(ln.(syscall.Conn)), FDs: openFDs(), Addr: ln.Addr().String(), Err: errString(rerr)}
	if rc, err := ln.(syscall.Conn).SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { e.Proto, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL) })
	}
	if pc != nil {
		e.UDPIno, e.UDP = inodeOf(pc.(syscall.Conn)), pc.LocalAddr().String()
	}
	emit(e)

	// stop ends this generation: after an Upgrade with a drain, else with
	// Shutdown, as a plain server stops on SIGTERM.
	stop := func(upgraded bool) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		ev := event{Event: "exit"}
		var err error
		if upgraded {
			err = d.Drain(ctx, time.Second)
		} else {
			err = srv.Shutdown(ctx)
		}
		ev.Err = errString(err)
		if pc != nil {
			pc.Close()
			ev.Got = <-got
		}
		emit(ev)
		os.Exit(0)
	}
	for sig := range sigs {
		if sig == syscall.SIGTERM {
			stop(false)
		}
		timeout := cfg.UpgradeTimeout
		if timeout == 0 {
			timeout = 30 * time.Second
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		err := Upgrade(ctx)
		cancel()
		emit(event{Event: "upgrade", FDs: openFDs(), Err: errString(err)})
		if err == nil {
			time.Sleep(cfg.Linger) // serving on, as long as the test asks
			stop(true)
		}
	}
}

// TestHelperSupervisor is not a test: it starts the first generation of
// TestHelperServer, reaps every process that ends as its child, reports
// each, and exits when none is left and its stdin is closed.
func TestHelperSupervisor(t *testing.T) {
	if os.Getenv(envSupervise) == "" {
		t.Skip("child process only")
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		emit(event{Event: "error", Err: "PR_SET_CHILD_SUBREAPER: " + err.Error()})
		os.Exit(2)
	}
	if os.Getenv(envNetns) != "" {
		if err := loopbackUp(); err != nil {
			emit(event{Event: "error", Err: "lo up: " + err.Error()})
			os.Exit(2)
		}
	}
	helper := cmp.Or(os.Getenv(envHelper), "TestHelperServer")
	started, stdinClosed := make(chan struct{}, 1), make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(stdinClosed)
	}()
	start := func() {
		cmd := exec.Command(os.Args[0], "-test.run=^"+helper+"$")
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, envSupervise+"=") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Start(); err != nil {
			emit(event{Event: "error", Err: err.Error()})
			os.Exit(2)
		}
		emit(event{Event: "started", Ppid: cmd.Process.Pid})
		select {
		case started <- struct{}{}:
		default:
		}
	}
	// SIGUSR1 starts a fresh generation: the second half of a plain
	// stop-and-start restart.
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		for range usr1 {
			start()
		}
	}()
	start()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ECHILD):
			// None left: done once the test closed stdin, unless it asks for
			// a fresh generation.
			select {
			case <-started:
				continue
			case <-stdinClosed:
				os.Exit(0)
			}
		case err != nil:
			emit(event{Event: "error", Err: err.Error()})
			os.Exit(2)
		}
		emit(event{Event: "reaped", Ppid: pid, Status: waitStatus(ws)})
	}
}

// loopbackUp sets lo up, as a new network namespace has it down; the kernel
// then gives it 127.0.0.1 and ::1.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

func waitStatus(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return "exit " + strconv.Itoa(ws.ExitStatus())
}

// family is a supervisor and the generations of servers under it, as the
// test sees them.
type serverFamily struct {
	t       *testing.T
	cmd     *exec.Cmd
	stdin   io.Closer // closing it tells the supervisor to end with the last generation
	events  chan event
	pending []event
	done    chan struct{}
}

// startFamily starts the supervisor with cfg and waits for the first
// generation to be ready.
func startFamily(t *testing.T, cfg serverConfig) (*serverFamily, event) {
	t.Helper()
	if cfg.Ctl == "" {
		cfg.Ctl = t.TempDir()
	}
	raw, err := json.Marshal(cfg)
	require.NoError(t, err)
	f := supervise(t, false, envServer+"="+string(raw))
	first := f.next(func(e event) bool { return e.Event == "ready" })
	return f, first
}

// supervise starts TestHelperSupervisor with env added, in a network
// namespace of its own if netns is set.
func supervise(t *testing.T, netns bool, env ...string) *serverFamily {
	t.Helper()
	env = append(env, envSupervise+"=1")
	if netns {
		env = append(env, envNetns+"=1")
	}
	cmd := helperCmd(context.Background(), os.Args[0], "TestHelperSupervisor", env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if netns {
		cmd.SysProcAttr.Cloneflags = unix.CLONE_NEWNET
	}
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	f := &serverFamily{t: t, cmd: cmd, stdin: stdin, events: make(chan event, 1024), done: make(chan struct{})}
	go func() {
		defer close(f.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var e event
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				continue // a test binary's own output
			}
			if os.Getenv("REUSE_TEST_DEBUG") != "" {
				fmt.Fprintf(os.Stderr, "event: %s\n", sc.Bytes())
			}
			f.events <- e
		}
	}()
	t.Cleanup(func() {
		// Whatever a failed test left running: the whole process group.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		<-f.done
	})
	return f
}

// next returns the first event, pending or new, for which ok holds, or fails
// the test after a deadline. An "error" event fails it at once.
func (f *serverFamily) next(ok func(event) bool) event {
	f.t.Helper()
	for i, e := range f.pending {
		if ok(e) {
			f.pending = slices.Delete(f.pending, i, i+1)
			return e
		}
	}
	deadline := time.After(60 * time.Second)
	for {
		select {
		case e := <-f.events:
			require.NotEqual(f.t, "error", e.Event, "helper pid %d: %s", e.Pid, e.Err)
			if ok(e) {
				return e
			}
			f.pending = append(f.pending, e)
		case <-deadline:
			require.FailNow(f.t, "no such event within 60 s", "pending: %+v", f.pending)
		}
	}
}

func eventOf(kind string, pid int) func(event) bool {
	return func(e event) bool { return e.Event == kind && (pid == 0 || e.Pid == pid) }
}

// upgrade sends SIGHUP to cur and returns the generation that replaced it,
// once the supervisor has reaped cur.
func (f *serverFamily) upgrade(cur event) event {
	next, _ := f.upgradeExit(cur)
	return next
}

// upgradeExit is upgrade that also returns cur's exit event.
func (f *serverFamily) upgradeExit(cur event) (next, exit event) {
	f.t.Helper()
	require.NoError(f.t, syscall.Kill(cur.Pid, syscall.SIGHUP))
	up := f.next(eventOf("upgrade", cur.Pid))
	require.Empty(f.t, up.Err, "Upgrade in pid %d", cur.Pid)
	next = f.next(func(e event) bool { return e.Event == "ready" && e.Ppid == cur.Pid })
	require.Empty(f.t, next.Err, "Ready in pid %d", next.Pid)
	exit = f.next(eventOf("exit", cur.Pid))
	reaped := f.next(func(e event) bool { return e.Event == "reaped" && e.Ppid == cur.Pid })
	assert.Equal(f.t, "exit 0", reaped.Status)
	return next, exit
}

// stop ends the current generation and waits for the supervisor, which exits
// once it has reaped every process of the family.
func (f *serverFamily) stop(cur event) event {
	f.t.Helper()
	require.NoError(f.t, syscall.Kill(cur.Pid, syscall.SIGTERM))
	exit := f.next(eventOf("exit", cur.Pid))
	f.end(cur.Pid)
	return exit
}

// end waits until the supervisor has reaped pid, the last process of the
// family, and then for the supervisor to exit, and returns the reaped event.
func (f *serverFamily) end(pid int) event {
	f.t.Helper()
	reaped := f.next(func(e event) bool { return e.Event == "reaped" && e.Ppid == pid })
	f.stdin.Close()
	done := make(chan error, 1)
	go func() { done <- f.cmd.Wait() }()
	select {
	case err := <-done:
		require.NoError(f.t, err, "the supervisor ends when it has reaped every generation")
	case <-time.After(30 * time.Second):
		require.FailNow(f.t, "the supervisor did not end: a process of the family is left")
	}
	return reaped
}

func TestUpgrade_SameSocketInEveryGeneration(t *testing.T) {
	f, first := startFamily(t, serverConfig{Network: "tcp4", Addr: "127.0.0.1:0"})
	cur := first
	for range 5 {
		next := f.upgrade(cur)
		assert.Equal(t, first.Ino, next.Ino, "the listening socket is the same")
		assert.Equal(t, first.Addr, next.Addr)
		assert.Equal(t, first.FDs, next.FDs, "open fds after Ready")
		cur = next
	}
	f.stop(cur)
}

// startLoad sends load to addr from clients that never retry, half of them
// keeping their connection, half with one connection per request, and waits
// until it flows.
func startLoad(t *testing.T, network, addr string) (stop func() loadgen.Result) {
	t.Helper()
	source := ""
	if network == "tcp4" {
		source = "127.0.0.2" // no client port on 127.0.0.1, where other tests listen
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var loads []*loadgen.Load
	for _, mode := range []loadgen.Mode{loadgen.KeepAlive, loadgen.PerRequest} {
		l, err := loadgen.Start(context.Background(), loadgen.Config{Network: network, Addr: addr, Source: source, Mode: mode, Clients: 8})
		require.NoError(t, err)
		loads = append(loads, l)
		require.NoError(t, l.WaitOK(ctx, 50), "%v load flows", mode)
	}
	t.Cleanup(func() {
		for _, l := range loads {
			l.Stop()
		}
	})
	return func() loadgen.Result {
		var sum loadgen.Result
		for i, l := range loads {
			r := l.Stop()
			t.Logf("%v: %v", loadgen.Mode(i), r)
			sum.OK += r.OK
			for k, n := range r.Failed {
				if sum.Failed == nil {
					sum.Failed, sum.First = map[loadgen.Kind]int64{}, map[loadgen.Kind]string{}
				}
				sum.Failed[k] += n
				sum.First[k] = r.First[k]
			}
		}
		return sum
	}
}

// TestUpgrade_UnderLoadFailsNoRequest: 100 Upgrades in a row while clients
// that never retry keep sending, on keep-alive connections and on one
// connection per request: no request fails, every generation serves the
// same listening socket, the last has the fds the first had, and every
// process is reaped. tcp4 runs with Go's default (MPTCP where the kernel has
// it), tcp6 as plain TCP.
func TestUpgrade_UnderLoadFailsNoRequest(t *testing.T) {
	for _, c := range []struct {
		network, addr, godebug string
		upgrades               int
	}{
		{"tcp4", "127.0.0.1:0", "", 100},
		{"tcp6", "[::1]:0", "multipathtcp=0", 20},
	} {
		t.Run(c.network, func(t *testing.T) {
			if c.network == "tcp6" && !haveIPv6Loopback() {
				t.Skip("no ::1 on this host")
			}
			t.Setenv("GODEBUG", c.godebug)
			f, first := startFamily(t, serverConfig{Network: c.network, Addr: c.addr})
			t.Logf("listener protocol %d (%d is MPTCP)", first.Proto, unix.IPPROTO_MPTCP)
			stopLoad := startLoad(t, c.network, first.Addr)
			cur := first
			for range c.upgrades {
				cur = f.upgrade(cur)
				require.Equal(t, first.Ino, cur.Ino, "the same listening socket")
			}
			assert.Equal(t, first.FDs, cur.FDs, "fds of the last generation")
			res := stopLoad()
			assert.Zero(t, res.Failures(), "failed requests over %d Upgrades: %v", c.upgrades, res)
			assert.Greater(t, res.OK, int64(10*c.upgrades))
			f.stop(cur)
		})
	}
}

// TestRestart_PlainStopAndStartFailsRequests: the same load across a plain
// restart, the old process stopping (Shutdown) before the new one binds,
// shows failures: the harness above can see them.
func TestRestart_PlainStopAndStartFailsRequests(t *testing.T) {
	addr := hostPort("127.0.0.1", freePort(t))
	f, cur := startFamily(t, serverConfig{Network: "tcp4", Addr: addr})
	stopLoad := startLoad(t, "tcp4", addr)
	for range 5 {
		require.NoError(t, syscall.Kill(cur.Pid, syscall.SIGTERM))
		f.next(eventOf("exit", cur.Pid))
		f.next(func(e event) bool { return e.Event == "reaped" && e.Ppid == cur.Pid })
		require.NoError(t, f.cmd.Process.Signal(syscall.SIGUSR1))
		cur = f.next(eventOf("ready", 0))
	}
	res := stopLoad()
	assert.NotZero(t, res.Failed[loadgen.Refused], "refused connects during the gap: %v", res)
	f.stop(cur)
}

// TestUpgrade_NewProcessFailsBeforeReady: a new process that exits, or
// hangs, before Ready makes Upgrade fail within its context; the old one is
// left serving as before, with no fd and no process left behind.
func TestUpgrade_NewProcessFailsBeforeReady(t *testing.T) {
	ctl := t.TempDir()
	f, first := startFamily(t, serverConfig{Network: "tcp4", Addr: "127.0.0.1:0", Ctl: ctl, UpgradeTimeout: 2 * time.Second})
	get := func() {
		t.Helper()
		resp, err := http.Get("http://" + first.Addr)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode)
	}
	get()
	for _, how := range []struct{ what, err string }{
		{"exit", "exited before Ready: exit status 3"},
		{"hang", "did not call Ready in time and was killed (signal: killed): context deadline exceeded"},
	} {
		require.NoError(t, os.WriteFile(filepath.Join(ctl, "next"), []byte(how.what), 0o600))
		start := time.Now()
		require.NoError(t, syscall.Kill(first.Pid, syscall.SIGHUP))
		up := f.next(eventOf("upgrade", first.Pid))
		assert.Contains(t, up.Err, how.err, how.what)
		assert.Less(t, time.Since(start), 10*time.Second, "within the Upgrade's 2 s context")
		assert.Equal(t, first.FDs, up.FDs, "%s: the old process has the fds it had", how.what)
		get()
		// The failed child was reaped by Upgrade: the supervisor never saw it.
		for _, e := range f.pending {
			assert.NotEqual(t, "reaped", e.Event, "%s: %+v", how.what, e)
		}
	}
	next := f.upgrade(first) // and a good one still works
	assert.Equal(t, first.Ino, next.Ino)
	f.stop(next)
}

// TestUpgrade_NotWhileTheParentLives: a process started by Upgrade cannot
// Upgrade while the process that started it is still there (draining), and
// can once it has exited.
func TestUpgrade_NotWhileTheParentLives(t *testing.T) {
	f, first := startFamily(t, serverConfig{Network: "tcp4", Addr: "127.0.0.1:0", Linger: time.Second})
	require.NoError(t, syscall.Kill(first.Pid, syscall.SIGHUP))
	require.Empty(t, f.next(eventOf("upgrade", first.Pid)).Err)
	second := f.next(func(e event) bool { return e.Event == "ready" && e.Ppid == first.Pid })
	require.NoError(t, syscall.Kill(second.Pid, syscall.SIGHUP))
	up := f.next(eventOf("upgrade", second.Pid))
	assert.Contains(t, up.Err, fmt.Sprintf("this process was started by the Upgrade of pid %d, which has not exited yet", first.Pid))
	f.next(func(e event) bool { return e.Event == "reaped" && e.Ppid == first.Pid })
	f.stop(f.upgrade(second))
}

// TestUpgrade_UnixSocketPathSurvives: a unix listener is handed over; its
// path is never removed while generations replace each other, and the last
// one removes it on Close as net.Listen's listener does.
func TestUpgrade_UnixSocketPathSurvives(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	f, first := startFamily(t, serverConfig{Network: "unix", Addr: path})
	st0, err := os.Stat(path)
	require.NoError(t, err)
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	defer client.CloseIdleConnections()
	cur := first
	for range 3 {
		cur = f.upgrade(cur)
		assert.Equal(t, first.Ino, cur.Ino)
		st, err := os.Stat(path)
		require.NoError(t, err, "the path is still there")
		assert.True(t, os.SameFile(st0, st), "and is the same socket file")
		resp, err := client.Get("http://unix/")
		require.NoError(t, err)
		resp.Body.Close()
	}
	f.stop(cur)
	_, err = os.Stat(path)
	assert.ErrorIs(t, err, os.ErrNotExist, "the last generation removes it, as net.Listen's would")
}

// TestUpgrade_UDPConnIsHandedOver: a packet conn is handed over too, and no
// datagram sent during the Upgrade is lost: the socket, and its queue, are
// the same in both processes.
func TestUpgrade_UDPConnIsHandedOver(t *testing.T) {
	f, first := startFamily(t, serverConfig{Network: "tcp4", Addr: "127.0.0.1:0", UDP: "127.0.0.1:0"})
	require.NotZero(t, first.UDPIno)
	c, err := net.Dial("udp4", first.UDP)
	require.NoError(t, err)
	defer c.Close()
	sent := 0
	stopSending := make(chan struct{})
	sending := make(chan int)
	go func() {
		n := 0
		defer func() { sending <- n }()
		for {
			select {
			case <-stopSending:
				return
			default:
			}
			if _, err := c.Write([]byte(strconv.Itoa(n))); err == nil {
				n++
			}
			time.Sleep(200 * time.Microsecond) // a pace the receivers keep up with
		}
	}()
	cur, got := first, 0
	for range 3 {
		next, exit := f.upgradeExit(cur)
		assert.Equal(t, first.UDPIno, next.UDPIno, "the same UDP socket")
		assert.Equal(t, first.UDP, next.UDP)
		got += exit.Got
		cur = next
	}
	close(stopSending)
	sent = <-sending
	// The queue is first in, first out: once the last generation reads
	// "end", every datagram before it has been read by one generation.
	_, err = c.Write([]byte("end"))
	require.NoError(t, err)
	got += f.next(eventOf("udpend", cur.Pid)).Got
	f.stop(cur)
	t.Logf("%d datagrams sent across 3 Upgrades, %d received", sent, got)
	assert.Equal(t, sent, got, "no datagram lost")
}

const envActivated = "REUSE_TEST_ACTIVATED" // addresses to Listen on, space-separated

// TestHelperActivated is not a test: systemd-socket-activate starts it with
// sockets from fd 3. It reports their inodes, Listens on each address it is
// given and on one more, and reports what it got and whether any variable
// of the handoff reached it or a child of its own.
func TestHelperActivated(t *testing.T) {
	addrs := os.Getenv(envActivated)
	if addrs == "" {
		t.Skip("child process only")
	}
	var e event
	e.Event = "activated"
	for fd := 3; ; fd++ {
		link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
		ino, ok := strings.CutPrefix(link, "socket:[")
		if err != nil || !ok {
			break
		}
		n, _ := strconv.ParseUint(strings.TrimSuffix(ino, "]"), 10, 64)
		e.Inherited = append(e.Inherited, n)
	}
	for _, a := range append(strings.Fields(addrs), "127.0.0.1:0") {
		ln, err := Listen("tcp4", a)
		if err != nil {
			e.Err += err.Error() + "; "
			continue
		}
		defer ln.Close()
		e.Listened = append(e.Listened, inodeOf(ln.(syscall.Conn)))
	}
	var seen []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "LISTEN_") || strings.HasPrefix(kv, envHandoff) {
			seen = append(seen, "self: "+kv)
		}
	}
	out, err := exec.Command("/usr/bin/env").Output()
	if err != nil {
		e.Err += err.Error()
	}
	for _, kv := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(kv, "LISTEN_") || strings.HasPrefix(kv, envHandoff) {
			seen = append(seen, "child: "+kv)
		}
	}
	e.Env = strings.Join(seen, " ")
	if err := Ready(); err != nil {
		e.Err += err.Error()
	}
	emit(e)
}

// activate runs TestHelperActivated under systemd-socket-activate with a
// listening socket for each address in listen, in that order, and the
// addresses to Listen on in ask, and returns its report.
func activate(t *testing.T, listen, ask []string) event {
	t.Helper()
	bin, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate is not installed (Debian: apt-get install systemd)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := []string{"-E", envActivated + "=" + strings.Join(ask, " "), "-E", "GORACE=atexit_sleep_ms=0"}
	for _, a := range listen {
		args = append(args, "-l", a)
	}
	args = append(args, os.Args[0], "-test.run=^TestHelperActivated$")
	cmd := exec.CommandContext(ctx, bin, args...)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	errFile, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	require.NoError(t, err)
	defer errFile.Close()
	cmd.Stderr = errFile
	stderr := func() string { b, _ := os.ReadFile(errFile.Name()); return string(b) }
	require.NoError(t, cmd.Start())
	defer cmd.Wait()
	// It execs the program on the first connection: poll until it listens.
	var c net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err = net.Dial("tcp4", listen[0]); err == nil {
			break
		}
		require.True(t, time.Now().Before(deadline), "systemd-socket-activate never listened: %s", stderr())
		time.Sleep(5 * time.Millisecond)
	}
	defer c.Close()
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.Event == "activated" {
			return e
		}
	}
	require.FailNow(t, "no report from the activated process", "stderr: %s", stderr())
	return event{}
}

// TestListen_TakesSystemdSockets: under systemd-socket-activate, Listen
// returns the activated sockets themselves, matched by address whatever
// their order; an address that was not passed is bound as usual; and no
// LISTEN_* variable reaches the process's environment or its children.
func TestListen_TakesSystemdSockets(t *testing.T) {
	a, b := hostPort("127.0.0.1", freePort(t)), hostPort("127.0.0.1", freePort(t))
	for _, order := range [][]string{{a, b}, {b, a}} {
		e := activate(t, order, []string{a, b})
		require.Empty(t, e.Err)
		require.Len(t, e.Inherited, 2)
		require.Len(t, e.Listened, 3)
		byAddr := map[string]uint64{order[0]: e.Inherited[0], order[1]: e.Inherited[1]}
		assert.Equal(t, byAddr[a], e.Listened[0], "Listen(%s) is the activated socket for %s", a, a)
		assert.Equal(t, byAddr[b], e.Listened[1], "Listen(%s) is the activated socket for %s", b, b)
		assert.NotContains(t, e.Inherited, e.Listened[2], "127.0.0.1:0 is bound anew once both are taken")
		assert.Empty(t, e.Env, "no LISTEN_* in the process or its children")
	}
}

// TestReady_NotifiesSystemd: with NOTIFY_SOCKET set, Ready sends READY=1;
// at each Upgrade the old main process tells systemd the new one's MAINPID
// before it lets the new one's Ready return, so that systemd follows it
// with NotifyAccess=main; NOTIFY_SOCKET stays for later generations.
func TestReady_NotifiesSystemd(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	ns, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	require.NoError(t, err)
	defer ns.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	f, first := startFamily(t, serverConfig{Network: "tcp4", Addr: "127.0.0.1:0"})
	read := func() string {
		t.Helper()
		require.NoError(t, ns.SetReadDeadline(time.Now().Add(30*time.Second)))
		buf := make([]byte, 256)
		n, err := ns.Read(buf)
		require.NoError(t, err)
		return string(buf[:n])
	}
	assert.Equal(t, "READY=1", read(), "the first generation is the unit's main process already")
	cur := first
	for range 2 {
		cur = f.upgrade(cur)
		assert.Equal(t, fmt.Sprintf("MAINPID=%d", cur.Pid), read(), "sent by the old main process, before it answers the new one's Ready")
	}
	f.stop(cur)
}

func haveIPv6Loopback() bool {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// freePort returns a port that was free on 127.0.0.1 a moment ago, outside
// the ephemeral range, where no other test's port 0 or client socket lands.
func freePort(t *testing.T) int {
	t.Helper()
	for range 100 {
		p := 20000 + rand.IntN(12000)
		ln, err := net.Listen("tcp4", hostPort("127.0.0.1", p))
		if err == nil {
			ln.Close()
			return p
		}
	}
	t.Fatal("no free port in 20000-31999")
	return 0
}

// inheritSocket makes a listening (or, for SOCK_DGRAM, bound) socket as
// systemd would and hands it to this process's inheritance, as if it had
// been passed at start; zero marks it as made for a request of port 0, as
// a parent's Upgrade does. It returns the socket's address and inode.
func inheritSocket(t *testing.T, domain, typ int, sa unix.Sockaddr, v6only, zero bool) (unix.Sockaddr, uint64) {
	t.Helper()
	fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	if domain == unix.AF_INET6 {
		require.NoError(t, unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, b2i(v6only)))
	}
	require.NoError(t, unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1))
	require.NoError(t, unix.Bind(fd, sa))
	if typ != unix.SOCK_DGRAM {
		require.NoError(t, unix.Listen(fd, 16))
	}
	got, err := unix.Getsockname(fd)
	require.NoError(t, err)
	var st unix.Stat_t
	require.NoError(t, unix.Fstat(fd, &st))
	inheritance.mu.Lock()
	before := len(inheritance.socks)
	inheritance.mu.Unlock()
	in, ok := inspect(fd)
	require.True(t, ok, "a socket Listen can take")
	in.from, in.zero = "systemd", zero
	addInherited(in, "")
	inheritance.mu.Lock()
	require.Len(t, inheritance.socks, before+1)
	s := inheritance.socks[before]
	inheritance.mu.Unlock()
	t.Cleanup(func() { dropInherited(s) })
	return got, st.Ino
}

// dropInherited removes s from the inheritance if no Listen took it.
func dropInherited(s *inheritedFile) {
	inheritance.mu.Lock()
	defer inheritance.mu.Unlock()
	for i, t := range inheritance.socks {
		if t == s {
			inheritance.socks = slices.Delete(inheritance.socks, i, i+1)
			inheritance.open.Add(-1)
			s.f.Close()
			return
		}
	}
}

func inodeOfAny(t *testing.T, c any) uint64 {
	t.Helper()
	sc, ok := c.(syscall.Conn)
	require.True(t, ok, "%T", c)
	return inodeOf(sc)
}

// TestListen_InheritedSocketMatchedByMeaning: an inherited socket is taken
// by the Listen that asks for what it is, however the address is written;
// one that holds the port but differs gives an error that says how, instead
// of a bind that could only fail against it.
func TestListen_InheritedSocketMatchedByMeaning(t *testing.T) {
	any4 := &unix.SockaddrInet4{}
	lo4 := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	any6 := &unix.SockaddrInet6{}
	lo6 := &unix.SockaddrInet6{Addr: [16]byte{15: 1}}
	portOf := func(sa unix.Sockaddr) string {
		switch sa := sa.(type) {
		case *unix.SockaddrInet4:
			return strconv.Itoa(sa.Port)
		case *unix.SockaddrInet6:
			return strconv.Itoa(sa.Port)
		}
		return ""
	}
	type req struct {
		network, host string // host "" with the inherited port; port 0 when zero is set
		zero          bool
		err           string // "" : takes the inherited socket
	}
	for name, c := range map[string]struct {
		domain int
		sa     unix.Sockaddr
		v6only bool
		reqs   []req
	}{
		"dual-stack [::]": {unix.AF_INET6, any6, false, []req{
			{"tcp", "", false, ""},
			{"tcp", "0.0.0.0", false, ""}, // Go binds that dual-stack too
			{"tcp", "[::]", false, ""},
			{"tcp", "", true, ""},
			{"tcp4", "", false, `it is dual-stack, and "tcp4" asks for IPv4 only: ask for "tcp"`},
			{"tcp6", "", false, `it is dual-stack, and "tcp6" asks for IPv6 only: ask for "tcp"`},
			{"tcp4", "127.0.0.1", false, `it is the wildcard [::]:`},
		}},
		"v6-only [::]": {unix.AF_INET6, any6, true, []req{
			{"tcp6", "", false, ""},
			{"tcp", "", false, `it is IPv6 only, and "tcp" asks for IPv4 and IPv6: ask for "tcp6"`},
		}},
		"IPv4 0.0.0.0": {unix.AF_INET, any4, false, []req{
			{"tcp4", "", false, ""},
			{"tcp4", "0.0.0.0", false, ""},
			{"tcp", "", false, `it is IPv4 only, and "tcp" asks for IPv4 and IPv6: ask for "tcp4"`},
			{"tcp4", "127.0.0.1", false, "it is the wildcard 0.0.0.0:"},
		}},
		"127.0.0.1": {unix.AF_INET, lo4, false, []req{
			{"tcp4", "127.0.0.1", false, ""},
			{"tcp", "127.0.0.1", false, ""},
			{"tcp", "localhost", false, ""},
			{"tcp4", "127.0.0.1", true, ""},
		}},
		"[::1]": {unix.AF_INET6, lo6, false, []req{
			{"tcp6", "[::1]", false, ""},
			{"tcp", "[::1]", false, ""},
			{"tcp", "[::1]", true, ""},
		}},
	} {
		for _, r := range c.reqs {
			t.Run(fmt.Sprintf("%s/%s %s zero=%v", name, r.network, r.host, r.zero), func(t *testing.T) {
				if c.domain == unix.AF_INET6 && !haveIPv6() {
					t.Skip("no IPv6 on this host")
				}
				sa, ino := inheritSocket(t, c.domain, unix.SOCK_STREAM, c.sa, c.v6only, r.zero)
				port := portOf(sa)
				if r.zero {
					port = "0"
				}
				ln, err := Listen(r.network, r.host+":"+port)
				if r.err != "" {
					require.Error(t, err)
					assert.ErrorContains(t, err, r.err)
					assert.ErrorContains(t, err, "the inherited socket fd ")
					return
				}
				require.NoError(t, err)
				defer ln.Close()
				assert.Equal(t, ino, inodeOfAny(t, ln), "Listen returned the inherited socket")
			})
		}
	}
}

// TestListen_InheritedSocketOptions: an inherited socket is made what a
// new one with the options asked for would be, where that can change after
// bind; SO_REUSEPORT cannot, and a difference there is an error naming it,
// the socket staying for a Listen that fits it. SO_LINGER on a listener the
// parent still shares is left alone: the new process sets it on each
// connection it accepts.
func TestListen_InheritedSocketOptions(t *testing.T) {
	lo := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	sa, ino := inheritSocket(t, unix.AF_INET, unix.SOCK_STREAM, lo, false, false)
	addr := hostPort("127.0.0.1", sa.(*unix.SockaddrInet4).Port)
	_, err := Listen("tcp4", addr, WithReusePort(true))
	require.Error(t, err)
	assert.ErrorContains(t, err, "the inherited socket fd ")
	assert.ErrorContains(t, err, "was bound with SO_REUSEPORT=0, which cannot change after bind; ask for WithReusePort(false)")

	var ran []string
	ln, err := Listen("tcp4", addr, WithRSTOnClose(), WithReuseAddr(false), WithControl(func(network, address string, _ syscall.RawConn) error {
		ran = append(ran, network+" "+address)
		return nil
	}))
	require.NoError(t, err, "the socket is still there for a Listen that fits it")
	defer ln.Close()
	assert.Equal(t, ino, inodeOfAny(t, ln))
	tl, ok := ln.(*net.TCPListener)
	require.True(t, ok, "a socket from systemd is the process's own: its options are set on it")
	assert.Equal(t, unix.Linger{Onoff: 1, Linger: 0}, getLinger(t, tl))
	assert.Equal(t, 0, getInt(t, tl, unix.SOL_SOCKET, unix.SO_REUSEADDR))
	assert.Equal(t, []string{"tcp4 " + addr}, ran, "WithControl runs on the inherited socket")

	// The same from a parent's Upgrade, with SO_LINGER {1,0} set by the
	// parent: a Listen without WithRSTOnClose must not reset its
	// connections, nor change the listener under the parent.
	sa, ino = inheritSocket(t, unix.AF_INET, unix.SOCK_STREAM, lo, false, false)
	addr = hostPort("127.0.0.1", sa.(*unix.SockaddrInet4).Port)
	inheritance.mu.Lock()
	s := inheritance.socks[len(inheritance.socks)-1]
	s.from = "the parent's Upgrade"
	require.NoError(t, unix.SetsockoptLinger(s.fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1}))
	inheritance.mu.Unlock()
	ln, err = Listen("tcp4", addr)
	require.NoError(t, err)
	defer ln.Close()
	assert.Equal(t, ino, inodeOfAny(t, ln))
	ll, ok := ln.(*lingerListener)
	require.True(t, ok, "%T: SO_LINGER is set on each accepted connection", ln)
	assert.Equal(t, unix.Linger{Onoff: 1, Linger: 0}, getLinger(t, ll.TCPListener), "the shared listener is left as it was")
	c, err := net.Dial("tcp4", addr)
	require.NoError(t, err)
	defer c.Close()
	setDeadline(t, ll)
	sc, err := ll.AcceptTCP()
	require.NoError(t, err)
	defer sc.Close()
	assert.Equal(t, unix.Linger{}, getLinger(t, sc), "this process's connections close with FIN, as asked")
}

// TestListenPacket_TakesInheritedUDPAndUnix: ListenPacket takes inherited
// datagram sockets, and Listen inherited unix listeners, by address.
func TestListenPacket_TakesInheritedUDPAndUnix(t *testing.T) {
	sa, ino := inheritSocket(t, unix.AF_INET, unix.SOCK_DGRAM, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}, false, false)
	pc, err := ListenPacket("udp", hostPort("127.0.0.1", sa.(*unix.SockaddrInet4).Port))
	require.NoError(t, err)
	assert.Equal(t, ino, inodeOfAny(t, pc))
	pc.Close()

	path := filepath.Join(t.TempDir(), "s.sock")
	_, ino = inheritSocket(t, unix.AF_UNIX, unix.SOCK_STREAM, &unix.SockaddrUnix{Name: path}, false, false)
	_, err = Listen("unixpacket", path)
	require.Error(t, err, "a stream socket is not a unixpacket one: bound anew, the path is taken")
	t.Chdir(filepath.Dir(path))
	ln, err := Listen("unix", filepath.Base(path))
	require.NoError(t, err, "a relative name of the same socket file")
	assert.Equal(t, ino, inodeOfAny(t, ln))
	ln.Close()
	_, err = os.Stat(path)
	assert.NoError(t, err, "an inherited socket's path is not its to remove")
}

// TestUpgrade_OneAtATime: a second Upgrade while one runs fails at once.
func TestUpgrade_OneAtATime(t *testing.T) {
	upgrading.Lock()
	defer upgrading.Unlock()
	err := Upgrade(context.Background())
	assert.ErrorContains(t, err, "another Upgrade is running")
	//lint:ignore SA1012 a nil Context is the case under test
	assert.ErrorContains(t, Upgrade(nil), "nil Context") //nolint:staticcheck
}

// TestReady_ParentGaveUp: Ready in a process whose parent closed the handoff
// without answering (its Upgrade's context ended) returns an error.
func TestReady_ParentGaveUp(t *testing.T) {
	toR, toW, err := os.Pipe()
	require.NoError(t, err)
	defer toR.Close()
	fromR, fromW, err := os.Pipe()
	require.NoError(t, err)
	saved := inheritance.toParent
	inheritance.toParent, inheritance.fromParent, inheritance.parent = toW, fromR, 1
	defer func() { inheritance.toParent, inheritance.fromParent, inheritance.parent = saved, nil, 0 }()
	go func() {
		b := make([]byte, 6)
		io.ReadFull(toR, b) // "ready\n"
		fromW.Close()       // and no answer
	}()
	err = tellParent()
	assert.ErrorContains(t, err, "gave up on this process")
}
