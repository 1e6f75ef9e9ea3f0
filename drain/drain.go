// Package drain stops a net/http server without failing a request of a
// client that keeps sending: the old process's half of reuse.Upgrade.
//
// http.Server.Shutdown closes idle keep-alive connections at once, while a
// client may be sending its next request on one; that client reads EOF or a
// reset. Once a new process serves on the same listening socket, the old one
// can take its time instead. Drain stops accepting, answers every request
// with "Connection: close", which makes a client close and connect again, to
// the new process, without an error, and closes a connection that stays
// idle only once it has been idle for a grace the caller names:
//
//	d := drain.New(srv)
//	go srv.Serve(d.Listener(ln))
//	// On SIGHUP:
//	if err := reuse.Upgrade(ctx); err == nil {
//		err = d.Drain(ctx, time.Second)
//	}
//
// What was tested: Linux, HTTP/1.1 over TCP and TLS, two servers on one
// socket under load from clients that never retry. For HTTP/2, net/http
// turns "Connection: close" into a GOAWAY; that was not tested.
package drain

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// A Drainer drains one http.Server. Make it with New.
type Drainer struct {
	srv      *http.Server
	next     http.Handler
	hook     func(net.Conn, http.ConnState)
	base     func(net.Listener) context.Context
	draining atomic.Bool
	begin1   sync.Mutex // held while the first Drain begins; later ones wait

	mu      sync.Mutex
	conns   map[net.Conn]*connInfo
	ours    []*listener    // from Listener
	served  []net.Listener // what Serve was given, as BaseContext saw it
	started bool
	changed chan struct{} // closed and replaced on every change during a drain
	lnErr   error         // from closing our listeners
}

// connInfo is what a Drainer knows of one connection.
type connInfo struct {
	state   http.ConnState
	since   time.Time // when it entered state
	closing bool      // Drain closed it; StateClosed is on its way
}

// New prepares srv for Drain and returns its Drainer. Call it once, before
// srv serves, and serve srv on listeners from the Drainer's Listener. New
// sets srv.Handler, srv.ConnState and srv.BaseContext to functions that call
// the ones srv had (http.DefaultServeMux for a nil Handler): they add
// "Connection: close" during a drain, keep each connection's state and the
// time it entered it, and note the listeners that Serve runs on.
func New(srv *http.Server) *Drainer {
	d := &Drainer{
		srv:     srv,
		next:    srv.Handler,
		hook:    srv.ConnState,
		base:    srv.BaseContext,
		conns:   map[net.Conn]*connInfo{},
		changed: make(chan struct{}),
	}
	if d.next == nil {
		d.next = http.DefaultServeMux
	}
	srv.Handler = http.HandlerFunc(d.serveHTTP)
	srv.ConnState = d.connState
	srv.BaseContext = d.baseContext
	return d
}

// Listener returns ln for srv.Serve or srv.ServeTLS. It accepts as ln does
// until Drain begins; then Drain closes ln, and the returned listener's
// Accept waits, so that Serve returns only once the drain is over, with
// http.ErrServerClosed as after Shutdown. When another process serves a
// duplicate of the same socket (after reuse.Upgrade), closing ln leaves the
// socket and its accept queue to that process, and no connect is refused;
// without one, connects are refused from then on, as after Shutdown. A
// *net.UnixListener removes its path when closed unless
// SetUnlinkOnClose(false) was called on it.
func (d *Drainer) Listener(ln net.Listener) net.Listener {
	l := &listener{Listener: ln, d: d, closed: make(chan struct{})}
	d.mu.Lock()
	d.ours = append(d.ours, l)
	d.mu.Unlock()
	return l
}

// Drain stops srv without failing a request whose client goes on sending,
// and returns nil once srv has stopped; srv.Serve then returns
// http.ErrServerClosed. From the moment Drain begins:
//
//   - srv accepts no more connections (see Listener);
//   - every response whose handler starts from then on carries
//     "Connection: close", after which srv closes the connection and the
//     client connects again, to whichever process serves the socket now;
//   - a connection that is idle, between requests or before its first one,
//     is closed once it has been idle for the grace idle, with a FIN. This
//     races only with a client that starts sending on it at that instant,
//     which reads EOF or a reset; a client that sends within the grace gets
//     its response, with "Connection: close". An idle of 0 closes idle
//     connections at once, as Shutdown does;
//   - a response whose headers were written before Drain began has gone out
//     without "Connection: close", so its connection stays open after it:
//     the next request on it gets "Connection: close", or the connection is
//     closed once it has been idle for the grace.
//
// Drain waits for handlers however long they take; hijacked connections are
// not waited for. Once no connection is left, Drain calls srv.Shutdown,
// which then has nothing left to close.
//
// If ctx ends first, Drain returns an error that wraps ctx.Err() and says
// how many connections are open. The drain that began goes on: call Drain
// again to wait for it, or srv.Close to close what is left. Drain may be
// called more than once, also at the same time; each call returns when srv
// has stopped or its ctx ends. If srv serves on a listener that did not come
// from Listener (ListenAndServe makes its own), Drain changes nothing and
// returns an error that names the listener's address: Drain could not stop
// it accepting without Shutdown, which fails requests.
func (d *Drainer) Drain(ctx context.Context, idle time.Duration) error {
	if err := d.begin(); err != nil {
		return err
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		open, pending, wait, changed := d.closeIdle(idle)
		if open+pending == 0 {
			err := d.srv.Shutdown(ctx)
			d.mu.Lock()
			defer d.mu.Unlock()
			return errors.Join(err, d.lnErr)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return fmt.Errorf("drain: open connections left: %d: %w", open, ctx.Err())
		case <-changed:
		case <-timer.C:
		}
	}
}

// begin starts the drain, once: responses get "Connection: close" and our
// listeners stop accepting.
func (d *Drainer) begin() error {
	d.begin1.Lock()
	defer d.begin1.Unlock()
	d.mu.Lock()
	if d.started {
		d.mu.Unlock()
		return nil
	}
	for _, ln := range d.served {
		if !d.isOurs(ln) {
			d.mu.Unlock()
			return fmt.Errorf("drain: srv serves on %s %s, a listener that is not from Drainer.Listener: Drain cannot stop it accepting without failing requests", ln.Addr().Network(), ln.Addr())
		}
	}
	d.started = true
	d.draining.Store(true)
	for _, l := range d.ours {
		l.stopped = true
	}
	ours := d.ours
	d.mu.Unlock()
	var errs []error
	for _, l := range ours {
		if err := l.Listener.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	d.mu.Lock()
	d.lnErr = errors.Join(errs...)
	d.mu.Unlock()
	return nil
}

// isOurs reports whether ln came from Listener, or wraps one that did as
// ServeTLS's listener does; such a wrapper has the same address. d.mu is
// held.
func (d *Drainer) isOurs(ln net.Listener) bool {
	for _, l := range d.ours {
		if ln == net.Listener(l) || sameAddr(ln.Addr(), l.Addr()) {
			return true
		}
	}
	return false
}

func sameAddr(a, b net.Addr) bool {
	return a.Network() == b.Network() && a.String() == b.String()
}

// closeIdle closes the connections that have been idle for idle. It returns
// how many connections are open; how many listeners may have accepted a
// connection that Serve has not announced yet; how long until the next idle
// connection is due; and a channel closed on the next change.
func (d *Drainer) closeIdle(idle time.Duration) (open, pending int, wait time.Duration, changed <-chan struct{}) {
	var due []net.Conn
	now := time.Now()
	wait = time.Hour
	d.mu.Lock()
	for c, ci := range d.conns {
		open++
		if ci.closing || ci.state != http.StateIdle && ci.state != http.StateNew {
			continue
		}
		if w := ci.since.Add(idle).Sub(now); w > 0 {
			wait = min(wait, w)
			continue
		}
		ci.closing = true
		due = append(due, c)
	}
	for _, l := range d.ours {
		if l.busy {
			pending++
		}
	}
	changed = d.changed
	d.mu.Unlock()
	for _, c := range due {
		c.Close()
	}
	return open, pending, wait, changed
}

// notify wakes the Drain calls that wait for a change. d.mu is held.
func (d *Drainer) notify() {
	if d.started {
		close(d.changed)
		d.changed = make(chan struct{})
	}
}

func (d *Drainer) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if d.draining.Load() {
		w.Header().Set("Connection", "close")
	}
	d.next.ServeHTTP(w, r)
}

// connState keeps each connection's state and the time it entered it,
// after it calls the hook srv had.
func (d *Drainer) connState(c net.Conn, state http.ConnState) {
	if d.hook != nil {
		d.hook(c, state)
	}
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	switch state {
	case http.StateClosed, http.StateHijacked:
		delete(d.conns, c)
	default:
		ci := d.conns[c]
		if ci == nil {
			ci = &connInfo{}
			d.conns[c] = ci
		}
		ci.state, ci.since = state, now
	}
	d.notify()
}

// baseContext records the listener Serve was given, and calls the
// BaseContext srv had.
func (d *Drainer) baseContext(ln net.Listener) context.Context {
	d.mu.Lock()
	d.served = append(d.served, ln)
	d.mu.Unlock()
	if d.base != nil {
		return d.base(ln)
	}
	return context.Background()
}

// listener is a listener from Drainer.Listener.
type listener struct {
	net.Listener
	d      *Drainer
	closed chan struct{} // closed by Close
	once   sync.Once
	// Guarded by d.mu:
	busy    bool // in Accept, or returned a connection and not called again
	stopped bool // Drain closed the inner listener
}

// Accept accepts as the inner listener does until Drain begins; then it
// waits for Close, which Shutdown calls, so that Serve returns
// http.ErrServerClosed and not the error of a closed listener.
func (l *listener) Accept() (net.Conn, error) {
	d := l.d
	d.mu.Lock()
	l.busy = true
	stopped := l.stopped
	d.mu.Unlock()
	if !stopped {
		c, err := l.Listener.Accept()
		if err == nil {
			// Busy until Serve asks again, by when it has announced c.
			return c, nil
		}
		d.mu.Lock()
		if stopped = l.stopped; !stopped {
			l.busy = false
		}
		d.mu.Unlock()
		if !stopped {
			return nil, err
		}
	}
	d.mu.Lock()
	l.busy = false
	d.notify()
	d.mu.Unlock()
	<-l.closed
	return nil, &net.OpError{Op: "accept", Net: l.Addr().Network(), Addr: l.Addr(), Err: net.ErrClosed}
}

// Close closes the listener and ends a waiting Accept. After Drain closed
// the inner listener it returns nil.
func (l *listener) Close() error {
	l.once.Do(func() { close(l.closed) })
	l.d.mu.Lock()
	stopped := l.stopped
	l.d.mu.Unlock()
	if stopped {
		return nil
	}
	return l.Listener.Close()
}
