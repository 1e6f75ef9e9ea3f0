package census

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"strconv"
	"time"
)

// procNetTCP are the kernel's text tables of TCP sockets. tcp6 is absent when
// the kernel runs without IPv6 (ipv6.disable=1, or built without it).
var procNetTCP = [...]struct {
	path     string
	optional bool
}{{"/proc/net/tcp", false}, {"/proc/net/tcp6", true}}

// readProc reads the TCP sockets on local port port from /proc/net/tcp and
// /proc/net/tcp6 and calls add with each. The kernel formats the whole table
// for every read, so this costs time in proportion to all TCP sockets, not
// to the ones on port.
func readProc(port uint16, deadline time.Time, add func(Socket)) error {
	for _, t := range procNetTCP {
		f, err := os.Open(t.path)
		if err != nil {
			if t.optional && errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return err
		}
		err = parseProcNetTCP(f, port, deadline, add)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", t.path, err)
		}
	}
	return nil
}

// procReadSize is the size of each read of the table, and recentLines how
// many of the last sockets on the port parseProcNetTCP remembers to drop
// repeats (see there).
const (
	procReadSize = 64 << 10
	recentLines  = 64
)

// parseProcNetTCP calls add with each socket on local port port listed in r,
// in the format of /proc/net/tcp or /proc/net/tcp6, and gives up when
// deadline passes. A line is
//
//	sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
//	0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 1000 0 12345 ...
//
// Addresses are hexadecimal 32-bit words (one for IPv4, four for IPv6), each
// printed as a host-order integer; ports and state are hexadecimal, uid and
// inode decimal.
//
// The kernel prints the table one read at a time while sockets come and go,
// and resumes each read where it counts the last one ended: sockets added or
// removed in between shift that place, and the sockets around it are listed
// twice (seen: 309 repeats in one read of a port with 15,000 connections,
// in 4 KiB reads on a host with thousands of connections a second, none in
// 40 reads of 64 KiB). Reads of procReadSize make few such places, and the
// last recentLines sockets listed drop the repeats near them: two identical
// entries are one socket, since even two SO_REUSEPORT listeners differ in
// their inodes. A repeat farther away, on a table that changes fast, is
// counted twice.
func parseProcNetTCP(r io.Reader, port uint16, deadline time.Time, add func(Socket)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, procReadSize), procReadSize)
	var recent [recentLines]Socket
	seen := 0
	for line := 0; sc.Scan(); line++ {
		if line%64 == 0 && time.Now().After(deadline) {
			return os.ErrDeadlineExceeded
		}
		var f [10][]byte
		n := 0
		for rest := sc.Bytes(); n < len(f); n++ {
			rest = bytes.TrimLeft(rest, " ")
			if len(rest) == 0 {
				break
			}
			end := bytes.IndexByte(rest, ' ')
			if end < 0 {
				end = len(rest)
			}
			f[n], rest = rest[:end], rest[end:]
		}
		if n == 0 || string(f[0]) == "sl" {
			continue // blank, or the header line
		}
		if n < len(f) {
			return fmt.Errorf("malformed line %q", sc.Bytes())
		}
		s, ok, err := parseProcSocket(f, port)
		if err != nil {
			return fmt.Errorf("malformed line %q: %w", sc.Bytes(), err)
		}
		if !ok || repeated(recent[:min(seen, recentLines)], s) {
			continue
		}
		recent[seen%recentLines] = s
		seen++
		add(s)
	}
	return sc.Err()
}

func repeated(recent []Socket, s Socket) bool {
	for _, r := range recent {
		if r == s {
			return true
		}
	}
	return false
}

// parseProcSocket converts one /proc/net/tcp line, split into its first ten
// fields, if its local port is port.
func parseProcSocket(f [10][]byte, port uint16) (Socket, bool, error) {
	local, err := parseProcAddr(f[1])
	if err != nil || local.Port() != port {
		return Socket{}, false, err
	}
	remote, err := parseProcAddr(f[2])
	if err != nil {
		return Socket{}, false, err
	}
	state, err := parseUint(f[3], 16, 8)
	if err != nil {
		return Socket{}, false, fmt.Errorf("state: %w", err)
	}
	uid, err := parseUint(f[7], 10, 32)
	if err != nil {
		return Socket{}, false, fmt.Errorf("uid: %w", err)
	}
	inode, err := parseUint(f[9], 10, 64)
	if err != nil {
		return Socket{}, false, fmt.Errorf("inode: %w", err)
	}
	return Socket{
		Local:  local,
		Remote: remote,
		State:  State(state),
		UID:    uint32(uid),
		Inode:  inode,
	}, true, nil
}

// Hex digits of an IPv4 and an IPv6 address in /proc/net/tcp*.
const (
	net4Hex = 2 * 4
	net6Hex = 2 * 16
)

// parseProcAddr parses "0100007F:1F90" (IPv4) or 32 hex digits, a colon and
// 4 hex digits (IPv6). The kernel prints each 32-bit word of the address as
// an integer in host byte order (%08X of __be32), so its bytes come back by
// storing the integer in host order.
func parseProcAddr(b []byte) (netip.AddrPort, error) {
	i := bytes.IndexByte(b, ':')
	if i < 0 {
		return netip.AddrPort{}, fmt.Errorf("address %q: no port", b)
	}
	hex, p := b[:i], b[i+1:]
	port, err := parseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q: %w", b, err)
	}
	if len(hex) != net4Hex && len(hex) != net6Hex {
		return netip.AddrPort{}, fmt.Errorf("address %q: %d hex digits", b, len(hex))
	}
	var raw [16]byte
	const wordHex = 8
	for w := 0; w < len(hex)/wordHex; w++ {
		v, err := parseUint(hex[w*wordHex:(w+1)*wordHex], 16, 32)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("address %q: %w", b, err)
		}
		binary.NativeEndian.PutUint32(raw[w*4:], uint32(v))
	}
	if len(hex) == net4Hex {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(raw[:4])), uint16(port)), nil
	}
	return netip.AddrPortFrom(netip.AddrFrom16(raw), uint16(port)), nil
}

// parseUint parses b without converting it to a string first, which would
// allocate for each of the table's lines.
func parseUint(b []byte, base, bits int) (uint64, error) {
	if len(b) == 0 {
		return 0, strconv.ErrSyntax
	}
	var v uint64
	for _, c := range b {
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, strconv.ErrSyntax
		}
		if int(d) >= base {
			return 0, strconv.ErrSyntax
		}
		if v > (1<<bits-1-uint64(d))/uint64(base) {
			return 0, strconv.ErrRange
		}
		v = v*uint64(base) + uint64(d)
	}
	return v, nil
}
