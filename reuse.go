package reuse

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"syscall"
)

// Listen announces on the local network address, like net.Listen, with the
// socket options that make a restart safe (see the package's Per OS table);
// opts change them. The network must be "tcp", "tcp4", "tcp6", "unix" or
// "unixpacket". The result is the stdlib's *net.TCPListener or
// *net.UnixListener, except with WithRSTOnClose where accepted sockets do
// not inherit SO_LINGER, and for a socket handed over by Upgrade whose
// SO_LINGER differs from what was asked (the old process still shares it):
// then its Accept and AcceptTCP set it on each connection.
//
// An inherited socket is returned instead of a new one when it is what
// network and address ask for: one handed over by the Upgrade that started
// this process, or one of systemd's socket activation. A host name is looked
// up, ":8080" for "tcp" is a dual-stack [::]:8080, a unix socket is matched
// by its path, and port 0 takes the first socket, in the order they were
// handed over, that a Listen for port 0 made in the old process. One that
// holds the port but differs (IPv4 only where both stacks were asked for, one
// address where all were) is an error that says how, as is SO_REUSEPORT,
// which cannot change after bind; the other options are set on it, and
// WithControl functions run on it.
//
// For a unix socket path taken by a stale socket file, Listen may remove
// the file and bind again: see "Stale unix sockets" in the package
// documentation. A wait there for another process lasts until
// ListenContext's deadline, 3 s without one.
//
// Errors are as the package documentation's "Errors" section says; an
// option the OS cannot honour gives an error for which
// errors.Is(err, errors.ErrUnsupported) holds.
func Listen(network, address string, opts ...Option) (net.Listener, error) {
	return ListenContext(context.Background(), network, address, opts...)
}

// ListenContext is Listen with a context, which bounds the address
// resolution; cancelling it after ListenContext returns does not affect the
// listener. A nil ctx is an error.
func ListenContext(ctx context.Context, network, address string, opts ...Option) (net.Listener, error) {
	lc, o, wrapRST, err := listenConfig(ctx, network, false, opts)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	ln, flag, err := takeListener(ctx, network, address, &o, wrapRST)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	if ln == nil {
		flag = flagOf(network, address)
		if network == "unix" || network == "unixpacket" {
			ln, err = listenUnix(ctx, &lc, network, address)
		} else {
			ln, err = lc.Listen(ctx, network, address)
		}
		if err != nil {
			return nil, explainAddrInUse(network, address, o.bindInfo(network, false), err)
		}
		if wrapRST {
			ln = &lingerListener{ln.(*net.TCPListener), true}
		}
	}
	track(ln, flag)
	return ln, nil
}

// Flags of a handed-over socket, which flagOf names on every OS.
const (
	flagNone   = '-'
	flagUnlink = 'u'
	flagZero   = 'z'
)

// portZero reports whether address asks for a port the system picks.
func portZero(address string) bool {
	_, port, err := net.SplitHostPort(address)
	return err == nil && (port == "" || port == "0")
}

// flagOf is how Upgrade marks a socket that Listen or ListenPacket made for
// network and address: a unix listener removes its path on Close, as
// net.Listen's does, and a request for port 0 takes only a socket made for
// port 0.
func flagOf(network, address string) byte {
	switch {
	case network == "unix" || network == "unixpacket":
		return flagUnlink
	case network != "unixgram" && portZero(address):
		return flagZero
	}
	return flagNone
}

// ListenPacket announces on the local network address, like
// net.ListenPacket. The network must be "udp", "udp4", "udp6", "unixgram", or
// an ip network such as "ip4:1". By default it sets no socket option beyond
// Go's own (for why not SO_REUSEADDR, see WithReuseAddr); for a multicast
// group address Go itself sets SO_REUSEADDR, which WithReuseAddr(false)
// clears, and on the BSDs and AIX also SO_REUSEPORT, which is left as Go set
// it. It takes an inherited socket as Listen does (not for ip networks).
// Errors are as for Listen.
func ListenPacket(network, address string, opts ...Option) (net.PacketConn, error) {
	return ListenPacketContext(context.Background(), network, address, opts...)
}

// ListenPacketContext is ListenPacket with a context, which bounds the
// address resolution; cancelling it after ListenPacketContext returns does
// not affect the conn. A nil ctx is an error.
func ListenPacketContext(ctx context.Context, network, address string, opts ...Option) (net.PacketConn, error) {
	lc, o, _, err := listenConfig(ctx, network, true, opts)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	pc, flag, err := takePacketConn(ctx, network, address, &o)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	if pc == nil {
		flag = flagOf(network, address)
		if pc, err = lc.ListenPacket(ctx, network, address); err != nil {
			return nil, explainAddrInUse(network, address, o.bindInfo(network, false), err)
		}
	}
	track(pc, flag)
	return pc, nil
}

// listenConfig checks the network against the verb (packet or stream) and
// the options against the network, all before a socket exists.
func listenConfig(ctx context.Context, network string, packet bool, opts []Option) (lc net.ListenConfig, o options, wrapRST bool, err error) {
	if ctx == nil {
		return lc, o, false, errors.New("reuse: nil Context")
	}
	k, ok := kindOf(network, false)
	if !ok {
		return lc, o, false, net.UnknownNetworkError(network)
	}
	isPacket := k == kindUDP || (k == kindLocal && network != "unix" && network != "unixpacket")
	switch {
	case packet && !isPacket:
		return lc, o, false, fmt.Errorf("reuse: network %q is not a packet network: use Listen", network)
	case !packet && isPacket:
		return lc, o, false, fmt.Errorf("reuse: network %q is not a stream network: use ListenPacket", network)
	}
	o = build(opts)
	steps, wrapRST, err := plan(runtime.GOOS, k, &o, viaListen)
	if err != nil {
		return lc, o, false, err
	}
	lc.Control = control(steps, o.controls)
	return lc, o, wrapRST, nil
}

// bindInfo describes, for the diagnosis of a failed bind, what the socket
// asked for; explainAddrInUse fills in the address from the error.
func (o *options) bindInfo(network string, dial bool) bindInfo {
	k, _ := kindOf(network, dial)
	return bindInfo{
		kind:      k,
		v6only:    network == "tcp6" || network == "udp6", // Go sets IPV6_V6ONLY for these
		reuseAddr: reuseAddrOnUnix(k, o),
		reusePort: o.reusePort == on,
	}
}

// ListenConfig returns a net.ListenConfig whose Control applies opts, for
// callers that need its other fields (KeepAlive, SetMultipathTCP) or its
// context-taking methods. Where opts ask for nothing beyond what Go already
// does on this OS, Control is nil, so the listener costs exactly what
// net.Listen costs. Errors in opts are reported by Control, when a Listen
// runs, as described there.
func ListenConfig(opts ...Option) *net.ListenConfig {
	o := build(opts)
	if o.err == nil && len(o.controls) == 0 {
		empty := true
		for _, k := range []kind{kindTCPListen, kindUDP, kindLocal} {
			steps, _, err := plan(runtime.GOOS, k, &o, viaControl)
			empty = empty && err == nil && len(steps) == 0
		}
		if empty {
			return &net.ListenConfig{}
		}
	}
	return &net.ListenConfig{Control: controlOf(&o)}
}

// Control returns a function for net.ListenConfig.Control that applies opts
// to each listening socket, for code that builds its own ListenConfig. It
// chooses what to set from the network Go passes it ("tcp4", "udp6", ...).
// Unlike Listen, it reports a wrong option only once the socket exists: the
// error fails that Listen, and Go closes the socket. Use it for listeners;
// for a client socket use Dial, whose defaults differ.
func Control(opts ...Option) func(network, address string, c syscall.RawConn) error {
	o := build(opts)
	return controlOf(&o)
}

func controlOf(o *options) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		k, ok := kindOf(network, false)
		if !ok {
			return net.UnknownNetworkError(network)
		}
		steps, _, err := plan(runtime.GOOS, k, o, viaControl)
		if err != nil {
			return err
		}
		if fn := control(steps, o.controls); fn != nil {
			return fn(network, address, c)
		}
		return nil
	}
}

// control returns the Control function that sets steps and then runs the
// caller's functions, or nil when there is nothing to do, so that Go skips
// RawConn.Control altogether. Setting an option to a value is idempotent, as
// it must be: Go may call Control twice for one Listen (MPTCP, then TCP).
func control(steps []step, user []func(string, string, syscall.RawConn) error) func(string, string, syscall.RawConn) error {
	if len(steps) == 0 && len(user) == 0 {
		return nil
	}
	return func(network, address string, c syscall.RawConn) error {
		if err := apply(c, steps); err != nil {
			return err
		}
		for _, fn := range user {
			if err := fn(network, address, c); err != nil {
				return err
			}
		}
		return nil
	}
}

// apply runs steps on c in one RawConn.Control call.
func apply(c syscall.RawConn, steps []step) error {
	if len(steps) == 0 {
		return nil
	}
	var serr error
	err := c.Control(func(fd uintptr) {
		for _, s := range steps {
			if serr = setsockopt(fd, s); serr != nil {
				return
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// Dial connects to raddr, like net.Dial, from the local address laddr (empty:
// the system picks one). The network must be "tcp", "tcp4", "tcp6", "udp",
// "udp4" or "udp6". With a local address, for TCP, it sets SO_REUSEADDR, so
// that a client that reconnects from a fixed port is not refused by the
// TIME_WAIT its own last connection left; a connect to the same raddr can
// still fail while that exact four-tuple is in TIME_WAIT. WithReuseAddr(false)
// turns it off, WithReusePort(true) adds SO_REUSEPORT, and WithRSTOnClose
// makes Close send RST. Errors are as for Listen.
func Dial(network, laddr, raddr string, opts ...Option) (net.Conn, error) {
	return DialContext(context.Background(), network, laddr, raddr, opts...)
}

// DialContext is Dial with a context, which bounds the whole dial.
func DialContext(ctx context.Context, network, laddr, raddr string, opts ...Option) (net.Conn, error) {
	d, o, err := dialer(ctx, network, laddr, opts)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	c, err := d.DialContext(ctx, network, raddr)
	if err != nil && laddr != "" {
		return nil, explainAddrInUse(network, laddr, o.bindInfo(network, true), err)
	}
	return c, err
}

func dialer(ctx context.Context, network, laddr string, opts []Option) (*net.Dialer, *options, error) {
	if ctx == nil {
		return nil, nil, errors.New("reuse: nil Context")
	}
	k, ok := kindOf(network, true)
	if !ok || k == kindLocal {
		return nil, nil, fmt.Errorf("reuse: Dial takes tcp, tcp4, tcp6, udp, udp4 or udp6: %w", net.UnknownNetworkError(network))
	}
	o := build(opts)
	if laddr == "" && o.reuseAddr == unset {
		o.reuseAddr = off // the system picks a fresh port: nothing to reuse
	}
	steps, _, err := plan(runtime.GOOS, k, &o, viaControl)
	if err != nil {
		return nil, nil, err
	}
	d := &net.Dialer{Control: control(steps, o.controls)}
	if laddr == "" {
		return d, &o, nil
	}
	ip, port, err := resolveLocal(ctx, network, laddr)
	if err != nil {
		return nil, nil, fmt.Errorf("reuse: local address %q: %w", laddr, err)
	}
	if k == kindUDP {
		d.LocalAddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, port))
	} else {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(ip, port))
	}
	return d, &o, nil
}

// resolveLocal resolves a local address as net.ResolveTCPAddr does, but
// with ctx bounding the lookups: for a host name, the first IPv4 address
// unless network says "6", else the first one.
func resolveLocal(ctx context.Context, network, laddr string) (netip.Addr, uint16, error) {
	host, service, err := net.SplitHostPort(laddr)
	if err != nil {
		return netip.Addr{}, 0, err
	}
	port, err := net.DefaultResolver.LookupPort(ctx, network, service)
	if err != nil {
		return netip.Addr{}, 0, err
	}
	if host == "" {
		return netip.Addr{}, uint16(port), nil
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if v := network[len(network)-1]; v == '4' && !ip.Unmap().Is4() || v == '6' && ip.Is4() {
			return netip.Addr{}, 0, &net.AddrError{Err: "no suitable address", Addr: host}
		}
		return ip, uint16(port), nil
	}
	ipnet := "ip"
	switch network[len(network)-1] {
	case '4':
		ipnet = "ip4"
	case '6':
		ipnet = "ip6"
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, ipnet, host)
	if err != nil {
		return netip.Addr{}, 0, err
	}
	for _, ip := range ips {
		if ip.Unmap().Is4() {
			return ip.Unmap(), uint16(port), nil
		}
	}
	return ips[0], uint16(port), nil
}

// IsAddrInUse reports whether err, or any error it wraps, says that the
// address is already in use: EADDRINUSE on Unix, WSAEADDRINUSE (10048) on
// Windows, where errors.Is(err, syscall.EADDRINUSE) is false for a real bind
// failure.
func IsAddrInUse(err error) bool {
	return isAddrInUse(err)
}
