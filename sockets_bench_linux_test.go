package reuse

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// BenchmarkSockets measures Sockets on a port with a listener and 3
// connections, held by the benchmark process, while 10,000 other sockets
// (5,000 loopback connection pairs on another port) fill the kernel's table,
// and compares it with `ss -tanH '( sport = :P )'`, which does the same
// netlink query in C plus an exec. The sub-benchmarks differ in who holds the
// 10,000 other sockets:
//
//	sockets=10000/owners=other  a child process: the usual case, where the
//	                            caller's own descriptors are few and the
//	                            table is full of other processes' sockets
//	sockets=10000/owners=self   the benchmark process itself, its sockets
//	                            opened before the measured port's: the owner
//	                            scan fstats 10,000 descriptors first, the
//	                            worst case (and ss's exec copies them all)
//
// Each iteration runs Sockets, the netlink query alone and ss, timed apart,
// so they all see the same table, in an order that rotates: whichever runs
// first finds the kernel's table colder in the CPU caches. One iteration in
// 4 then runs ss -p as well:
//
//	ns/op          Sockets(P), with owner PIDs (a /proc/PID/fd scan)
//	netlink-ns/op  the netlink query alone, without owners
//	ss-ns/op       ss, exec included, without owners
//	ss-p-ns/op     ss -p, which finds owners the same way Sockets does
//	ratio-vs-ss    ns/op / ss-ns/op
//	ratio-vs-ss-p  Sockets / ss -p, over the iterations that ran ss -p
//	reuse-allocs/op, reuse-B/op  of Sockets alone
func BenchmarkSockets(b *testing.B) {
	const (
		pairs  = 5000 // 10,000 sockets on another port
		target = 3    // connections to the measured port
	)
	// Everything the benchmark opens is closed at its end, in this process
	// and in the child. The netpoller's descriptors, opened once, come
	// first.
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(b, err)
	ln.Close()
	before := censusOpenFDs(b)
	b.Cleanup(func() {
		if after := censusOpenFDs(b); after != before {
			b.Errorf("%d descriptors open before the benchmark, %d after", before, after)
		}
	})
	b.Run(fmt.Sprintf("sockets=%d", 2*pairs), func(b *testing.B) {
		b.Run("owners=other", func(b *testing.B) {
			_, port := startSocketHolder(b, pairs)
			held, err := socketsNetlink(port)
			require.NoError(b, err)
			require.Len(b, held, 1+pairs, "the child's listener and the server ends of its connections")
			benchSockets(b, target)
		})
		b.Run("owners=self", func(b *testing.B) {
			benchRaiseNOFILE(b, 2*pairs+2*target+2+64) // + stdio, runtime, netlink and ss pipes
			others, _ := censusListen(b, "tcp4", netip.MustParseAddr("127.0.0.1"))
			benchConnect(b, others, pairs)
			benchSockets(b, target)
		})
	})
}

// benchSockets opens the measured port, a listener with target connections,
// checks that Sockets and ss see it alike, and runs the benchmark loop.
func benchSockets(b *testing.B, target int) {
	ln, local := censusListen(b, "tcp4", netip.MustParseAddr("127.0.0.1"))
	benchConnect(b, ln, target)
	port := int(local.Port())

	socks, err := Sockets(port)
	require.NoError(b, err)
	mine := censusAt(socks, local)
	require.Len(b, mine, 1+target, censusFormat(socks))
	for _, s := range mine {
		require.Equal(b, os.Getpid(), s.PID, censusFormat(socks))
	}
	ss, _ := exec.LookPath("ss")
	filter := fmt.Sprintf("( sport = :%d )", port)
	if ss != "" {
		out, err := exec.Command(ss, "-tanH", filter).Output()
		require.NoError(b, err)
		require.Equal(b, len(socks), strings.Count(string(out), "\n"), "ss sees the same sockets:\n%s", out)
	}

	var reuseT, netlinkT, ssT, reusePT, ssPT time.Duration
	var mallocs, bytes uint64
	var ms runtime.MemStats
	n, nP := 0, 0
	for i := 0; b.Loop(); i++ {
		var reuseI time.Duration
		for k := range 3 {
			switch (i + k) % 3 {
			case 0:
				runtime.ReadMemStats(&ms)
				m0, b0 := ms.Mallocs, ms.TotalAlloc
				t0 := time.Now()
				socks, err := Sockets(port)
				reuseI = time.Since(t0)
				runtime.ReadMemStats(&ms)
				mallocs, bytes = mallocs+ms.Mallocs-m0, bytes+ms.TotalAlloc-b0
				if err != nil || len(socks) < 1+target {
					b.Fatalf("Sockets(%d) = %d sockets, %v", port, len(socks), err)
				}
			case 1:
				t0 := time.Now()
				_, err := socketsNetlink(uint16(port))
				netlinkT += time.Since(t0)
				if err != nil {
					b.Fatal(err)
				}
			case 2:
				if ss == "" {
					break
				}
				t0 := time.Now()
				err := exec.Command(ss, "-tanH", filter).Run()
				ssT += time.Since(t0)
				if err != nil {
					b.Fatal(err)
				}
			}
		}
		reuseT += reuseI
		if ss != "" && i%ssPEvery == 0 {
			t0 := time.Now()
			err := exec.Command(ss, "-tanpH", filter).Run()
			ssPT += time.Since(t0)
			if err != nil {
				b.Fatal(err)
			}
			reusePT += reuseI
			nP++
		}
		n++
	}
	perOp := func(d time.Duration, n int) float64 { return float64(d.Nanoseconds()) / float64(n) }
	b.ReportMetric(perOp(reuseT, n), "ns/op")
	b.ReportMetric(perOp(netlinkT, n), "netlink-ns/op")
	b.ReportMetric(float64(mallocs)/float64(n), "reuse-allocs/op")
	b.ReportMetric(float64(bytes)/float64(n), "reuse-B/op")
	if ss != "" {
		b.ReportMetric(perOp(ssT, n), "ss-ns/op")
		b.ReportMetric(perOp(ssPT, nP), "ss-p-ns/op")
		b.ReportMetric(float64(reuseT)/float64(ssT), "ratio-vs-ss")
		b.ReportMetric(float64(reusePT)/float64(ssPT), "ratio-vs-ss-p")
	}
}

// ssPEvery: ss -p, which reads every process's descriptors (100 ms with
// 10,000 sockets), runs on one iteration in ssPEvery, the first included.
const ssPEvery = 4

// benchRaiseNOFILE raises this process's RLIMIT_NOFILE soft limit to the
// hard limit, if need is more than it, until the benchmark ends, and skips
// the benchmark if need is more than the hard limit.
func benchRaiseNOFILE(b *testing.B, need int) {
	b.Helper()
	var lim unix.Rlimit
	require.NoError(b, unix.Getrlimit(unix.RLIMIT_NOFILE, &lim))
	if lim.Cur < uint64(need) && lim.Cur < lim.Max {
		raised := lim
		raised.Cur = lim.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &raised); err == nil {
			orig := lim
			b.Cleanup(func() { unix.Setrlimit(unix.RLIMIT_NOFILE, &orig) })
			lim = raised
		}
	}
	if lim.Cur < uint64(need) {
		b.Skipf("RLIMIT_NOFILE is %d, %d needed", lim.Cur, need)
	}
}

// benchConnect makes n loopback connections to ln. At the end of the
// benchmark both ends close with SO_LINGER 0, so no TIME_WAIT entries are
// left to slow down whatever runs next.
func benchConnect(b *testing.B, ln *net.TCPListener, n int) {
	b.Helper()
	var d net.Dialer
	d.SetMultipathTCP(false)
	conns := make([]*net.TCPConn, 0, 2*n)
	b.Cleanup(func() {
		for _, c := range conns {
			c.SetLinger(0)
			c.Close()
		}
	})
	for range n {
		c, err := d.Dial("tcp", ln.Addr().String())
		require.NoError(b, err)
		conns = append(conns, c.(*net.TCPConn))
		s, err := ln.AcceptTCP()
		require.NoError(b, err)
		conns = append(conns, s)
	}
}

// holderPairsEnv tells TestHelperSocketHolder how many connection pairs to
// make.
const holderPairsEnv = "REUSE_HELPER_HOLD_PAIRS"

// TestHelperSocketHolder is not a test: it is the child process that
// startSocketHolder runs. It listens on 127.0.0.1, makes $REUSE_HELPER_HOLD_PAIRS
// loopback connections to itself, prints "ready PORT" (the listener's port),
// and holds its sockets, and the descriptors it inherited, until its stdin
// closes. Every socket has SO_LINGER 0 from the start: however the child
// ends, it leaves no TIME_WAIT entries behind.
func TestHelperSocketHolder(t *testing.T) {
	v := os.Getenv(holderPairsEnv)
	if v == "" {
		t.Skip("child process only")
	}
	fail := func(format string, args ...any) {
		fmt.Printf(format+"\n", args...)
		os.Exit(1)
	}
	pairs, err := strconv.Atoi(v)
	if err != nil || pairs < 0 {
		fail("error: %s=%q", holderPairsEnv, v)
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		fail("error: getrlimit: %v", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
	if need := uint64(2*pairs + 64); lim.Cur < need {
		fail("skip: RLIMIT_NOFILE is %d, %d needed", lim.Cur, need)
	}

	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	l, err := lc.Listen(t.Context(), "tcp4", "127.0.0.1:0")
	if err != nil {
		fail("error: %v", err)
	}
	ln := l.(*net.TCPListener)
	conns := make([]*net.TCPConn, 0, 2*pairs)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		ln.Close()
	}()
	var d net.Dialer
	d.SetMultipathTCP(false)
	for range pairs {
		c, err := d.Dial("tcp4", ln.Addr().String())
		if err != nil {
			fail("error: %v", err)
		}
		conns = append(conns, c.(*net.TCPConn))
		s, err := ln.AcceptTCP()
		if err != nil {
			fail("error: %v", err)
		}
		conns = append(conns, s)
		for _, c := range conns[len(conns)-2:] {
			if err := c.SetLinger(0); err != nil {
				fail("error: %v", err)
			}
		}
	}
	fmt.Println("ready", ln.Addr().(*net.TCPAddr).Port)
	io.Copy(io.Discard, os.Stdin) // until the parent closes stdin
}

// startSocketHolder starts TestHelperSocketHolder in a child process with
// pairs connection pairs and the extra descriptors files (its 3, 4, ...),
// waits until it holds them, and returns its PID and its listener's port.
// When tb ends, the child's stdin is closed, and it is killed if it has not
// exited 10 s later. The caller may close files once this returns.
func startSocketHolder(tb testing.TB, pairs int, files ...*os.File) (pid int, port uint16) {
	tb.Helper()
	cmd := helperCmd(context.Background(), os.Args[0], "TestHelperSocketHolder", holderPairsEnv+"="+strconv.Itoa(pairs))
	cmd.Stderr = os.Stderr
	cmd.ExtraFiles = files
	stdin, err := cmd.StdinPipe()
	require.NoError(tb, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(tb, err)
	require.NoError(tb, cmd.Start())
	// held are the child's listener and server ends, from the "ready" line on.
	type key struct{ local, remote netip.AddrPort }
	held := map[key]bool{}
	tb.Cleanup(func() {
		stdin.Close()
		// No goroutine waits: one that outlived the test would be
		// counted by the next one.
		kill := time.AfterFunc(10*time.Second, func() { cmd.Process.Kill() })
		cmd.Wait()
		kill.Stop()
		if port == 0 {
			return
		}
		// Its sockets closed with SO_LINGER 0, the child's exit left no
		// TIME_WAIT behind. (Other sockets may have used the port number
		// before the child did, and left theirs.)
		socks, err := socketsNetlink(port)
		if err != nil {
			return
		}
		for _, s := range socks {
			if s.Inode == 0 && held[key{s.Local, s.Remote}] {
				tb.Errorf("the child's exit left %v %v -> %v", s.State, s.Local, s.Remote)
			}
		}
	})
	// The pipe is an *os.File, which takes a deadline.
	if f, ok := stdout.(*os.File); ok {
		require.NoError(tb, f.SetReadDeadline(time.Now().Add(time.Minute)))
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(tb, err, "the child said %q", line)
	line = strings.TrimSpace(line)
	if reason, ok := strings.CutPrefix(line, "skip: "); ok {
		tb.Skip(reason)
	}
	p, ok := strings.CutPrefix(line, "ready ")
	require.True(tb, ok, "the child said %q", line)
	n, err := strconv.ParseUint(p, 10, 16)
	require.NoError(tb, err, "the child said %q", line)
	port = uint16(n)
	socks, err := socketsNetlink(port)
	require.NoError(tb, err)
	for _, s := range socks {
		if s.Inode != 0 {
			held[key{s.Local, s.Remote}] = true
		}
	}
	return cmd.Process.Pid, port
}
