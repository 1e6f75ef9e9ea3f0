package benchmarks

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cloudflare/tableflip"
	"github.com/safelisten/reuse"
	"golang.org/x/sys/unix"
)

// A chain of processes, each a trivial server (Listen, Ready) that upgrades
// to the next once its own parent has exited, as each library requires. Each
// times its Upgrade, from the call to its return after the new process's
// Ready, and sends the figure to the benchmark over a unix datagram socket.
const (
	envChild  = "REUSE_BENCH_CHILD"  // the implementation: reuse or tableflip
	envLeft   = "REUSE_BENCH_LEFT"   // Upgrades still to do in the chain
	envReport = "REUSE_BENCH_REPORT" // the datagram socket's path
	envGen    = "REUSE_BENCH_GEN"    // 1 for the first process of the chain
)

func TestMain(m *testing.M) {
	if impl := os.Getenv(envChild); impl != "" {
		os.Exit(upgradeChild(impl))
	}
	os.Exit(m.Run())
}

// upgradeChild is one process of the chain.
func upgradeChild(impl string) int {
	report := func(msg string) {
		c, err := net.Dial("unixgram", os.Getenv(envReport))
		if err == nil {
			c.Write([]byte(msg))
			c.Close()
		}
	}
	left, _ := strconv.Atoi(os.Getenv(envLeft))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var waitParent, upgrade func() error
	switch impl {
	case "reuse":
		ppid := os.Getppid()
		ln, err := reuse.Listen("tcp4", "127.0.0.1:0")
		if err == nil {
			defer ln.Close()
			err = reuse.Ready()
		}
		if err != nil {
			report("error " + err.Error())
			return 1
		}
		waitParent = func() error {
			// reuse.Upgrade refuses while the parent lives; the first
			// process's parent is the benchmark.
			for os.Getenv(envGen) != "1" && os.Getppid() == ppid && ctx.Err() == nil {
				time.Sleep(50 * time.Microsecond)
			}
			return ctx.Err()
		}
		upgrade = func() error { return reuse.Upgrade(ctx) }
	case "tableflip":
		upg, err := tableflip.New(tableflip.Options{})
		if err != nil {
			report("error " + err.Error())
			return 1
		}
		ln, err := upg.Listen("tcp4", "127.0.0.1:0")
		if err == nil {
			defer ln.Close()
			err = upg.Ready()
		}
		if err != nil {
			report("error " + err.Error())
			return 1
		}
		waitParent = func() error { return upg.WaitForParent(ctx) }
		upgrade = func() error {
			for {
				// Ready and the parent's exit reach tableflip's loop
				// through channels: an Upgrade right after them can
				// come first.
				err := upg.Upgrade()
				if err == nil || ctx.Err() != nil ||
					err.Error() != "process is not ready yet" && err.Error() != "parent hasn't exited" {
					return err
				}
				runtime.Gosched()
			}
		}
	default:
		report("error unknown implementation " + impl)
		return 1
	}
	if left == 0 {
		report("done")
		return 0
	}
	os.Setenv(envLeft, strconv.Itoa(left-1))
	err := waitParent()
	gen, _ := strconv.Atoi(os.Getenv(envGen))
	os.Setenv(envGen, strconv.Itoa(gen+1))
	start := time.Now()
	if err == nil {
		err = upgrade()
	}
	if err == nil {
		report("ns " + strconv.FormatInt(int64(time.Since(start)), 10))
		return 0
	}
	report("error " + err.Error())
	return 1
}

// BenchmarkUpgrade: one Upgrade, from the call until the new process has
// called Ready and the call returns. ns/op is the mean; p50 and p99 are
// reported too. The figures include starting the new process, which both
// pay alike.
func BenchmarkUpgrade(b *testing.B) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		b.Skip("PR_SET_CHILD_SUBREAPER:", err)
	}
	for _, impl := range []string{"tableflip", "reuse"} {
		b.Run("impl="+impl, func(b *testing.B) {
			durs, err := upgradeChain(impl, b.N)
			if err != nil {
				b.Fatal(err)
			}
			slices.Sort(durs)
			var sum time.Duration
			for _, d := range durs {
				sum += d
			}
			b.ReportMetric(float64(sum)/float64(len(durs)), "ns/op")
			b.ReportMetric(float64(durs[len(durs)/2]), "p50-ns")
			b.ReportMetric(float64(durs[len(durs)*99/100]), "p99-ns")
		})
	}
}

// upgradeChain runs a chain of n Upgrades of impl and returns their times.
// The benchmark is the chain's subreaper: every process ends as its child.
func upgradeChain(impl string, n int) ([]time.Duration, error) {
	path := filepath.Join(os.TempDir(), fmt.Sprintf("reuse-bench-%d.sock", os.Getpid()))
	os.Remove(path)
	rc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envChild+"="+impl, envLeft+"="+strconv.Itoa(n), envReport+"="+path, envGen+"=1")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer reapAll()
	var durs []time.Duration
	buf := make([]byte, 512)
	// The last process's "done" may come before its parent's figure.
	for done := false; !done || len(durs) < n; {
		rc.SetReadDeadline(time.Now().Add(60 * time.Second))
		m, err := rc.Read(buf)
		if err != nil {
			return nil, fmt.Errorf("after %d of %d Upgrades: %w", len(durs), n, err)
		}
		msg := string(buf[:m])
		switch {
		case msg == "done":
			done = true
		case strings.HasPrefix(msg, "ns "):
			v, _ := strconv.ParseInt(msg[3:], 10, 64)
			durs = append(durs, time.Duration(v))
		default:
			return nil, errors.New(msg)
		}
	}
	return durs, nil
}

// reapAll waits for every child of this process, the chain's last one
// included, until none is left.
func reapAll() {
	for {
		var ws unix.WaitStatus
		_, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return
		}
	}
}
