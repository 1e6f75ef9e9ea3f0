//go:build unix

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/safelisten/reuse"
	"github.com/safelisten/reuse/drain"
	"github.com/safelisten/reuse/internal/loadgen"
)

// The restart half of the demo: a small HTTP server, this program itself
// started with envServe set, restarted under load in the two ways a server
// can be: stopped and started again, and upgraded (reuse.Upgrade, then a
// drain). Each generation of the server reports on its stdout, one line per
// event: "ready PID", "upgrade-failed PID ERROR", "exit PID".
const envServe = "CLOSEORDER_SERVE" // the address the server listens on

// serve is the server: it listens, serves until SIGTERM (Shutdown, as a
// plain server stops) or SIGHUP (Upgrade, then drain), and exits.
func serve(addr string) int {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM)
	ln, err := reuse.Listen("tcp4", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "closeorder server:", err)
		return 1
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })}
	d := drain.New(srv)
	go srv.Serve(d.Listener(ln))
	if err := reuse.Ready(); err != nil {
		fmt.Fprintln(os.Stderr, "closeorder server:", err)
		return 1
	}
	fmt.Printf("ready %d\n", os.Getpid())
	for sig := range sigs {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if sig == syscall.SIGTERM {
			srv.Shutdown(ctx)
			cancel()
			break
		}
		if err := reuse.Upgrade(ctx); err != nil {
			cancel()
			fmt.Printf("upgrade-failed %d %v\n", os.Getpid(), err)
			continue
		}
		d.Drain(ctx, time.Second)
		cancel()
		break
	}
	fmt.Printf("exit %d\n", os.Getpid())
	return 0
}

// measureRestarts restarts the server n times each way under the same load,
// on a port of its own, and returns what the clients saw.
func measureRestarts(n int) ([]restartResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	adopted := adoptOrphans()
	var out []restartResult
	for _, upgrade := range []bool{false, true} {
		r, err := restartUnderLoad(exe, n, upgrade, adopted)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// restartUnderLoad starts the server on a fresh port, sends it load, and
// restarts it n times, by a plain stop and start or by an Upgrade. With
// adopted, the servers an Upgrade started end as this process's children,
// and it reaps them.
func restartUnderLoad(exe string, n int, upgrade, adopted bool) (restartResult, error) {
	r := restartResult{name: "stop, then start (plain net.Listen too)"}
	if upgrade {
		r.name = "reuse.Upgrade, then drain"
	}
	addr, err := freeAddr()
	if err != nil {
		return r, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return r, err
	}
	defer pr.Close()
	lines := &serverLog{lines: make(chan string, 64)}
	go func() {
		defer close(lines.lines)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines.lines <- sc.Text()
		}
	}()
	var procs []*exec.Cmd // the servers this process started, to reap
	pid := 0              // the server now, until it says it exited
	stray := 0            // a server whose Upgrade went wrong, perhaps still running
	start := func() (int, error) {
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), envServe+"="+addr)
		cmd.Stdout, cmd.Stderr = pw, os.Stderr
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		procs = append(procs, cmd)
		return readyPID(lines)
	}
	defer func() {
		for _, p := range []int{pid, stray} {
			if p != 0 { // an error left a server running, perhaps one Upgrade started
				syscall.Kill(p, syscall.SIGKILL)
			}
		}
		pw.Close()
		for _, cmd := range procs {
			cmd.Process.Kill()
			cmd.Wait()
		}
		for range lines.lines { // until every server's copy of pw is closed
		}
	}()
	if pid, err = start(); err != nil {
		return r, err
	}
	source := ""
	if runtime.GOOS == "linux" {
		source = "127.0.0.2" // off 127.0.0.1's ports (127/8 is loopback on Linux)
	}
	var loads []*loadgen.Load
	for _, mode := range []loadgen.Mode{loadgen.KeepAlive, loadgen.PerRequest} {
		l, err := loadgen.Start(context.Background(), loadgen.Config{Network: "tcp4", Addr: addr, Source: source, Mode: mode, Clients: 8})
		if err != nil {
			return r, err
		}
		defer l.Stop()
		loads = append(loads, l)
	}
	// flows waits until every load has had requests served since now, so
	// that each restart happens under load that gets through.
	flows := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, l := range loads {
			if err := l.WaitOK(ctx, l.Snapshot().OK+20); err != nil {
				return fmt.Errorf("no request served on %s: %w", addr, err)
			}
		}
		return nil
	}
	began := time.Now()
	for range n {
		if err := flows(); err != nil {
			return r, err
		}
		if !upgrade {
			syscall.Kill(pid, syscall.SIGTERM)
			if _, err := lines.wait("exit " + strconv.Itoa(pid)); err != nil {
				return r, err
			}
			pid = 0
			if pid, err = start(); err != nil {
				return r, err
			}
			continue
		}
		old := pid
		next, err := upgradeOnce(pid, lines)
		if next != 0 {
			pid = next
		}
		if err != nil {
			stray = old
			return r, err
		}
		if adopted && old != procs[0].Process.Pid {
			reap(old)
		}
	}
	if err := flows(); err != nil {
		return r, err
	}
	r.took = time.Since(began)
	for _, l := range loads {
		res := l.Stop()
		r.res.OK += res.OK
		for k, v := range res.Failed {
			if r.res.Failed == nil {
				r.res.Failed = map[loadgen.Kind]int64{}
			}
			r.res.Failed[k] += v
		}
	}
	syscall.Kill(pid, syscall.SIGTERM)
	if _, err = lines.wait("exit " + strconv.Itoa(pid)); err == nil {
		if adopted && pid != procs[0].Process.Pid && upgrade {
			reap(pid)
		}
		pid = 0
	}
	return r, err
}

// upgradeOnce asks server pid to Upgrade and returns the new server's pid
// once the old one has exited; on an error, the new one's pid too once it
// is known. A new server cannot Upgrade while its parent
// drains, so a SIGHUP that comes too soon is sent again.
func upgradeOnce(pid int, lines *serverLog) (int, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		syscall.Kill(pid, syscall.SIGHUP)
		line, err := lines.wait("ready ", "upgrade-failed ")
		if err != nil {
			return 0, err
		}
		if next, ok := strings.CutPrefix(line, "ready "); ok {
			n, err := strconv.Atoi(next)
			if err != nil {
				return 0, err
			}
			if _, err := lines.wait("exit " + strconv.Itoa(pid)); err != nil {
				return n, err
			}
			return n, nil
		}
		if !strings.Contains(line, "has not exited yet") || time.Now().After(deadline) {
			return 0, errors.New(line)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// serverLog is the servers' lines, as they come, and those not asked for
// yet: the old server's "exit" can come before the new one's "ready".
type serverLog struct {
	lines   chan string
	pending []string
}

// readyPID waits for a server's "ready PID" and returns the pid.
func readyPID(l *serverLog) (int, error) {
	line, err := l.wait("ready ")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimPrefix(line, "ready "))
}

// wait returns the first line, pending or new, that starts with one of
// prefixes, within a minute.
func (l *serverLog) wait(prefixes ...string) (string, error) {
	match := func(line string) bool {
		for _, p := range prefixes {
			if strings.HasPrefix(line, p) {
				return true
			}
		}
		return false
	}
	for i, line := range l.pending {
		if match(line) {
			l.pending = append(l.pending[:i], l.pending[i+1:]...)
			return line, nil
		}
	}
	timeout := time.After(time.Minute)
	for {
		select {
		case line, ok := <-l.lines:
			if !ok {
				return "", errors.New("the server's output ended")
			}
			if match(line) {
				return line, nil
			}
			l.pending = append(l.pending, line)
		case <-timeout:
			return "", fmt.Errorf("no %q from the server within a minute", prefixes)
		}
	}
}

// freeAddr returns 127.0.0.1 with a port that was free a moment ago.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
