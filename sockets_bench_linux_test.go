package reuse

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// BenchmarkSockets measures Sockets on a port with a listener and a few
// connections while 10,000 other sockets (5,000 loopback connection pairs on
// another port) fill the kernel's table, and compares it with `ss -tanH
// '( sport = :P )'`, which does the same netlink query in C plus an exec.
//
// Each iteration runs both, timed apart, so they see the same table:
//
//	ns/op          Sockets(P), with owner PIDs (a /proc/PID/fd scan)
//	netlink-ns/op  the netlink query alone, without owners
//	ss-ns/op       ss, exec included, without owners
//	ss-p-ns/op     ss -p, which finds owners the same way Sockets does
//	ratio-vs-ss    ns/op / ss-ns/op
//	ratio-vs-ss-p  ns/op / ss-p-ns/op
//	reuse-allocs/op, reuse-B/op  of Sockets alone
//
// The 10,000 sockets are this process's own, so the owner scan reads 10,000
// fd links before it reaches the target's: its worst case.
func BenchmarkSockets(b *testing.B) {
	const (
		pairs  = 5000 // 10,000 sockets on other ports
		target = 3    // connections to the measured port
		slack  = 64   // stdio, runtime, netlink and ss pipes
	)
	var lim unix.Rlimit
	require.NoError(b, unix.Getrlimit(unix.RLIMIT_NOFILE, &lim))
	need := uint64(2*pairs + 2*target + 2 + slack)
	if lim.Cur < need && lim.Cur < lim.Max {
		raised := lim
		raised.Cur = lim.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &raised); err == nil {
			orig := lim
			b.Cleanup(func() { unix.Setrlimit(unix.RLIMIT_NOFILE, &orig) })
			lim = raised
		}
	}
	if lim.Cur < need {
		b.Skipf("RLIMIT_NOFILE is %d, %d needed", lim.Cur, need)
	}

	loopback := netip.MustParseAddr("127.0.0.1")
	others, _ := censusListen(b, "tcp4", loopback)
	benchConnect(b, others, pairs)
	ln, local := censusListen(b, "tcp4", loopback)
	benchConnect(b, ln, target)
	port := int(local.Port())

	socks, err := Sockets(port)
	require.NoError(b, err)
	require.Len(b, censusAt(socks, local), 1+target, censusFormat(socks))
	ss, _ := exec.LookPath("ss")
	filter := fmt.Sprintf("( sport = :%d )", port)
	if ss != "" {
		out, err := exec.Command(ss, "-tanH", filter).Output()
		require.NoError(b, err)
		require.Equal(b, len(socks), strings.Count(string(out), "\n"), "ss sees the same sockets:\n%s", out)
	}

	b.Run(fmt.Sprintf("sockets=%d", 2*pairs), func(b *testing.B) {
		var reuseT, netlinkT, ssT, ssPT time.Duration
		var mallocs, bytes uint64
		var ms runtime.MemStats
		n := 0
		for b.Loop() {
			runtime.ReadMemStats(&ms)
			m0, b0 := ms.Mallocs, ms.TotalAlloc
			t0 := time.Now()
			socks, err := Sockets(port)
			reuseT += time.Since(t0)
			runtime.ReadMemStats(&ms)
			mallocs, bytes = mallocs+ms.Mallocs-m0, bytes+ms.TotalAlloc-b0
			if err != nil || len(socks) < 1+target {
				b.Fatalf("Sockets(%d) = %d sockets, %v", port, len(socks), err)
			}

			t0 = time.Now()
			_, err = socketsNetlink(uint16(port))
			netlinkT += time.Since(t0)
			if err != nil {
				b.Fatal(err)
			}

			if ss != "" {
				t0 = time.Now()
				err := exec.Command(ss, "-tanH", filter).Run()
				ssT += time.Since(t0)
				if err != nil {
					b.Fatal(err)
				}
				t0 = time.Now()
				err = exec.Command(ss, "-tanpH", filter).Run()
				ssPT += time.Since(t0)
				if err != nil {
					b.Fatal(err)
				}
			}
			n++
		}
		perOp := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(n) }
		b.ReportMetric(perOp(reuseT), "ns/op")
		b.ReportMetric(perOp(netlinkT), "netlink-ns/op")
		b.ReportMetric(float64(mallocs)/float64(n), "reuse-allocs/op")
		b.ReportMetric(float64(bytes)/float64(n), "reuse-B/op")
		if ss != "" {
			b.ReportMetric(perOp(ssT), "ss-ns/op")
			b.ReportMetric(perOp(ssPT), "ss-p-ns/op")
			b.ReportMetric(float64(reuseT)/float64(ssT), "ratio-vs-ss")
			b.ReportMetric(float64(reuseT)/float64(ssPT), "ratio-vs-ss-p")
		}
	})
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
