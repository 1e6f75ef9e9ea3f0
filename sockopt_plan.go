package reuse

import (
	"errors"
	"fmt"
	"strings"
)

// This file decides, as data, which socket options each GOOS sets for the
// options a caller asked for. It takes the GOOS as an argument so that the
// choices for Windows and the BSDs are tested on Linux. The per-OS files
// (sockopt_unix.go, sockopt_windows.go, ...) only carry the steps out.

// sockopt names a socket option the plan can ask for.
type sockopt uint8

const (
	soReuseAddr sockopt = iota + 1
	soReusePort
	soReusePortLB
	soExclusiveAddrUse
	soLinger // on means {l_onoff: 1, l_linger: 0}: Close sends RST
)

// String returns the option's C name, as errors print it.
func (s sockopt) String() string {
	switch s {
	case soReuseAddr:
		return "SO_REUSEADDR"
	case soReusePort:
		return "SO_REUSEPORT"
	case soReusePortLB:
		return "SO_REUSEPORT_LB"
	case soExclusiveAddrUse:
		return "SO_EXCLUSIVEADDRUSE"
	case soLinger:
		return "SO_LINGER"
	}
	return fmt.Sprintf("sockopt(%d)", uint8(s))
}

// step is one setsockopt: the option, and on (1) or off (0). For SO_LINGER,
// on is {1, 0}.
type step struct {
	opt sockopt
	on  bool
}

// String returns the step as "SO_REUSEADDR=0" or "SO_LINGER={1,0}".
func (s step) String() string {
	if s.opt == soLinger {
		if s.on {
			return "SO_LINGER={1,0}"
		}
		return "SO_LINGER={0,0}"
	}
	if s.on {
		return s.opt.String() + "=1"
	}
	return s.opt.String() + "=0"
}

// kind is what a socket is for; each kind has its own defaults.
type kind uint8

const (
	kindTCPListen kind = iota + 1
	kindTCPDial
	kindUDP   // ListenPacket or Dial on udp, udp4, udp6
	kindLocal // unix, unixpacket, unixgram, and ip networks: no port to reuse
)

// kindOf maps a network, as a caller or Control names it, to its kind.
// dial tells a TCP client from a TCP listener, which Control cannot see.
func kindOf(network string, dial bool) (kind, bool) {
	base, _, _ := strings.Cut(network, ":")
	switch base {
	case "tcp", "tcp4", "tcp6":
		if dial {
			return kindTCPDial, true
		}
		return kindTCPListen, true
	case "udp", "udp4", "udp6":
		return kindUDP, true
	case "unix", "unixpacket", "unixgram", "ip", "ip4", "ip6":
		return kindLocal, true
	}
	return 0, false
}

// osTraits is what the plan needs to know of one GOOS.
type osTraits struct {
	sockets bool // socket options can be set at all
	// reusePort is the option that balances connections over several
	// listeners, or 0 where there is none.
	reusePort sockopt
	// lingerInherited: accepted sockets inherit SO_LINGER from the listener
	// (Linux inet_csk_clone_lock copies the socket; the BSDs' sonewconn copies
	// so_linger), so one setsockopt on the listener covers every connection.
	lingerInherited bool
	windows         bool
	// noMappedV4: no IPv4-mapped addresses, so a [::] socket takes IPv6
	// only (OpenBSD, DragonFly).
	noMappedV4 bool
}

func traitsOf(goos string) osTraits {
	switch goos {
	case "linux", "android":
		return osTraits{sockets: true, reusePort: soReusePort, lingerInherited: true}
	case "dragonfly":
		return osTraits{sockets: true, reusePort: soReusePort, lingerInherited: true, noMappedV4: true}
	case "freebsd":
		return osTraits{sockets: true, reusePort: soReusePortLB, lingerInherited: true}
	case "darwin", "ios", "netbsd", "openbsd":
		// SO_REUSEPORT exists but gives the port to the newest socket
		// without balancing: not what WithReusePort promises.
		return osTraits{sockets: true, lingerInherited: true, noMappedV4: goos == "openbsd"}
	case "solaris", "illumos", "aix":
		return osTraits{sockets: true}
	case "windows":
		return osTraits{sockets: true, windows: true}
	}
	// plan9, js, wasip1 and anything newer: no socket options.
	return osTraits{}
}

// reuseAddrOnUnix reports whether a socket of kind k made with o ends up
// with SO_REUSEADDR on a Unix system: for TCP unless turned off (Go sets it
// on listeners, Dial on clients), for UDP only when asked.
func reuseAddrOnUnix(k kind, o *options) bool {
	if k == kindTCPListen || k == kindTCPDial {
		return o.reuseAddr != off
	}
	return o.reuseAddr == on
}

// via tells whether the plan is for Listen, which can wrap the listener it
// returns, or for Control and ListenConfig, which cannot.
type via uint8

const (
	viaListen via = iota + 1
	viaControl
)

// plan returns the setsockopt steps that goos needs for a socket of kind k
// with options o, in order, and whether Listen must set RST-on-close on each
// accepted connection itself. Every error is found here, before a socket
// exists.
func plan(goos string, k kind, o *options, v via) (steps []step, wrapRST bool, err error) {
	if o.err != nil {
		return nil, false, o.err
	}
	t := traitsOf(goos)
	unsupported := func(what string) error {
		return fmt.Errorf("reuse: %s on %s: %w", what, goos, errors.ErrUnsupported)
	}
	if k == kindLocal {
		for _, c := range []struct {
			asked bool
			name  string
		}{
			{o.reuseAddr != unset, "WithReuseAddr"},
			{o.reusePort != unset, "WithReusePort"},
			{o.exclusive != unset, "WithExclusiveAddr"},
			{o.rstOnClose, "WithRSTOnClose"},
		} {
			if c.asked {
				return nil, false, fmt.Errorf("reuse: %s does not apply to unix and ip networks", c.name)
			}
		}
		return nil, false, nil
	}
	if o.rstOnClose && k == kindUDP {
		return nil, false, errors.New("reuse: WithRSTOnClose does not apply to UDP")
	}
	if o.reusePort == on && o.exclusive == on {
		return nil, false, errors.New("reuse: WithReusePort(true) and WithExclusiveAddr(true) ask for opposite things")
	}
	if !t.sockets {
		// Defaults are what Go does; anything asked for cannot be done.
		switch {
		case o.reuseAddr != unset:
			return nil, false, unsupported("WithReuseAddr")
		case o.reusePort == on:
			return nil, false, unsupported("WithReusePort")
		case o.exclusive == on:
			return nil, false, unsupported("WithExclusiveAddr")
		case o.rstOnClose:
			return nil, false, unsupported("WithRSTOnClose")
		}
		return nil, false, nil
	}

	// SO_REUSEADDR.
	switch {
	case t.windows && k != kindUDP:
		// Never on Windows TCP: there it would let another socket take a
		// port in use. Off is what Windows does anyway; on is refused
		// rather than ignored.
		if o.reuseAddr == on {
			return nil, false, fmt.Errorf("reuse: WithReuseAddr(true) for TCP on %s, where SO_REUSEADDR lets another socket take a port in use: %w", goos, errors.ErrUnsupported)
		}
	case k == kindUDP:
		if o.reuseAddr != unset {
			steps = append(steps, step{soReuseAddr, o.reuseAddr == on})
		}
	case k == kindTCPListen:
		// On every Unix, Go's net package sets SO_REUSEADDR=1 on stream
		// listeners before Control runs (net/sockopt_{linux,bsd,solaris,aix}.go):
		// only clearing it costs a system call.
		if !reuseAddrOnUnix(k, o) {
			steps = append(steps, step{soReuseAddr, false})
		}
	case k == kindTCPDial:
		if reuseAddrOnUnix(k, o) {
			steps = append(steps, step{soReuseAddr, true})
		}
	}

	// SO_REUSEPORT, SO_REUSEPORT_LB.
	if o.reusePort == on {
		if t.reusePort == 0 {
			return nil, false, unsupported("WithReusePort")
		}
		steps = append(steps, step{t.reusePort, true})
	}

	// SO_EXCLUSIVEADDRUSE: on by default for Windows TCP listeners only.
	if t.windows && (o.exclusive == on || (o.exclusive == unset && k == kindTCPListen)) {
		if k == kindUDP && o.reuseAddr == on {
			return nil, false, errors.New("reuse: WithReuseAddr(true) and WithExclusiveAddr(true) ask for opposite things")
		}
		steps = append(steps, step{soExclusiveAddrUse, true})
	}

	// SO_LINGER {1, 0}.
	if o.rstOnClose {
		switch {
		case k == kindTCPDial || t.lingerInherited:
			steps = append(steps, step{soLinger, true})
		case v == viaListen:
			wrapRST = true
		default:
			return nil, false, unsupported("WithRSTOnClose through Control (accepted sockets may not inherit SO_LINGER; use Listen)")
		}
	}
	return steps, wrapRST, nil
}
