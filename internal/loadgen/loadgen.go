// Package loadgen is an HTTP/1.1 load client that never retries, for tests
// that must count every request a server fails.
//
// net/http's Transport resends an idempotent request that failed on a reused
// connection, which hides exactly the failures a restart or a drain causes.
// This client speaks HTTP/1.1 on a plain net.Conn: each of its clients sends
// GET, reads the whole response (Content-Length, chunked, or up to the
// close), and sends the next one as soon as that one is done. A response
// with "Connection: close" makes the client close and connect again; that is
// how a drain tells a client to move, and it is not a failure. Any error
// before a full response is a failure, counted by Kind and never retried.
package loadgen

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Mode says how a client uses its connections.
type Mode int

const (
	// KeepAlive keeps one connection per client and sends every request on
	// it until the server answers with "Connection: close" or fails.
	KeepAlive Mode = iota
	// PerRequest sends each request, with "Connection: close", on a new
	// connection.
	PerRequest
)

// String returns "keep-alive" or "per-request".
func (m Mode) String() string {
	switch m {
	case KeepAlive:
		return "keep-alive"
	case PerRequest:
		return "per-request"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Kind names a class of failed request.
type Kind string

// The kinds of failure, in the order Result.String prints them.
const (
	Refused Kind = "refused" // the connect was refused (ECONNREFUSED)
	Reset   Kind = "reset"   // ECONNRESET or EPIPE, on connect, write or read
	EOF     Kind = "eof"     // the server closed before or while responding
	Timeout Kind = "timeout" // Config.Timeout passed
	Status  Kind = "status"  // a full response whose status is not 2xx
	Other   Kind = "other"   // anything else, such as a malformed response
)

var kinds = []Kind{Refused, Reset, EOF, Timeout, Status, Other}

// Config says where to send load and how.
type Config struct {
	// Network is "tcp", "tcp4", "tcp6" or "unix".
	Network string
	// Addr is host:port, or for "unix" the socket's path.
	Addr string
	// Source is the IP address that client sockets bind to before they
	// connect, such as "127.0.0.2", so that their ephemeral ports never take
	// a port on 127.0.0.1 that another test listens on. Empty lets the kernel
	// choose. TCP only.
	Source string
	// Path is the request target; "/" if empty.
	Path string
	// Mode is KeepAlive or PerRequest.
	Mode Mode
	// Clients is how many clients send at once; 1 if 0.
	Clients int
	// Timeout bounds each request, from the connect, when there is one, to
	// the last byte of the response; 5 s if 0.
	Timeout time.Duration
	// Pause is how long a client waits after a response before it sends the
	// next request; none if 0.
	Pause time.Duration
	// Dial, if set, makes each connection in place of a net.Dialer, for
	// example in another network namespace; Source must then be empty.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Result counts the requests of a Load.
type Result struct {
	// OK counts 2xx responses read in full.
	OK int64
	// Closed counts the responses, on a KeepAlive connection, that said
	// "Connection: close", after which the client connected again. They are
	// counted in OK or as a Status failure too.
	Closed int64
	// Conns counts the connections that the clients opened.
	Conns int64
	// Failed counts failed requests by kind; kinds that did not occur are
	// absent.
	Failed map[Kind]int64
	// First holds the error of the first failure of each kind.
	First map[Kind]string
}

// Failures returns the number of failed requests, of every kind.
func (r Result) Failures() int64 {
	var n int64
	for _, v := range r.Failed {
		n += v
	}
	return n
}

// String sums r up on one line, such as "5123 ok, 32 told to close, 64
// connections, 2 failed: eof 2 (first: read status line: EOF)".
func (r Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d ok, %d told to close, %d connections, %d failed", r.OK, r.Closed, r.Conns, r.Failures())
	sep := ": "
	for _, k := range kinds {
		if n := r.Failed[k]; n > 0 {
			fmt.Fprintf(&b, "%s%s %d (first: %s)", sep, k, n, r.First[k])
			sep = ", "
		}
	}
	return b.String()
}

// Load is load that Start began. Its methods may be called from any
// goroutine.
type Load struct {
	cfg    Config
	dialer net.Dialer
	cancel context.CancelFunc
	wg     sync.WaitGroup

	ok, closed, conns atomic.Int64

	mu     sync.Mutex
	failed map[Kind]int64
	first  map[Kind]string

	stop  sync.Once
	final Result
}

// Start checks c and starts c.Clients clients that send requests until Stop
// is called or ctx ends; either way, call Stop to wait for them. A request
// that Stop or ctx interrupts is counted neither as OK nor as failed. An
// invalid Config is an error, and nothing is started.
func Start(ctx context.Context, c Config) (*Load, error) {
	l := &Load{cfg: c, failed: map[Kind]int64{}, first: map[Kind]string{}}
	if err := l.init(); err != nil {
		return nil, fmt.Errorf("loadgen: %w", err)
	}
	ctx, l.cancel = context.WithCancel(ctx)
	for range l.cfg.Clients {
		l.wg.Go(func() { l.client(ctx) })
	}
	return l, nil
}

// init checks l.cfg, fills in its defaults and prepares the dialer.
func (l *Load) init() error {
	c := &l.cfg
	switch c.Network {
	case "tcp", "tcp4", "tcp6":
		if c.Source != "" {
			ip, err := netip.ParseAddr(c.Source)
			if err != nil {
				return fmt.Errorf("source %q is not an IP address: %w", c.Source, err)
			}
			if c.Dial != nil {
				return fmt.Errorf("source %q: Dial is set, and chooses the source itself", c.Source)
			}
			l.dialer.LocalAddr = &net.TCPAddr{IP: ip.AsSlice(), Zone: ip.Zone()}
		}
	case "unix":
		if c.Source != "" {
			return fmt.Errorf("source %q: a unix socket has no source address", c.Source)
		}
	default:
		return fmt.Errorf("network %q: want tcp, tcp4, tcp6 or unix", c.Network)
	}
	if c.Mode != KeepAlive && c.Mode != PerRequest {
		return fmt.Errorf("unknown %v", c.Mode)
	}
	if c.Clients < 0 || c.Timeout < 0 || c.Pause < 0 {
		return fmt.Errorf("negative Clients, Timeout or Pause (%d, %v, %v)", c.Clients, c.Timeout, c.Pause)
	}
	if c.Clients == 0 {
		c.Clients = 1
	}
	if c.Timeout == 0 {
		c.Timeout = 5 * time.Second
	}
	if c.Path == "" {
		c.Path = "/"
	}
	if !strings.HasPrefix(c.Path, "/") || strings.ContainsAny(c.Path, " \r\n") {
		return fmt.Errorf("path %q: want an absolute path without spaces or line breaks", c.Path)
	}
	return nil
}

// Snapshot returns the counts so far.
func (l *Load) Snapshot() Result {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Result{
		OK:     l.ok.Load(),
		Closed: l.closed.Load(),
		Conns:  l.conns.Load(),
		Failed: maps.Clone(l.failed),
		First:  maps.Clone(l.first),
	}
}

// Stop stops the clients, closes their connections, waits for them and
// returns the final counts. It may be called more than once; later calls
// return the same counts.
func (l *Load) Stop() Result {
	l.stop.Do(func() {
		l.cancel()
		l.wg.Wait()
		l.final = l.Snapshot()
	})
	return l.final
}

// WaitOK waits until at least n requests have been OK in all, and returns
// nil, or returns an error that wraps ctx.Err() with the counts so far.
func (l *Load) WaitOK(ctx context.Context, n int64) error {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for l.ok.Load() < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("loadgen: waiting for %d ok requests: %v: %w", n, l.Snapshot(), ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}

// fail counts a failed request of kind k.
func (l *Load) fail(k Kind, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failed[k]++
	if _, ok := l.first[k]; !ok {
		l.first[k] = err.Error()
	}
}

// client sends requests one after another until ctx ends.
func (l *Load) client(ctx context.Context) {
	cl := &client{l: l, req: l.request()}
	stop := context.AfterFunc(ctx, cl.interrupt)
	defer stop()
	defer cl.drop()
	var pause *time.Timer
	if l.cfg.Pause > 0 {
		pause = time.NewTimer(0)
		defer pause.Stop()
		<-pause.C
	}
	for ctx.Err() == nil {
		k, err := cl.do(ctx)
		if ctx.Err() != nil {
			return // interrupted: neither OK nor failed
		}
		if err != nil {
			l.fail(k, err)
		}
		if pause != nil {
			pause.Reset(l.cfg.Pause)
			select {
			case <-ctx.Done():
				return
			case <-pause.C:
			}
		}
	}
}

// request returns the bytes of the request that every client sends.
func (l *Load) request() []byte {
	host := l.cfg.Addr
	if l.cfg.Network == "unix" {
		host = "localhost"
	}
	conn := ""
	if l.cfg.Mode == PerRequest {
		conn = "Connection: close\r\n"
	}
	return fmt.Appendf(nil, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: loadgen\r\n%s\r\n", l.cfg.Path, host, conn)
}

// client is one client's connection state.
type client struct {
	l   *Load
	req []byte
	br  *bufio.Reader

	mu      sync.Mutex // guards conn against interrupt
	conn    net.Conn
	stopped bool
}

// do sends one request and reads its response. On failure it returns the
// kind and the error, and drops the connection.
func (cl *client) do(ctx context.Context) (Kind, error) {
	l := cl.l
	deadline := time.Now().Add(l.cfg.Timeout)
	if cl.conn == nil {
		dctx, cancel := context.WithDeadline(ctx, deadline)
		dial := l.dialer.DialContext
		if l.cfg.Dial != nil {
			dial = l.cfg.Dial
		}
		c, err := dial(dctx, l.cfg.Network, l.cfg.Addr)
		cancel()
		if err != nil {
			return classify(err), err
		}
		l.conns.Add(1)
		if !cl.set(c) {
			return Other, errors.New("stopped")
		}
		if cl.br == nil {
			cl.br = bufio.NewReaderSize(c, 4<<10)
		} else {
			cl.br.Reset(c)
		}
	}
	c := cl.conn
	err := c.SetDeadline(deadline)
	if err == nil {
		_, err = c.Write(cl.req)
		if err != nil {
			err = fmt.Errorf("write request: %w", err)
		}
	}
	var resp response
	if err == nil {
		resp, err = readResponse(cl.br)
	}
	if err != nil {
		cl.drop()
		return classify(err), err
	}
	if l.cfg.Mode == PerRequest || resp.close {
		if l.cfg.Mode == KeepAlive {
			l.closed.Add(1)
		}
		cl.drop()
	}
	if resp.code < 200 || resp.code > 299 {
		return Status, fmt.Errorf("status %q", resp.status)
	}
	l.ok.Add(1)
	return "", nil
}

// set makes c the client's connection, unless interrupt came first, in which
// case it closes c and returns false.
func (cl *client) set(c net.Conn) bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.stopped {
		c.Close()
		return false
	}
	cl.conn = c
	return true
}

// drop closes the client's connection, if it has one.
func (cl *client) drop() {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.conn != nil {
		cl.conn.Close()
		cl.conn = nil
	}
}

// interrupt unblocks a read or write in progress, for Stop.
func (cl *client) interrupt() {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cl.stopped = true
	if cl.conn != nil {
		cl.conn.SetDeadline(time.Unix(1, 0))
	}
}
