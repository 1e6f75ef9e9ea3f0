package drain_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/safelisten/reuse/drain"
	"github.com/safelisten/reuse/internal/loadgen"
)

// source keeps the load's ephemeral ports off 127.0.0.1, where other tests
// listen.
const source = "127.0.0.2"

// gen is one generation of a server: an http.Server on its own descriptor
// of a listening socket, as the old and the new process have after an
// Upgrade.
type gen struct {
	srv      *http.Server
	d        *drain.Drainer // nil: served without a Drainer
	raw      *net.TCPListener
	served   chan error
	requests atomic.Int64
}

// serveGen serves ln, through a Drainer unless plain.
func serveGen(t *testing.T, ln *net.TCPListener, plain bool) *gen {
	t.Helper()
	g := &gen{raw: ln, served: make(chan error, 1)}
	g.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		g.requests.Add(1)
		w.Write([]byte("ok"))
	})}
	var sl net.Listener = ln
	if !plain {
		g.d = drain.New(g.srv)
		sl = g.d.Listener(ln)
	}
	go func() { g.served <- g.srv.Serve(sl) }()
	t.Cleanup(func() { g.srv.Close() })
	return g
}

// stopped waits for Serve to return and returns its error.
func (g *gen) stopped(t *testing.T) error {
	t.Helper()
	select {
	case err := <-g.served:
		g.served <- err
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return within 10 s")
		return nil
	}
}

var okHandler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) })

// serveDrained makes srv's Drainer and serves srv through it on ln until
// the test ends; Serve's error arrives on the channel.
func serveDrained(t *testing.T, srv *http.Server, ln net.Listener) (*drain.Drainer, <-chan error) {
	t.Helper()
	d := drain.New(srv)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(d.Listener(ln)) }()
	t.Cleanup(func() { srv.Close() })
	return d, served
}

// dup returns a listener on a new descriptor of ln's socket, made without
// File, which would switch ln to blocking mode.
func dup(t *testing.T, ln *net.TCPListener) *net.TCPListener {
	t.Helper()
	rc, err := ln.SyscallConn()
	require.NoError(t, err)
	var fd int
	var derr error
	require.NoError(t, rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }))
	require.NoError(t, derr)
	f := os.NewFile(uintptr(fd), "listener")
	defer f.Close()
	l, err := net.FileListener(f)
	require.NoError(t, err)
	return l.(*net.TCPListener)
}

func listen(t *testing.T) *net.TCPListener {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	return ln.(*net.TCPListener)
}

func fds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	return len(ents)
}

// waitFor polls cond every few ms until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(2 * time.Millisecond) {
		require.True(t, time.Now().Before(deadline), "waited 10 s for %s", what)
	}
}

func waitOK(t *testing.T, l *loadgen.Load, n int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	require.NoError(t, l.WaitOK(ctx, n))
}

const (
	clients = 32
	grace   = 500 * time.Millisecond
)

// handoffs hands the socket on from generation to generation under load
// from clients that never retry, stopping each old generation with stop:
// rounds times, then on until the load has seen a failure, up to atMost
// times in all. It returns the load's result and the number of handoffs.
func handoffs(t *testing.T, mode loadgen.Mode, rounds, atMost int, plain bool, stop func(*gen) error) (loadgen.Result, int) {
	before := fds(t)
	g := serveGen(t, listen(t), plain)
	load, err := loadgen.Start(t.Context(), loadgen.Config{
		Network: "tcp4", Addr: g.raw.Addr().String(), Source: source, Mode: mode, Clients: clients,
	})
	require.NoError(t, err)
	defer load.Stop()
	waitOK(t, load, 200)
	round := 0
	for ; round < rounds || round < atMost && load.Snapshot().Failures() == 0; round++ {
		next := serveGen(t, dup(t, g.raw), plain)
		if mode == loadgen.PerRequest {
			// Both accept from the one queue, as the old and new process do.
			waitFor(t, "the new generation to serve", func() bool { return next.requests.Load() > 0 })
		}
		closed := load.Snapshot().Closed
		require.NoError(t, stop(g), "round %d", round)
		require.ErrorIs(t, g.stopped(t), http.ErrServerClosed, "round %d", round)
		assert.Positive(t, g.requests.Load(), "requests the old generation served")
		if mode == loadgen.KeepAlive && !plain {
			// A client counts "Connection: close" once it has read the
			// response, which can be after the server has closed.
			waitFor(t, fmt.Sprintf("keep-alive clients told to move in round %d", round), func() bool { return load.Snapshot().Closed > closed })
		}
		// The new generation goes on.
		waitOK(t, load, load.Snapshot().OK+100)
		g = next
	}
	r := load.Stop()
	require.NoError(t, g.srv.Close())
	waitFor(t, "the fd count of before the first generation", func() bool { return fds(t) == before })
	return r, round
}

// TestDrain_SameSocketUnderLoad_NoFailedRequest: ten times over, a new
// server starts on a duplicate of the listening socket and the old one
// drains, under load from 32 clients that keep sending and never retry.
// Not one request fails; each old Serve returns http.ErrServerClosed and the
// new server goes on.
func TestDrain_SameSocketUnderLoad_NoFailedRequest(t *testing.T) {
	for _, mode := range []loadgen.Mode{loadgen.KeepAlive, loadgen.PerRequest} {
		t.Run(mode.String(), func(t *testing.T) {
			const rounds = 10
			r, _ := handoffs(t, mode, rounds, rounds, false, func(g *gen) error {
				ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
				defer cancel()
				return g.d.Drain(ctx, grace)
			})
			t.Logf("Drain, %s, %d handoffs: %v", mode, rounds, r)
			assert.Zero(t, r.Failures(), "%v", r)
		})
	}
}

// TestShutdown_SameSocketUnderLoad_FailsRequests: the same harness with
// plain http.Server.Shutdown sees failed requests, so it can see them: ten
// handoffs, and more until one fails, at most 50.
func TestShutdown_SameSocketUnderLoad_FailsRequests(t *testing.T) {
	for _, mode := range []loadgen.Mode{loadgen.KeepAlive, loadgen.PerRequest} {
		t.Run(mode.String(), func(t *testing.T) {
			r, n := handoffs(t, mode, 10, 50, true, func(g *gen) error {
				ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
				defer cancel()
				return g.srv.Shutdown(ctx)
			})
			t.Logf("Shutdown, %s, %d handoffs: %v", mode, n, r)
			assert.Positive(t, r.Failures(), "%d handoffs with Shutdown, and no failure seen: %v", n, r)
		})
	}
}

// client is a raw HTTP/1.1 keep-alive client for one connection.
type client struct {
	c  net.Conn
	br *bufio.Reader
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
	c, err := d.Dial("tcp4", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	return &client{c: c, br: bufio.NewReader(c)}
}

// send writes a GET for path.
func (c *client) send(t *testing.T, path string) {
	t.Helper()
	_, err := fmt.Fprintf(c.c, "GET %s HTTP/1.1\r\nHost: test\r\n\r\n", path)
	require.NoError(t, err)
}

// head reads a response's status line and headers.
func (c *client) head(t *testing.T) *http.Response {
	t.Helper()
	resp, err := http.ReadResponse(c.br, nil)
	require.NoError(t, err)
	return resp
}

// get sends a GET and reads the whole response.
func (c *client) get(t *testing.T, path string) *http.Response {
	t.Helper()
	c.send(t, path)
	resp := c.head(t)
	_, err := io.Copy(io.Discard, resp.Body)
	require.NoError(t, err)
	return resp
}

// readEOF reads until the connection ends and returns the error.
func (c *client) readEOF() error {
	_, err := c.br.ReadByte()
	return err
}

// refused reports whether a connect to addr is refused: the only listener
// of its socket is closed, so the drain has begun.
func refused(addr string) bool {
	c, err := net.DialTimeout("tcp4", addr, time.Second)
	if err == nil {
		c.Close()
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// connTimes records when each connection last went idle and when it
// closed, through the server's own ConnState hook, which the Drainer calls
// before it acts.
type connTimes struct {
	mu           sync.Mutex
	idle, closed map[string]time.Time // by the client's address
}

func (ct *connTimes) hook(c net.Conn, s http.ConnState) {
	now := time.Now()
	ct.mu.Lock()
	defer ct.mu.Unlock()
	switch s {
	case http.StateIdle:
		ct.idle[c.RemoteAddr().String()] = now
	case http.StateClosed:
		ct.closed[c.RemoteAddr().String()] = now
	}
}

func (ct *connTimes) get(c *client) (idle, closed time.Time) {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	a := c.c.LocalAddr().String()
	return ct.idle[a], ct.closed[a]
}

// TestDrain_IdleConnectionClosedAfterGraceNotBefore: during a drain, a
// keep-alive connection that stays idle is closed once it has been idle for
// the grace, not before, and its client reads a clean EOF; one whose client
// sends within the grace gets its response, with "Connection: close".
func TestDrain_IdleConnectionClosedAfterGraceNotBefore(t *testing.T) {
	const grace = time.Second
	ct := &connTimes{idle: map[string]time.Time{}, closed: map[string]time.Time{}}
	srv := &http.Server{
		Handler:   okHandler,
		ConnState: ct.hook,
	}
	ln := listen(t)
	addr := ln.Addr().String()
	d, served := serveDrained(t, srv, ln)

	quiet, busy := dial(t, addr), dial(t, addr)
	assert.False(t, quiet.get(t, "/").Close)
	assert.False(t, busy.get(t, "/").Close)

	drained := make(chan error, 1)
	go func() { drained <- d.Drain(t.Context(), grace) }()
	waitFor(t, "the drain to close the listener", func() bool { return refused(addr) })

	resp := busy.get(t, "/")
	assert.True(t, resp.Close, "a response during the drain says Connection: close")
	assert.ErrorIs(t, busy.readEOF(), io.EOF, "the server closes after that response")

	err := quiet.readEOF()
	assert.ErrorIs(t, err, io.EOF, "the idle connection is closed with a FIN")
	waitFor(t, "the hook to see the idle connection close", func() bool { _, closed := ct.get(quiet); return !closed.IsZero() })
	idle, closed := ct.get(quiet)
	require.False(t, idle.IsZero(), "the hook saw the connection go idle")
	assert.GreaterOrEqual(t, closed.Sub(idle), grace, "idle for %v before it was closed", closed.Sub(idle))
	assert.Less(t, closed.Sub(idle), grace+5*time.Second, "closed long after the grace")

	assert.NoError(t, <-drained)
	assert.ErrorIs(t, <-served, http.ErrServerClosed)
}

// TestDrain_ResponseStartedBeforeDrain: a response whose headers went out
// before the drain began has no "Connection: close"; Drain waits for its
// handler, and the connection carries one more request, whose response
// says Connection: close.
func TestDrain_ResponseStartedBeforeDrain(t *testing.T) {
	release := make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			w.Write([]byte("head "))
			w.(http.Flusher).Flush()
			<-release
		}
		w.Write([]byte("ok"))
	})}
	ln := listen(t)
	addr := ln.Addr().String()
	d, served := serveDrained(t, srv, ln)

	c := dial(t, addr)
	c.send(t, "/slow")
	resp := c.head(t)
	assert.False(t, resp.Close)

	drained := make(chan error, 1)
	go func() { drained <- d.Drain(t.Context(), time.Minute) }()
	waitFor(t, "the drain to close the listener", func() bool { return refused(addr) })
	select {
	case err := <-drained:
		t.Fatalf("Drain returned %v while a handler ran", err)
	default:
	}
	close(release)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, "head ok", string(body))

	resp = c.get(t, "/")
	assert.True(t, resp.Close, "the next response says Connection: close")
	assert.ErrorIs(t, c.readEOF(), io.EOF)
	assert.NoError(t, <-drained)
	assert.ErrorIs(t, <-served, http.ErrServerClosed)
}

// gatedListener holds each connection it accepts until gate is closed, and
// tells closing when it is closed.
type gatedListener struct {
	net.Listener
	got, gate, closing chan struct{}
	once               sync.Once
}

func (l *gatedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.got <- struct{}{}
		<-l.gate
	}
	return c, err
}

func (l *gatedListener) Close() error {
	l.once.Do(func() { close(l.closing) })
	return l.Listener.Close()
}

// TestDrain_ConnectionAcceptedAsDrainBegins_IsServed: a connection that
// the listener accepted just before the drain closed it, and that Serve has
// not seen yet, is served (with Connection: close) before Drain calls
// Shutdown, which would drop its request.
func TestDrain_ConnectionAcceptedAsDrainBegins_IsServed(t *testing.T) {
	srv := &http.Server{Handler: okHandler}
	shutdown := make(chan struct{})
	srv.RegisterOnShutdown(func() { close(shutdown) })
	ln := &gatedListener{Listener: listen(t), got: make(chan struct{}, 1), gate: make(chan struct{}), closing: make(chan struct{})}
	d, served := serveDrained(t, srv, ln)

	c := dial(t, ln.Addr().String())
	c.send(t, "/")
	<-ln.got // accepted, and held before Serve sees it
	drained := make(chan error, 1)
	go func() { drained <- d.Drain(t.Context(), time.Minute) }()
	<-ln.closing
	// Give a Drain that does not wait for the held connection the time to
	// call Shutdown; one that waits shows nothing either way.
	select {
	case <-shutdown:
	case <-time.After(200 * time.Millisecond):
	}
	close(ln.gate)

	resp := c.head(t)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.True(t, resp.Close)
	assert.NoError(t, <-drained)
	assert.ErrorIs(t, <-served, http.ErrServerClosed)
}

// TestDrain_ContextEnds_ReturnsItsError: Drain with a ctx that has ended
// returns an error that wraps ctx's, starts no goroutine, and srv.Close
// then ends what is left with no descriptor left behind.
func TestDrain_ContextEnds_ReturnsItsError(t *testing.T) {
	before := fds(t)
	srv := &http.Server{Handler: okHandler}
	ln := listen(t)
	d, served := serveDrained(t, srv, ln)
	c := dial(t, ln.Addr().String())
	c.get(t, "/") // an idle keep-alive connection, which the grace keeps

	ignore := goleak.IgnoreCurrent()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err := d.Drain(ctx, time.Hour)
	require.ErrorIs(t, err, context.Canceled)
	assert.Contains(t, err.Error(), "open connections left: 1")
	goleak.VerifyNone(t, ignore)

	// A later Drain with time left waits on; Close ends it instead.
	ctx, cancel = context.WithTimeout(t.Context(), 10*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, d.Drain(ctx, time.Hour), context.DeadlineExceeded)

	require.NoError(t, srv.Close())
	assert.ErrorIs(t, <-served, http.ErrServerClosed)
	assert.ErrorIs(t, c.readEOF(), io.EOF)
	c.c.Close()
	waitFor(t, "the fd count of before the server", func() bool { return fds(t) == before })
}

// TestDrain_NoConnection_StopsAtOnce: with no connection, Drain stops the
// server, and so do calls made at the same time.
func TestDrain_NoConnection_StopsAtOnce(t *testing.T) {
	srv := &http.Server{}
	d, served := serveDrained(t, srv, listen(t))
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() { assert.NoError(t, d.Drain(t.Context(), time.Hour)) })
	}
	wg.Wait()
	assert.ErrorIs(t, <-served, http.ErrServerClosed)
}

// TestDrain_ListenerNotFromDrainer_IsAnError: Drain cannot stop a listener
// it does not hold without failing requests, so it changes nothing and says
// so; the server goes on serving.
func TestDrain_ListenerNotFromDrainer_IsAnError(t *testing.T) {
	srv := &http.Server{Handler: okHandler}
	d := drain.New(srv)
	ln := listen(t)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer srv.Close()
	c := dial(t, ln.Addr().String())
	assert.False(t, c.get(t, "/").Close)

	err := d.Drain(t.Context(), 0)
	require.Error(t, err)
	assert.Contains(t, err.Error(), ln.Addr().String())
	assert.Contains(t, err.Error(), "not from Drainer.Listener")

	assert.False(t, c.get(t, "/").Close, "no Connection: close: the drain did not begin")
	dial(t, ln.Addr().String()).get(t, "/")
	require.NoError(t, srv.Shutdown(t.Context()))
	assert.ErrorIs(t, <-served, http.ErrServerClosed)
}

// TestDrain_ServeTLS: ServeTLS wraps the listener from Listener in its own;
// the drain works through it, and closes the idle TLS connection after the
// grace.
func TestDrain_ServeTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	srv := &http.Server{
		Handler:   okHandler,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
	}
	d := drain.New(srv)
	ln := listen(t)
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(d.Listener(ln), "", "") }()
	defer srv.Close()

	raw := dial(t, ln.Addr().String())
	tc := tls.Client(raw.c, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	c := &client{c: tc, br: bufio.NewReader(tc)}
	assert.False(t, c.get(t, "/").Close)
	assert.Empty(t, tc.ConnectionState().NegotiatedProtocol, "no ALPN: HTTP/1.1")

	require.NoError(t, d.Drain(t.Context(), 50*time.Millisecond))
	assert.ErrorIs(t, c.readEOF(), io.EOF)
	assert.ErrorIs(t, <-served, http.ErrServerClosed)
}

// selfSigned returns a certificate for 127.0.0.1 and a pool that trusts it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

type ctxKey struct{}

// TestNew_KeepsTheServersHooks: the Handler, ConnState and BaseContext that
// srv had still run, and a nil Handler still means http.DefaultServeMux.
func TestNew_KeepsTheServersHooks(t *testing.T) {
	var states atomic.Int64
	var fromBase atomic.Value
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fromBase.Store(r.Context().Value(ctxKey{}))
			w.Write([]byte("ok"))
		}),
		ConnState:   func(net.Conn, http.ConnState) { states.Add(1) },
		BaseContext: func(net.Listener) context.Context { return context.WithValue(context.Background(), ctxKey{}, "base") },
	}
	ln := listen(t)
	d, served := serveDrained(t, srv, ln)
	c := dial(t, ln.Addr().String())
	assert.Equal(t, http.StatusOK, c.get(t, "/").StatusCode)
	assert.Equal(t, "base", fromBase.Load())
	waitFor(t, "the hook to see new, active and idle", func() bool { return states.Load() == 3 })
	require.NoError(t, d.Drain(t.Context(), 0))
	assert.ErrorIs(t, <-served, http.ErrServerClosed)
}

var registerDefault = sync.OnceFunc(func() {
	http.HandleFunc("/drain-test-default-mux", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("default")) })
})

// TestNew_NilHandlerIsTheDefaultServeMux: as in net/http, a server with no
// Handler serves http.DefaultServeMux.
func TestNew_NilHandlerIsTheDefaultServeMux(t *testing.T) {
	registerDefault()
	srv := &http.Server{}
	ln := listen(t)
	d, served := serveDrained(t, srv, ln)
	c := dial(t, ln.Addr().String())
	c.send(t, "/drain-test-default-mux")
	body, err := io.ReadAll(c.head(t).Body)
	require.NoError(t, err)
	assert.Equal(t, "default", string(body))
	require.NoError(t, d.Drain(t.Context(), 0))
	assert.ErrorIs(t, <-served, http.ErrServerClosed)
}
