package census

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// BenchmarkSockets measures Read, with owners, on a port with a listener and
// 3 connections, held by the benchmark process, while 10,000 other sockets
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
//	                            lookup reads 10,000 links first, the worst
//	                            case (and ss's exec copies them all)
//
// Each iteration runs Read, the netlink query alone, the /proc fallback
// alone and ss, timed apart, so they all see the same table, in an order
// that rotates: whichever runs first finds the kernel's table colder in the
// CPU caches. One iteration in 4 then runs ss -p as well:
//
//	ns/op          Read, with owner PIDs (a /proc/PID/fd scan)
//	netlink-ns/op  the netlink query alone, without owners
//	proc-ns/op     the /proc/net/tcp{,6} fallback alone, without owners
//	ss-ns/op       ss, exec included, without owners
//	ss-p-ns/op     ss -p, which finds owners the same way Read does
//	ratio-vs-ss    ns/op / ss-ns/op
//	ratio-vs-ss-p  Read / ss -p, over the iterations that ran ss -p
//	read-allocs/op, read-B/op  of Read alone
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
			held := censusAt(raw(b, readNetlink, port), netip.AddrPortFrom(lo4, port))
			require.Len(b, held, 1+pairs, "the child's listener and the server ends of its connections")
			benchSockets(b, target)
		})
		b.Run("owners=self", func(b *testing.B) {
			benchRaiseNOFILE(b, 2*pairs+2*target+2+64) // + stdio, runtime, netlink and ss pipes
			others, _ := censusListen(b, "tcp4", lo4)
			benchConnect(b, others, pairs)
			benchSockets(b, target)
		})
	})
}

// benchSockets opens the measured port, a listener with target connections,
// checks that Read and ss see it alike, and runs the benchmark loop.
func benchSockets(b *testing.B, target int) {
	ln, local := censusListen(b, "tcp4", lo4)
	benchConnect(b, ln, target)
	port := local.Port()
	q := Query{Port: port, Owners: true}

	socks := readAll(b, port)
	mine := censusAt(socks, local)
	require.Len(b, mine, 1+target, censusFormat(socks))
	for _, s := range mine {
		require.Equal(b, os.Getpid(), s.PID, censusFormat(socks))
	}
	ss, _ := exec.LookPath("ss")
	filter := fmt.Sprintf("( sport = :%d )", port)
	if ss != "" {
		out, err := exec.Command(ss, "-tanH", "src", local.String()).Output()
		require.NoError(b, err)
		require.Equal(b, len(mine), strings.Count(string(out), "\n"), "ss sees the same sockets at %v:\n%s", local, out)
	}

	var readT, netlinkT, procT, ssT, readPT, ssPT time.Duration
	var mallocs, bytes uint64
	var ms runtime.MemStats
	n, nP := 0, 0
	count := func(Socket) {}
	for i := 0; b.Loop(); i++ {
		var readI time.Duration
		for k := range 4 {
			switch (i + k) % 4 {
			case 0:
				runtime.ReadMemStats(&ms)
				m0, b0 := ms.Mallocs, ms.TotalAlloc
				t0 := time.Now()
				tab, err := Read(q)
				readI = time.Since(t0)
				runtime.ReadMemStats(&ms)
				mallocs, bytes = mallocs+ms.Mallocs-m0, bytes+ms.TotalAlloc-b0
				if err != nil || tab.Total < 1+target || tab.Source != SourceNetlink {
					b.Fatalf("Read(%d) = %d sockets from %v, %v", port, tab.Total, tab.Source, err)
				}
			case 1:
				t0 := time.Now()
				err := readNetlink(port, time.Now().Add(DefaultTimeout), count)
				netlinkT += time.Since(t0)
				if err != nil {
					b.Fatal(err)
				}
			case 2:
				t0 := time.Now()
				err := readProc(port, time.Now().Add(DefaultTimeout), count)
				procT += time.Since(t0)
				if err != nil {
					b.Fatal(err)
				}
			case 3:
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
		readT += readI
		if ss != "" && i%ssPEvery == 0 {
			t0 := time.Now()
			err := exec.Command(ss, "-tanpH", filter).Run()
			ssPT += time.Since(t0)
			if err != nil {
				b.Fatal(err)
			}
			readPT += readI
			nP++
		}
		n++
	}
	perOp := func(d time.Duration, n int) float64 { return float64(d.Nanoseconds()) / float64(n) }
	b.ReportMetric(perOp(readT, n), "ns/op")
	b.ReportMetric(perOp(netlinkT, n), "netlink-ns/op")
	b.ReportMetric(perOp(procT, n), "proc-ns/op")
	b.ReportMetric(float64(mallocs)/float64(n), "read-allocs/op")
	b.ReportMetric(float64(bytes)/float64(n), "read-B/op")
	if ss != "" {
		b.ReportMetric(perOp(ssT, n), "ss-ns/op")
		b.ReportMetric(perOp(ssPT, nP), "ss-p-ns/op")
		b.ReportMetric(float64(readT)/float64(ssT), "ratio-vs-ss")
		b.ReportMetric(float64(readPT)/float64(ssPT), "ratio-vs-ss-p")
	}
}

// BenchmarkBusyPort measures a read of a port that holds 15,000
// connections, held by two child processes, as the diagnosis of a failed
// Listen reads it: every socket on the port counted, DefaultKeep of them
// kept, owners looked up for those (src=read); and the netlink and /proc
// reads alone, which count the sockets and keep none (src=netlink,
// src=proc). B/op and allocs/op show what a read keeps.
func BenchmarkBusyPort(b *testing.B) {
	const conns = 15000
	benchRaiseNOFILE(b, 64) // the children raise their own
	local, acceptor, _ := startBusyPort(b, conns)
	at := func(s Socket) bool { return s.Local == local }
	tab, err := Read(Query{Port: local.Port(), Match: at, Owners: true})
	require.NoError(b, err)
	require.Len(b, tab.Sockets, DefaultKeep)
	require.Equal(b, conns+1, tab.Total)
	require.Equal(b, conns, tab.Count(StateEstablished))
	require.Equal(b, StateListen, tab.Sockets[0].State, "the listener is kept first")
	for _, s := range tab.Sockets {
		require.Equal(b, acceptor, s.PID)
	}
	for _, src := range []struct {
		name string
		read func() (int, error)
	}{
		{"read", func() (int, error) {
			tab, err := Read(Query{Port: local.Port(), Match: at, Owners: true})
			return tab.Total, err
		}},
		{"netlink", func() (int, error) {
			c := collector{q: &Query{Match: at, Keep: DefaultKeep}}
			err := readNetlink(local.Port(), time.Now().Add(DefaultTimeout), c.add)
			return c.t.Total, err
		}},
		{"proc", func() (int, error) {
			c := collector{q: &Query{Match: at, Keep: DefaultKeep}}
			err := readProc(local.Port(), time.Now().Add(DefaultTimeout), c.add)
			return c.t.Total, err
		}},
	} {
		b.Run("src="+src.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				// /proc may list a socket twice if the table changes
				// during the read (see parseProcNetTCP).
				n, err := src.read()
				if err != nil || n < conns+1 || n > conns+1 && src.name != "proc" {
					b.Fatalf("%d sockets on %v, %v", n, local, err)
				}
			}
		})
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
	d := loopbackDialer(lo4)
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

// holderEnv tells TestHelperSocketHolder what to hold: "pairs N", "accept
// N" or "dial N ADDR".
const holderEnv = "REUSE_HELPER_HOLD"

// TestHelperSocketHolder is not a test: it is the child process that
// startSocketHolder and startBusyPort run. As told by $REUSE_HELPER_HOLD it
//
//	pairs N       listens, makes N loopback connections to itself, and
//	              prints "ready PORT" (the listener's port);
//	accept N      listens, prints "ready PORT", accepts N connections and
//	              prints "held N";
//	dial N ADDR   connects N times to ADDR and prints "held N";
//
// then holds its sockets, and the descriptors it inherited, until its stdin
// closes. Every socket is on lo4 and has SO_LINGER 0 from the start:
// however the child ends, it leaves no TIME_WAIT entries behind.
func TestHelperSocketHolder(t *testing.T) {
	spec := strings.Fields(os.Getenv(holderEnv))
	if len(spec) < 2 {
		t.Skip("child process only")
	}
	fail := func(format string, args ...any) {
		fmt.Printf(format+"\n", args...)
		os.Exit(1)
	}
	n, err := strconv.Atoi(spec[1])
	if err != nil || n < 0 {
		fail("error: %s=%q", holderEnv, spec)
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		fail("error: getrlimit: %v", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
	need := uint64(n + 64) // accept, dial: one end of each connection
	if spec[0] == "pairs" {
		need += uint64(n)
	}
	if lim.Cur < need {
		fail("skip: RLIMIT_NOFILE is %d, %d needed", lim.Cur, need)
	}
	var conns []*net.TCPConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	hold := func(c *net.TCPConn) {
		conns = append(conns, c)
		if err := c.SetLinger(0); err != nil {
			fail("error: %v", err)
		}
	}
	listen := func(addr string) *net.TCPListener {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		l, err := lc.Listen(t.Context(), "tcp4", addr)
		if err != nil {
			fail("error: %v", err)
		}
		t.Cleanup(func() { l.Close() })
		return l.(*net.TCPListener)
	}
	accept := func(ln *net.TCPListener) {
		s, err := ln.AcceptTCP()
		if err != nil {
			fail("error: accept: %v", err)
		}
		hold(s)
	}
	d := loopbackDialer(lo4)
	dial := func(addr string) {
		c, err := d.Dial("tcp4", addr)
		if err != nil {
			fail("error: %v", err)
		}
		hold(c.(*net.TCPConn))
	}
	switch {
	case spec[0] == "pairs" && len(spec) == 2:
		ln := listen(netip.AddrPortFrom(lo4, 0).String())
		for range n {
			dial(ln.Addr().String())
			accept(ln)
		}
		fmt.Println("ready", ln.Addr().(*net.TCPAddr).Port)
	case spec[0] == "accept" && len(spec) == 2:
		ln := listen(netip.AddrPortFrom(lo4, 0).String())
		fmt.Println("ready", ln.Addr().(*net.TCPAddr).Port)
		for range n {
			accept(ln)
		}
		fmt.Println("held", n)
	case spec[0] == "dial" && len(spec) == 3:
		for range n {
			dial(spec[2])
		}
		fmt.Println("held", n)
	default:
		fail("error: %s=%q", holderEnv, spec)
	}
	io.Copy(io.Discard, os.Stdin) // until the parent closes stdin
}

// holder is a running TestHelperSocketHolder.
type holder struct {
	pid    int
	stdout *bufio.Reader
	stop   func() // closes its stdin and waits for it to exit; idempotent
}

// startHolder starts TestHelperSocketHolder told spec, with the extra
// descriptors files (its 3, 4, ...). When tb ends, the child's stdin is
// closed, and it is killed if it has not exited 10 s later.
func startHolder(tb testing.TB, spec string, files ...*os.File) *holder {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperSocketHolder$")
	// A race-built child would otherwise sleep a second at exit.
	cmd.Env = append(os.Environ(), holderEnv+"="+spec, "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
	cmd.Stderr = os.Stderr
	cmd.ExtraFiles = files
	stdin, err := cmd.StdinPipe()
	require.NoError(tb, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(tb, err)
	require.NoError(tb, cmd.Start())
	stop := sync.OnceFunc(func() {
		stdin.Close()
		// No goroutine waits: one that outlived the test would be
		// counted by the next one.
		kill := time.AfterFunc(10*time.Second, func() { cmd.Process.Kill() })
		cmd.Wait()
		kill.Stop()
	})
	tb.Cleanup(stop)
	// The pipe is an *os.File, which takes a deadline.
	if f, ok := stdout.(*os.File); ok {
		require.NoError(tb, f.SetReadDeadline(time.Now().Add(time.Minute)))
	}
	return &holder{cmd.Process.Pid, bufio.NewReader(stdout), stop}
}

// expect reads the child's next line, which must start with prefix and a
// space, and returns the rest. A child that cannot get the descriptors it
// needs skips the test.
func (h *holder) expect(tb testing.TB, prefix string) string {
	tb.Helper()
	line, err := h.stdout.ReadString('\n')
	require.NoError(tb, err, "the child said %q", line)
	line = strings.TrimSpace(line)
	if reason, ok := strings.CutPrefix(line, "skip: "); ok {
		tb.Skip(reason)
	}
	rest, ok := strings.CutPrefix(line, prefix+" ")
	require.True(tb, ok, "the child said %q, want %q", line, prefix)
	return rest
}

func (h *holder) port(tb testing.TB) uint16 {
	tb.Helper()
	n, err := strconv.ParseUint(h.expect(tb, "ready"), 10, 16)
	require.NoError(tb, err)
	return uint16(n)
}

// startSocketHolder starts a child that holds a listener on lo4 and
// pairs loopback connections to it, and the extra descriptors files, and
// returns its PID and its listener's port once it holds them. The caller
// may close files once this returns. When tb ends, the child exits, and
// leaves no TIME_WAIT entry behind.
func startSocketHolder(tb testing.TB, pairs int, files ...*os.File) (pid int, port uint16) {
	tb.Helper()
	h := startHolder(tb, "pairs "+strconv.Itoa(pairs), files...)
	port = h.port(tb)
	// held are the child's listener and server ends.
	type key struct{ local, remote netip.AddrPort }
	held := map[key]bool{}
	for _, s := range raw(tb, readNetlink, port) {
		if s.Inode != 0 {
			held[key{s.Local, s.Remote}] = true
		}
	}
	tb.Cleanup(func() {
		h.stop()
		// Its sockets closed with SO_LINGER 0, the child's exit left no
		// TIME_WAIT behind. (Other sockets may have used the port number
		// before the child did, and left theirs.)
		var left []Socket
		readNetlink(port, time.Now().Add(DefaultTimeout), func(s Socket) {
			if s.Inode == 0 && held[key{s.Local, s.Remote}] {
				left = append(left, s)
			}
		})
		for _, s := range left {
			tb.Errorf("the child's exit left %v %v -> %v", s.State, s.Local, s.Remote)
		}
	})
	return h.pid, port
}

// startBusyPort starts two children: one that listens on lo4 and
// accepts n connections, the other that makes them, and returns the
// listener's address and the PIDs of both once the connections are
// established. They exit when tb ends.
func startBusyPort(tb testing.TB, n int) (local netip.AddrPort, acceptor, dialer int) {
	tb.Helper()
	a := startHolder(tb, "accept "+strconv.Itoa(n))
	local = netip.AddrPortFrom(lo4, a.port(tb))
	d := startHolder(tb, "dial "+strconv.Itoa(n)+" "+local.String())
	d.expect(tb, "held")
	a.expect(tb, "held")
	return local, a.pid, d.pid
}
