package loadgen

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// source keeps the clients' ephemeral ports off 127.0.0.1, where other
// tests listen.
const source = "127.0.0.2"

// server is a net/http server on loopback that counts what it saw.
type server struct {
	addr     string
	conns    atomic.Int64 // connections accepted
	requests atomic.Int64 // requests handled
	most     atomic.Int64 // the most requests one connection carried
	mu       sync.Mutex
	remotes  map[string]bool // remote IPs seen
}

// serveHTTP serves h on network/addr until the test ends; tweak, if not
// nil, adjusts the server before it starts.
func serveHTTP(t *testing.T, network, addr string, h http.HandlerFunc, tweak func(*http.Server)) *server {
	t.Helper()
	ln, err := net.Listen(network, addr)
	require.NoError(t, err)
	s := &server{addr: ln.Addr().String(), remotes: map[string]bool{}}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.requests.Add(1)
			n := r.Context().Value(perConn{}).(*atomic.Int64).Add(1)
			for m := s.most.Load(); n > m && !s.most.CompareAndSwap(m, n); m = s.most.Load() {
			}
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			s.mu.Lock()
			s.remotes[host] = true
			s.mu.Unlock()
			h(w, r)
		}),
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
			return context.WithValue(ctx, perConn{}, new(atomic.Int64))
		},
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				s.conns.Add(1)
			}
		},
	}
	if tweak != nil {
		tweak(srv)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		assert.ErrorIs(t, <-done, http.ErrServerClosed)
	})
	return s
}

type perConn struct{}

func ok(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) }

// rawServer accepts TCP connections on 127.0.0.1 and hands each to handle,
// in its own goroutine, until the test ends; then it closes the listener and
// every connection, and waits for the handlers.
func rawServer(t *testing.T, handle func(c net.Conn, done <-chan struct{})) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				handle(c, done)
			})
		}
	})
	t.Cleanup(func() {
		close(done)
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// readRequest reads one request head from c.
func readRequest(c net.Conn, br *bufio.Reader) error {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		if line == "\r\n" {
			return nil
		}
	}
}

func start(t *testing.T, c Config) *Load {
	t.Helper()
	l, err := Start(t.Context(), c)
	require.NoError(t, err)
	t.Cleanup(func() { l.Stop() })
	return l
}

func waitOK(t *testing.T, l *Load, n int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	require.NoError(t, l.WaitOK(ctx, n))
}

// waitFor polls cond every few ms until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(2 * time.Millisecond) {
		require.True(t, time.Now().Before(deadline), "waited 10 s for %s", what)
	}
}

func fds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	return len(ents)
}

// TestKeepAlive_OneConnectionPerClient: each client sends every request on
// one connection, and every OK was a request the server handled.
func TestKeepAlive_OneConnectionPerClient(t *testing.T) {
	const clients = 4
	s := serveHTTP(t, "tcp4", "127.0.0.1:0", ok, nil)
	l := start(t, Config{Network: "tcp4", Addr: s.addr, Source: source, Mode: KeepAlive, Clients: clients})
	waitFor(t, "every client to connect", func() bool { return l.Snapshot().Conns == clients })
	waitOK(t, l, 400)
	r := l.Stop()
	assert.Zero(t, r.Failures(), "%v", r)
	assert.Equal(t, int64(clients), r.Conns, "%v", r)
	assert.Equal(t, int64(clients), s.conns.Load(), "connections the server accepted")
	assert.Greater(t, s.most.Load(), int64(1), "the most requests one connection carried")
	assert.Zero(t, r.Closed)
	// A request that Stop interrupted may have been handled, not counted.
	assert.GreaterOrEqual(t, s.requests.Load(), r.OK)
	assert.LessOrEqual(t, s.requests.Load(), r.OK+clients)
}

// TestPerRequest_OneRequestPerConnection: each request has a connection of
// its own, and asks the server to close it, so none is "told to close".
func TestPerRequest_OneRequestPerConnection(t *testing.T) {
	const clients = 4
	s := serveHTTP(t, "tcp4", "127.0.0.1:0", ok, nil)
	l := start(t, Config{Network: "tcp4", Addr: s.addr, Source: source, Mode: PerRequest, Clients: clients})
	waitOK(t, l, 200)
	r := l.Stop()
	assert.Zero(t, r.Failures(), "%v", r)
	assert.Zero(t, r.Closed)
	assert.GreaterOrEqual(t, r.Conns, r.OK)
	assert.LessOrEqual(t, r.Conns, r.OK+clients)
	assert.Equal(t, int64(1), s.most.Load(), "the most requests one connection carried")
}

// TestConnectionClose_IsNotAFailure: a keep-alive client told
// "Connection: close" reconnects, and no request fails.
func TestConnectionClose_IsNotAFailure(t *testing.T) {
	var n atomic.Int64
	s := serveHTTP(t, "tcp4", "127.0.0.1:0", func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%3 == 0 {
			w.Header().Set("Connection", "close")
		}
		ok(w, r)
	}, nil)
	l := start(t, Config{Network: "tcp4", Addr: s.addr, Source: source, Mode: KeepAlive, Clients: 4})
	waitOK(t, l, 300)
	r := l.Stop()
	assert.Zero(t, r.Failures(), "%v", r)
	assert.Greater(t, r.Closed, int64(50), "%v", r)
	// Each close made the client connect again; Stop may interrupt a
	// reconnect before its request.
	assert.GreaterOrEqual(t, r.Conns, r.Closed)
	assert.LessOrEqual(t, r.Conns, r.Closed+4+4)
}

// TestChunkedAndStatus: a chunked body is read in full, and a non-2xx
// status is a Status failure that keeps the connection.
func TestChunkedAndStatus(t *testing.T) {
	var n atomic.Int64
	s := serveHTTP(t, "tcp4", "127.0.0.1:0", func(w http.ResponseWriter, _ *http.Request) {
		if n.Add(1)%2 == 0 {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("part one "))
		w.(http.Flusher).Flush() // no Content-Length now: chunked
		w.Write([]byte("part two"))
	}, nil)
	l := start(t, Config{Network: "tcp4", Addr: s.addr, Source: source, Clients: 2})
	waitOK(t, l, 100)
	r := l.Stop()
	assert.Equal(t, []Kind{Status}, keys(r.Failed), "%v", r)
	assert.InDelta(t, r.OK, r.Failed[Status], 3)
	assert.Contains(t, r.First[Status], "503")
	assert.Equal(t, int64(2), r.Conns, "a 503 does not close the connection")
}

func keys(m map[Kind]int64) []Kind {
	var ks []Kind
	for _, k := range kinds {
		if m[k] > 0 {
			ks = append(ks, k)
		}
	}
	return ks
}

// TestFailureKinds: each way a server fails a request is counted as its own
// kind, and as nothing else.
func TestFailureKinds(t *testing.T) {
	for _, tc := range []struct {
		kind    Kind
		first   string // part of the first error's message
		timeout time.Duration
		pause   time.Duration
		addr    func(t *testing.T) string
	}{
		{kind: Refused, first: "connection refused", addr: func(t *testing.T) string {
			// A socket bound but not listening: connects to it are refused,
			// and no other test can take its port meanwhile.
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			require.NoError(t, err)
			t.Cleanup(func() { unix.Close(fd) })
			require.NoError(t, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
			sa, err := unix.Getsockname(fd)
			require.NoError(t, err)
			return fmt.Sprintf("127.0.0.1:%d", sa.(*unix.SockaddrInet4).Port)
		}},
		{kind: Reset, first: "connection reset by peer", addr: func(t *testing.T) string {
			// Read the request, so the client's write is done, then abort.
			return rawServer(t, func(c net.Conn, _ <-chan struct{}) {
				if readRequest(c, bufio.NewReader(c)) == nil {
					c.(*net.TCPConn).SetLinger(0)
				}
			})
		}},
		{kind: EOF, first: "EOF", pause: 200 * time.Millisecond, addr: func(t *testing.T) string {
			// The server closes a keep-alive connection idle for 5 ms; the
			// client sends on it 200 ms after its last response.
			return serveHTTP(t, "tcp4", "127.0.0.1:0", ok, func(s *http.Server) { s.IdleTimeout = 5 * time.Millisecond }).addr
		}},
		{kind: Timeout, first: "i/o timeout", timeout: 50 * time.Millisecond, addr: func(t *testing.T) string {
			return rawServer(t, func(c net.Conn, done <-chan struct{}) { <-done })
		}},
		{kind: Status, first: `"500 Internal Server Error"`, addr: func(t *testing.T) string {
			return serveHTTP(t, "tcp4", "127.0.0.1:0", func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(http.StatusInternalServerError)
			}, nil).addr
		}},
		{kind: Other, first: "malformed response", addr: func(t *testing.T) string {
			return rawServer(t, func(c net.Conn, _ <-chan struct{}) {
				if readRequest(c, bufio.NewReader(c)) == nil {
					c.Write([]byte("ICY 200 OK\r\n\r\n"))
				}
			})
		}},
	} {
		t.Run(string(tc.kind), func(t *testing.T) {
			l := start(t, Config{Network: "tcp4", Addr: tc.addr(t), Source: source, Clients: 2, Timeout: tc.timeout, Pause: tc.pause})
			waitFor(t, "3 failures of kind "+string(tc.kind), func() bool { return l.Snapshot().Failed[tc.kind] >= 3 })
			r := l.Stop()
			assert.Equal(t, []Kind{tc.kind}, keys(r.Failed), "%v", r)
			assert.Contains(t, r.First[tc.kind], tc.first)
			if tc.kind != EOF {
				assert.Zero(t, r.OK, "%v", r)
			}
		})
	}
}

// TestStop_LeavesNoGoroutineNoFD: Stop interrupts requests that are
// waiting on a server, counts none of them, and leaves no goroutine and no
// descriptor.
func TestStop_LeavesNoGoroutineNoFD(t *testing.T) {
	var waiting atomic.Int64
	s := serveHTTP(t, "tcp4", "127.0.0.1:0", func(w http.ResponseWriter, r *http.Request) {
		waiting.Add(1)
		<-r.Context().Done() // until the client goes away
		waiting.Add(-1)
	}, nil)
	ignore := goleak.IgnoreCurrent()
	before := fds(t)
	l, err := Start(t.Context(), Config{Network: "tcp4", Addr: s.addr, Source: source, Clients: 8, Timeout: time.Hour})
	require.NoError(t, err)
	waitFor(t, "8 requests waiting", func() bool { return waiting.Load() == 8 })
	r := l.Stop()
	assert.Equal(t, Result{Conns: 8, Failed: map[Kind]int64{}, First: map[Kind]string{}}, r)
	assert.Equal(t, r, l.Stop(), "a second Stop")
	waitFor(t, "the server to see the clients go", func() bool { return waiting.Load() == 0 })
	waitFor(t, "the fd count of before the load", func() bool { return fds(t) == before })
	goleak.VerifyNone(t, ignore, goleak.IgnoreAnyFunction("net/http.(*conn).serve"))
}

// TestStart_ContextEndsTheLoad: when Start's ctx ends, the clients stop; Stop
// then only waits.
func TestStart_ContextEndsTheLoad(t *testing.T) {
	s := serveHTTP(t, "tcp4", "127.0.0.1:0", ok, nil)
	ctx, cancel := context.WithCancel(t.Context())
	l, err := Start(ctx, Config{Network: "tcp4", Addr: s.addr, Source: source, Clients: 2})
	require.NoError(t, err)
	waitOK(t, l, 10)
	cancel()
	r := l.Stop()
	assert.Zero(t, r.Failures(), "%v", r)
	got := s.requests.Load()
	assert.LessOrEqual(t, got, r.OK+2)
}

// TestSource_BindsClientSockets: with Source set, the server sees every
// request come from that address.
func TestSource_BindsClientSockets(t *testing.T) {
	s := serveHTTP(t, "tcp4", "127.0.0.1:0", ok, nil)
	for _, mode := range []Mode{KeepAlive, PerRequest} {
		l := start(t, Config{Network: "tcp4", Addr: s.addr, Source: source, Mode: mode, Clients: 2})
		waitOK(t, l, 50)
		r := l.Stop()
		assert.Zero(t, r.Failures(), "%v: %v", mode, r)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	assert.Equal(t, map[string]bool{source: true}, s.remotes)
}

// TestDial_MakesEveryConnection: with Dial set, every connection is one
// that Dial made.
func TestDial_MakesEveryConnection(t *testing.T) {
	s := serveHTTP(t, "tcp4", "127.0.0.1:0", ok, nil)
	var dials atomic.Int64
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
		c, err := d.DialContext(ctx, network, addr)
		if err == nil {
			dials.Add(1)
		}
		return c, err
	}
	l := start(t, Config{Network: "tcp4", Addr: s.addr, Dial: dial, Mode: PerRequest, Clients: 2})
	waitOK(t, l, 50)
	r := l.Stop()
	assert.Zero(t, r.Failures(), "%v", r)
	assert.Equal(t, r.Conns, dials.Load(), "connections made, dials")
}

// TestUnixSocket: the load runs on a unix socket path too.
func TestUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "http.sock")
	s := serveHTTP(t, "unix", path, ok, nil)
	for _, mode := range []Mode{PerRequest, KeepAlive} {
		l := start(t, Config{Network: "unix", Addr: path, Mode: mode, Clients: 2})
		if mode == KeepAlive {
			waitFor(t, "both clients to connect", func() bool { return l.Snapshot().Conns == 2 })
		}
		waitOK(t, l, 100)
		r := l.Stop()
		assert.Zero(t, r.Failures(), "%v: %v", mode, r)
		if mode == PerRequest {
			assert.Equal(t, int64(1), s.most.Load(), "the most requests one connection carried")
		} else {
			assert.Equal(t, int64(2), r.Conns)
			assert.Greater(t, s.most.Load(), int64(1), "the most requests one connection carried")
		}
	}
	// And a path with no server is an error the client can act on.
	l := start(t, Config{Network: "unix", Addr: path + ".none"})
	waitFor(t, "a failure", func() bool { return l.Snapshot().Failures() > 0 })
	r := l.Stop()
	assert.Equal(t, []Kind{Other}, keys(r.Failed))
	assert.Contains(t, r.First[Other], "no such file")
}
