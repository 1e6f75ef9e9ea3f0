package reuse

import (
	"errors"
	"fmt"
	"syscall"
)

// An Option changes one socket option of the sockets that Listen, ListenPacket,
// Dial and the Control they build create. Build one with a With function; the
// zero value and nil are not valid Options.
//
// Options apply in order and the last one wins: WithReuseAddr(false) followed
// by WithReuseAddr(true) leaves SO_REUSEADDR on. WithControl is the exception:
// every function it is given runs, in the order given.
type Option interface {
	apply(*options)
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

// setting is an option the caller may leave alone, turn on or turn off; unset
// takes the per-OS default from the plan (sockopt_plan.go).
type setting uint8

const (
	unset setting = iota
	off
	on
)

func settingOf(b bool) setting {
	if b {
		return on
	}
	return off
}

type options struct {
	reuseAddr  setting
	reusePort  setting
	exclusive  setting
	rstOnClose bool
	controls   []func(network, address string, c syscall.RawConn) error
	err        error // the first invalid Option, reported before any socket exists
}

// WithReuseAddr sets or clears SO_REUSEADDR.
//
// On a TCP listener it lets a restarted server bind its port while
// connections of the old process are still in TIME_WAIT. It is on by default
// for TCP listeners and for Dial, as Go's net package already sets it on TCP
// listeners on Unix (no system call is made for that default). Off clears it:
// the kernel's strict behaviour, where a restart fails with "address already
// in use" for as long as a TIME_WAIT of that port lasts.
//
// On Windows SO_REUSEADDR lets any other socket, even another user's, take a
// port that is in use, so it is never set for TCP: WithReuseAddr(false) is
// what Windows does anyway, and WithReuseAddr(true) on a TCP listener or Dial
// is an error for which errors.Is(err, errors.ErrUnsupported) holds. Windows
// is reported to let a restarted server bind past TIME_WAIT without it.
//
// For UDP it is off by default, because two UDP sockets with SO_REUSEADDR
// share a port even across users. WithReuseAddr(true) sets it on every OS,
// Windows included, when such sharing is what you want.
//
// On Plan 9, js/wasm and wasip1, where no socket option can be set, asking
// for either value is an error for which errors.Is(err, errors.ErrUnsupported)
// holds. It does not apply to unix and ip networks: asking for it there is an
// error.
func WithReuseAddr(on bool) Option {
	return optionFunc(func(o *options) { o.reuseAddr = settingOf(on) })
}

// WithReusePort asks for load-balanced port sharing: several sockets, each
// with this option, bind the same address and port, and the kernel spreads
// new connections (or datagrams) over them. Off, the default, sets nothing.
//
// On Linux, Android and DragonFly it sets SO_REUSEPORT; on FreeBSD
// SO_REUSEPORT_LB. On every other OS, where SO_REUSEPORT either does not exist
// or lets the newest socket take the traffic without balancing, Listen returns
// an error for which errors.Is(err, errors.ErrUnsupported) holds.
//
// Only processes of the same effective user ID can share a port this way on
// Linux: that UID is the trust boundary, and any process running as it can
// join the group and receive a share of the connections. Closing one listener
// of the group resets the connections waiting in its accept queue, unless the
// Linux sysctl net.ipv4.tcp_migrate_req is 1 (Linux 5.14 and later).
//
// It does not apply to unix and ip networks: asking for it there is an error.
// WithReusePort(true) together with an explicit WithExclusiveAddr(true) is an
// error: the two ask for opposite things.
func WithReusePort(on bool) Option {
	return optionFunc(func(o *options) { o.reusePort = settingOf(on) })
}

// WithExclusiveAddr sets SO_EXCLUSIVEADDRUSE on Windows, so that no other
// socket can bind the same port, not even one with SO_REUSEADDR. It is on by
// default for TCP listeners on Windows; off leaves Go's plain Windows
// behaviour. For UDP and Dial on Windows it is set only when asked for.
// Microsoft documents that an exclusive socket cannot bind while a
// connection accepted by the previous exclusive listener is still active;
// whether TIME_WAIT counts is not verified here (see the package
// documentation). If a Windows restart fails with WSAEADDRINUSE, turn it off.
//
// On every other system it has no effect. Linux refuses a second live
// listener on a port unless both sockets ask to share it; on macOS and the
// BSDs, Go's own SO_REUSEADDR lets a socket of the same user bind a specific
// address under another socket's wildcard, which this option does not
// prevent there. On Plan 9, js/wasm and wasip1, where no socket option can be
// set, WithExclusiveAddr(true) is an error for which
// errors.Is(err, errors.ErrUnsupported) holds. It does not apply to unix and
// ip networks: asking for it there is an error.
func WithExclusiveAddr(on bool) Option {
	return optionFunc(func(o *options) { o.exclusive = settingOf(on) })
}

// WithRSTOnClose makes Close abort TCP connections: it sets SO_LINGER with
// linger on and a timeout of 0, so Close sends RST instead of FIN and leaves no
// TIME_WAIT behind. The price: data not yet sent is discarded, the peer's next
// Read fails with "connection reset by peer", and the protection TIME_WAIT
// gives against late segments of the old connection (RFC 1337) is gone. It is
// a last resort; for "address already in use" on restart, SO_REUSEADDR (the
// default) is the fix.
//
// With Listen it applies to every accepted connection. On Linux, Android and
// the BSDs (macOS included) accepted sockets inherit SO_LINGER from the
// listening socket, so it is set once on the listener and Accept makes no extra
// system call. On Windows, Solaris, illumos and AIX, where that inheritance is
// not established, the listener Listen returns sets it on each accepted
// connection instead; Control and ListenConfig cannot do that and return an
// error for which errors.Is(err, errors.ErrUnsupported) holds there.
//
// On Plan 9, js/wasm and wasip1 it is an error for which
// errors.Is(err, errors.ErrUnsupported) holds.
//
// With Dial it applies to the dialled connection. It does not apply to UDP,
// unix and ip networks: asking for it there is an error, reported before any
// socket is created.
func WithRSTOnClose() Option {
	return optionFunc(func(o *options) { o.rstOnClose = true })
}

// WithControl adds fn to run on the raw socket after this package has set its
// own options, before bind. An error from fn fails the Listen or Dial and
// comes back unchanged inside the *net.OpError, so errors.Is and errors.As see
// it. Several WithControl options all run, in order; the first error stops
// the rest.
//
// fn may run more than once for one Listen: Go opens TCP listeners as MPTCP
// where the kernel has it and, on any error, closes that socket and tries
// plain TCP, calling Control again. fn must be idempotent.
func WithControl(fn func(network, address string, c syscall.RawConn) error) Option {
	return optionFunc(func(o *options) {
		if fn == nil {
			o.fail(errors.New("reuse: WithControl(nil): the function is nil"))
			return
		}
		o.controls = append(o.controls, fn)
	})
}

func (o *options) fail(err error) {
	if o.err == nil {
		o.err = err
	}
}

// build applies opts in order. Its error names the first nil Option. With
// no options it allocates nothing, so a plain Listen costs what net.Listen
// costs.
func build(opts []Option) options {
	if len(opts) == 0 {
		return options{}
	}
	o := new(options) // an Option may keep what it is given: o escapes
	for i, opt := range opts {
		if opt == nil {
			o.fail(fmt.Errorf("reuse: option %d of %d is nil", i+1, len(opts)))
			continue
		}
		opt.apply(o)
	}
	return *o
}
