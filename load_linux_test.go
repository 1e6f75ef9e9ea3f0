package reuse

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// The load tests' TCP sockets, clients and servers, are on loadHost: the
// thousands of ports they take in a burst are then ports of 127.0.0.2,
// which a later bind of 127.0.0.1 on the same port number by a test running
// in parallel (another package's) does not conflict with. All of 127/8 is
// loopback on Linux. IPv6 has only ::1.
var loadHost = netip.MustParseAddr("127.0.0.2")

// loadDialer returns a dialer whose sockets are bound to the loopback
// address of the listener at addr.
func loadDialer(addr net.Addr) *net.Dialer {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if a, ok := addr.(*net.TCPAddr); ok {
		d.LocalAddr = &net.TCPAddr{IP: a.IP}
	}
	return d
}

// TestLoad_ConcurrentListenAcceptClose: 64 goroutines each listen (with
// a mix of options, on tcp4, tcp6 where there is ::1, and unix), accept a
// few connections, and close, 8 times over, all at once; run it with -race.
// No descriptor and no goroutine is left. Every TCP connection ends with an
// RST, so that no TIME_WAIT is left on a port a later test may be given.
func TestLoad_ConcurrentListenAcceptClose(t *testing.T) {
	const workers, rounds, conns = 64, 8, 4
	h := hosts(t)
	type variant struct {
		network, addr string
		rst           bool // the listener has WithRSTOnClose
		opts          []Option
	}
	lo := hostPort(loadHost.String(), 0)
	variants := []variant{
		{"tcp4", lo, false, nil},
		{"tcp4", lo, true, []Option{WithRSTOnClose()}},
		{"tcp4", lo, true, []Option{WithReusePort(true), WithRSTOnClose()}},
		{"tcp4", lo, false, []Option{WithReuseAddr(false), WithControl(func(string, string, syscall.RawConn) error { return nil })}},
		{"unix", "", false, nil},
	}
	if v6, ok := h["tcp6"]; ok {
		variants = append(variants, variant{"tcp6", hostPort(v6, 0), true, []Option{WithRSTOnClose(), WithExclusiveAddr(true)}})
	}
	dir := t.TempDir()
	ignore := goleak.IgnoreCurrent()
	before := fds(t)

	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for i := range workers {
		v := variants[i%len(variants)]
		if v.network == "unix" {
			v.addr = filepath.Join(dir, fmt.Sprintf("%d.sock", i))
		}
		wg.Go(func() {
			for r := range rounds {
				if err := listenAcceptClose(v.network, v.addr, conns, v.rst, v.opts...); err != nil {
					errs <- fmt.Errorf("worker %d round %d (%s, %d options): %w", i, r, v.network, len(v.opts), err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	require.Equal(t, before, fds(t), "open fds before and after")
	goleak.VerifyNone(t, ignore)
}

// listenAcceptClose listens, accepts n connections and closes each with an
// RST (the server's, when rst says the listener has WithRSTOnClose, else
// Abort on the client), then closes the listener. It returns its first
// error rather than failing a test from a goroutine.
func listenAcceptClose(network, addr string, n int, rst bool, opts ...Option) (err error) {
	ln, err := Listen(network, addr, opts...)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, ln.Close()) }()
	d := loadDialer(ln.Addr())
	for range n {
		c, err := d.Dial(ln.Addr().Network(), ln.Addr().String())
		if err != nil {
			return fmt.Errorf("dial: %w", err)
		}
		if _, err := c.Write([]byte{'x'}); err != nil {
			c.Close()
			return fmt.Errorf("write: %w", err)
		}
		if d, ok := ln.(interface{ SetDeadline(time.Time) error }); ok {
			d.SetDeadline(time.Now().Add(5 * time.Second))
		}
		s, err := ln.Accept()
		if err != nil {
			c.Close()
			return fmt.Errorf("accept: %w", err)
		}
		s.SetDeadline(time.Now().Add(5 * time.Second))
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(s, make([]byte, 1)); err != nil {
			s.Close()
			c.Close()
			return fmt.Errorf("server read: %w", err)
		}
		_, isTCP := c.(*net.TCPConn)
		switch {
		case !isTCP:
			// unix: no TIME_WAIT to avoid.
			err = errors.Join(c.Close(), s.Close())
		case rst:
			err = s.Close()
			if _, rerr := c.Read(make([]byte, 1)); !errors.Is(rerr, syscall.ECONNRESET) {
				err = errors.Join(err, fmt.Errorf("client read after the server's RST close: %v", rerr))
			}
			err = errors.Join(err, c.Close())
		default:
			err = Abort(c)
			if _, rerr := s.Read(make([]byte, 1)); !errors.Is(rerr, syscall.ECONNRESET) {
				err = errors.Join(err, fmt.Errorf("server read after the client's abort: %v", rerr))
			}
			err = errors.Join(err, s.Close())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// TestSoak_ServerClosesFirstWithRSTOnClose: 50,000 connections that the
// server closes first, on one WithRSTOnClose listener, leave no TIME_WAIT
// on the server's port, no descriptor and no goroutine. Every client reads
// ECONNRESET, or has its connect reset: each close was an RST.
func TestSoak_ServerClosesFirstWithRSTOnClose(t *testing.T) {
	if testing.Short() {
		t.Skip("soak: 50,000 connections")
	}
	const total, clients = 50_000, 4
	ignore := goleak.IgnoreCurrent()
	goroutines := runtime.NumGoroutine()
	before := fds(t)

	ln, err := listenTCP(t, "tcp4", hostPort(loadHost.String(), 0), mptcpOK(), WithRSTOnClose())
	require.NoError(t, err)
	p := port(ln.Addr())
	start := time.Now()

	var wg sync.WaitGroup
	var next, resets, dialResets atomic.Int64
	errs := make(chan error, clients+1)
	for range clients {
		wg.Go(func() {
			buf := make([]byte, 1)
			d := loadDialer(ln.Addr())
			for next.Add(1) <= total {
				c, err := d.Dial("tcp4", ln.Addr().String())
				if errors.Is(err, syscall.ECONNRESET) {
					// The RST came before connect finished: Go reads it from
					// SO_ERROR. It was still a connection the server closed.
					dialResets.Add(1)
					continue
				}
				if err != nil {
					errs <- fmt.Errorf("dial: %w", err)
					return
				}
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				// The server closes first: wait for its RST before closing.
				_, err = c.Read(buf)
				c.Close()
				if !errors.Is(err, syscall.ECONNRESET) {
					errs <- fmt.Errorf("client read: want ECONNRESET, got %v", err)
					return
				}
				resets.Add(1)
			}
		})
	}
	accepted := 0
	for ; accepted < total; accepted++ {
		require.NoError(t, ln.SetDeadline(time.Now().Add(10*time.Second)))
		s, err := ln.Accept()
		if err != nil {
			errs <- fmt.Errorf("accept %d: %w", accepted, err)
			break
		}
		if err := s.Close(); err != nil {
			errs <- fmt.Errorf("close: %w", err)
			break
		}
	}
	wg.Wait()
	took := time.Since(start)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	require.Equal(t, total, accepted)
	assert.Equal(t, int64(total), resets.Load()+dialResets.Load(), "every client saw an RST")
	t.Logf("%d server-first closes in %v: %.0f connections/s; %d clients reset during connect",
		total, took.Round(time.Millisecond), total/took.Seconds(), dialResets.Load())

	// Only the listener is left on its address: other sockets may use
	// the port number on other addresses.
	local := netip.AddrPortFrom(loadHost, uint16(p))
	var socks []Socket
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		all, err := Sockets(p)
		require.NoError(t, err)
		socks = slices.DeleteFunc(all, func(s Socket) bool { return s.Local != local })
		if len(socks) == 1 || time.Now().After(deadline) {
			break
		}
	}
	require.Len(t, socks, 1, "only the listener is left on %v: %v", local, socks)
	require.Equal(t, StateListen, socks[0].State)

	require.NoError(t, ln.Close())
	assert.Equal(t, before, fds(t), "open fds before and after")
	// No goroutine was added, by identity: a count alone would be thrown
	// by goroutines of earlier tests that end during the soak.
	goleak.VerifyNone(t, ignore) // waits for the clients' goroutines to end
	assert.LessOrEqual(t, runtime.NumGoroutine(), goroutines, "goroutines before and after")
}
