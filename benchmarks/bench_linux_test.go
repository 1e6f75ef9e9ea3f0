// Package benchmarks compares reuse with the stdlib and with the packages a
// user would otherwise pick, in the same run. It is its own module so that
// the library's go.mod never depends on those peers.
package benchmarks

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	reuseport "github.com/libp2p/go-reuseport"
	"github.com/safelisten/reuse"
	"github.com/valyala/tcplisten"
)

// protocols: Go opens listeners as MPTCP by default (go 1.24+ in go.mod)
// and as plain TCP with GODEBUG=multipathtcp=0. tcplisten makes plain TCP
// sockets itself, so it is compared in the tcp rows only.
var protocols = []struct {
	name, godebug string
}{{"mptcp", ""}, {"tcp", "multipathtcp=0"}}

type listenFunc func() (net.Listener, error)

// listenRuns counts BenchmarkListen's runs (one per -count). Every other run
// takes the implementations in reverse order, so that of any two each runs
// first half the time: on this machine the order alone moved a ratio by some
// 4%.
var listenRuns int

// BenchmarkListen: one Listen and Close on 127.0.0.1:0 per op.
func BenchmarkListen(b *testing.B) {
	impls := []struct {
		name   string
		listen listenFunc
		tcp    bool // plain TCP only
	}{
		{"net", func() (net.Listener, error) { return net.Listen("tcp4", "127.0.0.1:0") }, false},
		{"reuse", func() (net.Listener, error) { return reuse.Listen("tcp4", "127.0.0.1:0") }, false},
		{"reuse-rst", func() (net.Listener, error) { return reuse.Listen("tcp4", "127.0.0.1:0", reuse.WithRSTOnClose()) }, false},
		{"libp2p", func() (net.Listener, error) { return reuseport.Listen("tcp4", "127.0.0.1:0") }, false},
		{"tcplisten", func() (net.Listener, error) { return (&tcplisten.Config{}).NewListener("tcp4", "127.0.0.1:0") }, true},
	}
	if listenRuns%2 == 1 {
		slices.Reverse(impls)
	}
	listenRuns++
	for _, p := range protocols {
		for _, impl := range impls {
			if impl.tcp && p.name != "tcp" {
				continue
			}
			b.Run("proto="+p.name+"/impl="+impl.name, func(b *testing.B) {
				b.Setenv("GODEBUG", p.godebug)
				b.ReportAllocs()
				for b.Loop() {
					ln, err := impl.listen()
					if err != nil {
						b.Fatal(err)
					}
					ln.Close()
				}
			})
		}
	}
}

// BenchmarkListenInUse: one Listen that fails because a live listener holds
// the address, with 2,000 descriptors open in the process, as in a server
// that looks for a free port. reuse's error reads the socket table only
// when its message is asked for; impl=reuse-message asks for it.
func BenchmarkListenInUse(b *testing.B) {
	const open = 2000
	for range open / 2 {
		pr, pw, err := os.Pipe()
		if err != nil {
			b.Fatal(err)
		}
		defer pr.Close()
		defer pw.Close()
	}
	held, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer held.Close()
	addr := held.Addr().String()
	for _, impl := range []struct {
		name   string
		listen func() error
	}{
		{"net", func() error { _, err := net.Listen("tcp4", addr); return err }},
		{"reuse", func() error { _, err := reuse.Listen("tcp4", addr); return err }},
		{"reuse-message", func() error {
			_, err := reuse.Listen("tcp4", addr)
			if err != nil {
				_ = err.Error()
			}
			return err
		}},
	} {
		b.Run("impl="+impl.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := impl.listen(); !errors.Is(err, syscall.EADDRINUSE) {
					b.Fatalf("want address in use, got %v", err)
				}
			}
		})
	}
}

// BenchmarkAcceptClose: loopback churn where the server closes first. Each
// op is one connection: dial, accept, server Close, client reads, client
// Close. It reports connections/s and how many TIME_WAIT entries the
// server's port holds afterwards.
func BenchmarkAcceptClose(b *testing.B) {
	impls := []struct {
		name   string
		listen listenFunc
		close  func(*net.TCPConn) error
	}{
		{"net-default", func() (net.Listener, error) { return net.Listen("tcp4", "127.0.0.1:0") }, (*net.TCPConn).Close},
		{"net-setlinger-per-conn", func() (net.Listener, error) { return net.Listen("tcp4", "127.0.0.1:0") },
			func(c *net.TCPConn) error {
				if err := c.SetLinger(0); err != nil {
					return err
				}
				return c.Close()
			}},
		{"reuse-rst", func() (net.Listener, error) { return reuse.Listen("tcp4", "127.0.0.1:0", reuse.WithRSTOnClose()) }, (*net.TCPConn).Close},
	}
	for _, impl := range impls {
		b.Run("impl="+impl.name, func(b *testing.B) {
			ln, err := impl.listen()
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			addr := ln.Addr().String()
			b.ReportAllocs()
			start := time.Now()
			for b.Loop() {
				if err := churn(ln, addr, impl.close); err != nil {
					b.Fatal(err)
				}
			}
			elapsed := time.Since(start)
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "conns/s")
			b.ReportMetric(float64(timeWait(b, ln.Addr().(*net.TCPAddr).Port)), "timewait")
		})
	}
}

func churn(ln net.Listener, addr string, closeServer func(*net.TCPConn) error) error {
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		return err
	}
	if err := closeServer(s.(*net.TCPConn)); err != nil {
		return err
	}
	_, err = c.Read(make([]byte, 1))
	if err == nil {
		return errors.New("the client read data nobody sent")
	}
	return c.Close()
}

// timeWait counts the TIME_WAIT entries on port once the closes have
// settled: no connection of the port is still closing.
func timeWait(b *testing.B, port int) int {
	for deadline := time.Now().Add(2 * time.Second); ; {
		states := tcp4States(b, port)
		closing := states[stateFinWait1] + states[stateFinWait2] + states[stateLastAck] + states[stateClosing]
		if closing == 0 || time.Now().After(deadline) {
			return states[stateTimeWait]
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TCP states as /proc/net/tcp numbers them (include/net/tcp_states.h).
const (
	stateFinWait1 = 4
	stateFinWait2 = 5
	stateTimeWait = 6
	stateLastAck  = 9
	stateClosing  = 11
)

// tcp4States counts the IPv4 TCP sockets on local port port by state, from
// /proc/net/tcp: the library's census is internal to its module.
func tcp4States(b *testing.B, port int) map[int]int {
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	suffix := fmt.Sprintf(":%04X", port)
	m := map[int]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// sl local_address rem_address st ...
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasSuffix(f[1], suffix) {
			continue
		}
		if st, err := strconv.ParseUint(f[3], 16, 8); err == nil {
			m[int(st)]++
		}
	}
	if err := sc.Err(); err != nil {
		b.Fatal(err)
	}
	return m
}

// BenchmarkRebind: Listen and Close on a port that already holds N TIME_WAIT
// entries, as a restarted server does. The kernel scans the port's bind
// bucket, so the cost grows with N for everyone.
func BenchmarkRebind(b *testing.B) {
	for _, n := range []int{0, 1000, 10000} {
		b.Run("timewait="+strconv.Itoa(n), func(b *testing.B) {
			addr := timeWaitPort(b, n)
			_, p, _ := net.SplitHostPort(addr)
			port, _ := strconv.Atoi(p)
			for _, impl := range []struct {
				name   string
				listen func(string) (net.Listener, error)
			}{
				{"net", func(a string) (net.Listener, error) { return net.Listen("tcp4", a) }},
				{"reuse", func(a string) (net.Listener, error) { return reuse.Listen("tcp4", a) }},
			} {
				b.Run("impl="+impl.name, func(b *testing.B) {
					b.ReportAllocs()
					for b.Loop() {
						ln, err := impl.listen(addr)
						if err != nil {
							b.Fatal(err)
						}
						ln.Close()
					}
					b.StopTimer()
					b.ReportMetric(float64(timeWait(b, port)), "timewait")
				})
			}
		})
	}
}

// twPorts caches, per N, a port holding N TIME_WAIT entries, so that
// -count=10 does not make ten times as many: the kernel's table holds
// net.ipv4.tcp_max_tw_buckets of them at most (131072 here).
var twPorts sync.Map // int -> twPort

type twPort struct {
	addr    string
	created time.Time
}

func timeWaitPort(b *testing.B, n int) string {
	if v, ok := twPorts.Load(n); ok {
		p := v.(twPort)
		_, port, _ := net.SplitHostPort(p.addr)
		pn, _ := strconv.Atoi(port)
		// TIME_WAIT lasts 60 s: reuse the port while all N are surely there.
		if time.Since(p.created) < 45*time.Second && timeWait(b, pn) >= n {
			return p.addr
		}
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	addr, port := ln.Addr().String(), ln.Addr().(*net.TCPAddr).Port
	// A client port that comes round again can take over a TIME_WAIT of the
	// same four-tuple (RFC 6191), so make connections until the kernel shows
	// n, within a bound.
	for made := 0; made < 3*n; {
		tw := timeWait(b, port)
		if tw >= n {
			break
		}
		for range n - tw {
			if err := churn(ln, addr, (*net.TCPConn).Close); err != nil {
				b.Fatal(err)
			}
			made++
		}
	}
	if got := timeWait(b, port); got < n {
		b.Fatalf("made TIME_WAIT entries on %s, the kernel shows %d of %d", addr, got, n)
	}
	ln.Close()
	twPorts.Store(n, twPort{addr, time.Now()})
	return addr
}
