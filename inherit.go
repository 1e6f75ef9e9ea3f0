package reuse

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
)

// family is an address family, as the inherited sockets are matched by it.
type family uint8

const (
	familyInet4 family = iota + 1
	familyInet6
	familyUnix
)

// sockType is a socket type, apart from the OS's numbers for it.
type sockType uint8

const (
	typeStream sockType = iota + 1
	typeDgram
	typeSeqpacket
)

// inherited describes one socket this process was given when it started, by
// systemd socket activation or by its parent's Upgrade.
type inherited struct {
	fd   int
	name string // LISTEN_FDNAMES entry; "" when none
	from string // "systemd" or "the parent's Upgrade"

	family    family
	typ       sockType
	listening bool
	addr      netip.AddrPort // inet sockets, as getsockname gives it
	v6only    bool           // inet6 sockets: IPV6_V6ONLY
	path      string         // unix sockets: the bound path, "@name" when abstract
	pathFile  os.FileInfo    // the socket file at path, when there is one
	unlink    bool           // a unix listener that removes its path on Close
	zero      bool           // made by a Listen that asked for port 0
}

func (s *inherited) String() string {
	what := s.path
	if s.family != familyUnix {
		what = s.addr.String()
	}
	name := ""
	if s.name != "" {
		name = " " + strconv.Quote(s.name)
	}
	return fmt.Sprintf("fd %d%s (%s, from %s)", s.fd, name, what, s.from)
}

// want is what a Listen or ListenPacket asks for, in the terms the inherited
// sockets are matched in.
type want struct {
	network     string
	typ         sockType
	family      family       // 0: either inet family, as for "tcp" and "udp"
	any         bool         // the wildcard address: "" or an unspecified IP
	addrs       []netip.Addr // the addresses host stands for, when not any
	port        uint16       // 0: any port
	path        string       // unix networks
	pathFile    os.FileInfo  // the file at path, when there is one
	noDualStack bool         // Go's "tcp" and "udp" listen IPv4 only here
}

// wantOf maps network to the socket type and family an inherited socket must
// have, or ok false for a network no inherited socket can serve.
func wantOf(network string) (w want, ok bool) {
	w.network = network
	switch network {
	case "tcp", "tcp4", "tcp6":
		w.typ = typeStream
	case "udp", "udp4", "udp6":
		w.typ = typeDgram
	case "unix":
		w.typ, w.family = typeStream, familyUnix
	case "unixpacket":
		w.typ, w.family = typeSeqpacket, familyUnix
	case "unixgram":
		w.typ, w.family = typeDgram, familyUnix
	default:
		return w, false
	}
	switch network[len(network)-1] {
	case '4':
		w.family = familyInet4
	case '6':
		w.family = familyInet6
	}
	return w, true
}

// resolve fills in the addresses and port of w from address, as Go's
// Listen would read it: a service name for the port, a host name looked up
// with ctx.
func (w *want) resolve(ctx context.Context, address string) error {
	if w.family == familyUnix {
		w.path = address
		if address != "" && address[0] != '@' {
			w.pathFile, _ = os.Stat(address)
		}
		return nil
	}
	host, service, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	port, err := net.DefaultResolver.LookupPort(ctx, w.network, service)
	if err != nil {
		return err
	}
	w.port = uint16(port)
	if host == "" {
		w.any = true
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return nil // no inherited socket is matched with a zone: net.Listen binds it
		}
		w.any = ip.IsUnspecified()
		w.addrs = []netip.Addr{ip.Unmap()}
		return nil
	}
	ipnet := "ip"
	switch w.family {
	case familyInet4:
		ipnet = "ip4"
	case familyInet6:
		ipnet = "ip6"
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, ipnet, host)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		w.addrs = append(w.addrs, a.Unmap())
	}
	return nil
}

// match reports whether s is the socket w asks for. When it is not, but s
// holds the same port on an address that overlaps w's, diff says how the two
// differ, for an error: binding anew would fail against s.
func (w *want) match(s *inherited) (ok bool, diff string) {
	if s.typ != w.typ || s.listening != (w.typ != typeDgram) {
		return false, ""
	}
	if w.family == familyUnix || s.family == familyUnix {
		// The same path, or two names of the same socket file (relative
		// and absolute, or through a symbolic link).
		same := w.path == s.path || w.pathFile != nil && s.pathFile != nil && os.SameFile(w.pathFile, s.pathFile)
		return w.family == s.family && w.path != "" && same, ""
	}
	// Port 0 asks for a port the system picks: only a socket made for such
	// a request is one, never one with a port of its own.
	if w.port != 0 && s.addr.Port() != w.port || w.port == 0 && !s.zero {
		return false, ""
	}
	sa := s.addr.Addr().Unmap()
	dual := s.family == familyInet6 && !s.v6only
	if w.any {
		if !sa.IsUnspecified() {
			overlaps := w.family == 0 || w.family == s.family || w.family == familyInet6 && dual
			if w.port != 0 && overlaps {
				return false, fmt.Sprintf("it is %v, one address, and %q asks for every address: ask for %q", s.addr, w.network, s.addr.String())
			}
			return false, ""
		}
		// A wildcard request is for one stack, or for both ("tcp", "udp").
		switch w.family {
		case familyInet4:
			if s.family == familyInet4 {
				return true, ""
			}
			if dual && w.port != 0 {
				return false, fmt.Sprintf("it is dual-stack, and %q asks for IPv4 only: ask for %q", w.network, w.network[:3])
			}
		case familyInet6:
			if s.family == familyInet6 && s.v6only {
				return true, ""
			}
			if dual && w.port != 0 {
				return false, fmt.Sprintf("it is dual-stack, and %q asks for IPv6 only: ask for %q", w.network, w.network[:3])
			}
		default:
			if dual || s.family == familyInet4 && w.noDualStack {
				return true, ""
			}
			if w.port != 0 && s.family == familyInet6 {
				return false, fmt.Sprintf("it is IPv6 only, and %q asks for IPv4 and IPv6: ask for %q", w.network, w.network[:3]+"6")
			}
			if w.port != 0 {
				return false, fmt.Sprintf("it is IPv4 only, and %q asks for IPv4 and IPv6: ask for %q", w.network, w.network[:3]+"4")
			}
		}
		return false, ""
	}
	for _, a := range w.addrs {
		covers := s.family == familyInet4 && a.Is4() || s.family == familyInet6 && (a.Is6() || dual)
		switch {
		case a == sa && (w.family == 0 || w.family == s.family):
			return true, ""
		case w.port != 0 && sa.IsUnspecified() && covers:
			return false, fmt.Sprintf("it is the wildcard %v, which covers %v: ask for %q", s.addr, netip.AddrPortFrom(a, w.port), ":"+strconv.Itoa(int(w.port)))
		}
	}
	return false, ""
}
