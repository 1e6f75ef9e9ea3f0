package reuse

import (
	"errors"
	"fmt"
	"net"
	"reflect"
	"syscall"
)

// lingerListener sets SO_LINGER on each accepted connection: {1, 0} when rst
// is set, off when not. Listen returns one where accepted sockets are not
// known to inherit SO_LINGER from the listener (see traitsOf), and for an
// inherited listener whose SO_LINGER differs from what was asked but which
// the parent process still shares. Elsewhere Listen returns the stdlib
// listener.
type lingerListener struct {
	*net.TCPListener
	rst bool
}

// Accept waits for the next connection and sets its SO_LINGER.
func (l *lingerListener) Accept() (net.Conn, error) {
	c, err := l.AcceptTCP()
	if err != nil {
		return nil, err
	}
	return c, nil
}

// AcceptTCP is Accept with the concrete type. A connection whose SO_LINGER
// cannot be set (the peer reset it already) is closed and skipped, as Go
// ignores setsockopt errors on accepted connections: one bad connection
// must not stop a server's Accept loop.
func (l *lingerListener) AcceptTCP() (*net.TCPConn, error) {
	for {
		c, err := l.TCPListener.AcceptTCP()
		if err != nil {
			return nil, err
		}
		rc, err := c.SyscallConn()
		if err == nil {
			err = apply(rc, []step{{soLinger, l.rst}})
		}
		if err == nil {
			return c, nil
		}
		c.Close()
	}
}

// Abort closes c so that it sends RST instead of FIN: it sets SO_LINGER
// {on, 0} and calls Close. No TIME_WAIT is left on this side, data not yet
// sent is discarded, and the peer's next Read fails with "connection reset by
// peer". Use it for one connection you must drop at once; WithRSTOnClose does
// the same for every connection of a listener.
//
// c must be a TCP connection that exposes its socket through SyscallConn, as
// *net.TCPConn does, or a wrapper with a NetConn method that leads to one, as
// *tls.Conn does; Abort then closes the TCP connection itself, without the
// wrapper's goodbye (a TLS close_notify). For nil, a nil pointer (a nil
// *net.TCPConn, a nil *tls.Conn, a wrapper of one), a zero net.TCPConn that
// has no socket, or a connection that cannot be aborted, Abort returns an
// error and leaves c open, so the caller can still Close it.
func Abort(c net.Conn) error {
	if c == nil {
		return errors.New("reuse: Abort(nil)")
	}
	if isNil(c) {
		return fmt.Errorf("reuse: Abort of a nil %T", c)
	}
	inner := c
	// tls.Conn and similar wrappers expose the connection they wrap.
	for range 8 {
		w, ok := inner.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		if inner = w.NetConn(); isNil(inner) {
			return fmt.Errorf("reuse: Abort: %T wraps a nil connection", w)
		}
	}
	sc, ok := inner.(syscall.Conn)
	if !ok {
		return fmt.Errorf("reuse: Abort: %T is not a TCP connection with SyscallConn", inner)
	}
	laddr := inner.LocalAddr()
	if laddr == nil {
		// A zero net.TCPConn{}: no socket, nothing to abort.
		return fmt.Errorf("reuse: Abort: %T has no socket", inner)
	}
	if _, tcp := laddr.(*net.TCPAddr); !tcp {
		return fmt.Errorf("reuse: Abort: %T is not a TCP connection with SyscallConn", inner)
	}
	rc, err := sc.SyscallConn()
	if err == nil {
		err = apply(rc, []step{{soLinger, true}})
	}
	if err != nil {
		return &net.OpError{Op: "abort", Net: laddr.Network(), Source: laddr, Addr: inner.RemoteAddr(), Err: err}
	}
	// Close the socket itself: a wrapper's Close may first write (a TLS
	// close_notify, with a deadline of seconds), which an abort must not.
	return inner.Close()
}

// isNil reports whether c holds a nil pointer (or another nil of a kind
// that can be), on which the methods of net.Conn would panic.
func isNil(c net.Conn) bool {
	if c == nil {
		return true
	}
	switch v := reflect.ValueOf(c); v.Kind() {
	case reflect.Pointer, reflect.Interface, reflect.Map, reflect.Slice, reflect.Func, reflect.Chan:
		return v.IsNil()
	}
	return false
}
