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

// WithReuseAddr sets or clears SO_REUSEADDR, which lets a restarted server
// bind its port past the TIME_WAIT of its old connections. It is on by
// default for TCP listeners, as Go's net package sets it itself (no system
// call is made for that default), and for Dial from a fixed local address;
// off is the kernel's strict rule, where a restart fails for as long as a
// TIME_WAIT of the port lasts. For UDP it is off by default: two UDP sockets
// with it share a port, even across users. On Windows it is never set for
// TCP, where it would let any socket take a port in use. See the package's
// Per OS table.
func WithReuseAddr(on bool) Option {
	return optionFunc(func(o *options) { o.reuseAddr = settingOf(on) })
}

// WithReusePort asks for load-balanced port sharing: several sockets, each
// with this option, bind the same address and port, and the kernel spreads
// new connections (or datagrams) over them; see the package's SO_REUSEPORT
// section for who can join. Off, the default, sets nothing.
// WithReusePort(true) with an explicit WithExclusiveAddr(true) is an error:
// the two ask for opposite things. See the package's Per OS table.
func WithReusePort(on bool) Option {
	return optionFunc(func(o *options) { o.reusePort = settingOf(on) })
}

// WithExclusiveAddr sets SO_EXCLUSIVEADDRUSE on Windows, so that no other
// socket can bind the port, not even one with SO_REUSEADDR. It is on by
// default for TCP listeners there, and set for UDP and Dial only when asked
// for; off leaves Go's plain Windows behaviour. Elsewhere it has no effect.
// See the package's Per OS table.
func WithExclusiveAddr(on bool) Option {
	return optionFunc(func(o *options) { o.exclusive = settingOf(on) })
}

// WithRSTOnClose makes Close of a TCP connection send RST instead of FIN, by
// SO_LINGER {on, 0}, leaving no TIME_WAIT: a last resort (see the package
// documentation). With Listen it applies to every accepted connection, with
// Dial to the dialled one. See the package's Per OS table.
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
