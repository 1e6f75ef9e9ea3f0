package reuse

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The request and reply structures of netlink sock_diag for TCP, from
// include/uapi/linux/inet_diag.h; x/sys/unix does not define them. Fields
// marked __be are in network byte order, all others in the host's.

// inetDiagSockID is struct inet_diag_sockid.
type inetDiagSockID struct {
	sport  [2]byte  // __be16
	dport  [2]byte  // __be16
	src    [16]byte // __be32[4]; an IPv4 address fills the first 4 bytes
	dst    [16]byte // __be32[4]
	ifidx  uint32
	cookie [2]uint32
}

// inetDiagReqV2 is struct inet_diag_req_v2, the body of a
// SOCK_DIAG_BY_FAMILY request.
type inetDiagReqV2 struct {
	family   uint8
	protocol uint8
	ext      uint8 // INET_DIAG_* extensions wanted in the reply: none
	_        uint8
	states   uint32 // bit 1<<state for each TCP state to report
	id       inetDiagSockID
}

// inetDiagMsg is struct inet_diag_msg, the body of each reply message.
type inetDiagMsg struct {
	family  uint8
	state   uint8
	timer   uint8
	retrans uint8
	id      inetDiagSockID
	expires uint32
	rqueue  uint32
	wqueue  uint32
	uid     uint32
	inode   uint32
}

// inetDiagBcOp is struct inet_diag_bc_op, one instruction of the filter the
// kernel runs on every socket before it reports it. yes and no are how many
// bytes to advance by: the filter accepts a socket when a jump lands exactly
// on the program's end, and rejects it when a jump lands 4 bytes past it.
type inetDiagBcOp struct {
	code uint8
	yes  uint8
	no   uint16
}

// inetDiagHostcond is struct inet_diag_hostcond, the operand that follows an
// INET_DIAG_BC_S_COND instruction, without its flexible member addr[], which
// is empty for family AF_UNSPEC.
type inetDiagHostcond struct {
	family    uint8 // AF_UNSPEC: any address of any family
	prefixLen uint8
	_         [2]byte
	port      int32 // host byte order; -1 matches any port
}

// Values from include/uapi/linux/inet_diag.h that x/sys/unix lacks.
const (
	inetDiagReqBytecode = 1 // INET_DIAG_REQ_BYTECODE: the request attribute holding a filter
	inetDiagBcSCond     = 7 // INET_DIAG_BC_S_COND: match the local address and port
)

// diagRequest is a whole SOCK_DIAG_BY_FAMILY dump request: header, body and
// one attribute, the filter "local port == P". The kernel runs the filter
// while it walks its hash tables, so unrelated sockets are never copied out.
// INET_DIAG_BC_S_COND with AF_UNSPEC is what `ss '( sport = :P )'` sends and
// is understood by every kernel that has sock_diag.
type diagRequest struct {
	hdr  unix.NlMsghdr
	req  inetDiagReqV2
	attr unix.NlAttr
	op   inetDiagBcOp
	cond inetDiagHostcond
}

// The sizes the kernel ABI fixes; each pair of array types below fails to
// compile if the Go layout differs from the C one.
const (
	sizeofInetDiagReqV2 = 56
	sizeofInetDiagMsg   = 72
	sizeofDiagFilter    = 4 + 8 // inet_diag_bc_op + inet_diag_hostcond
	sizeofDiagRequest   = unix.SizeofNlMsghdr + sizeofInetDiagReqV2 + unix.SizeofNlAttr + sizeofDiagFilter
)

var (
	_ [unsafe.Sizeof(inetDiagReqV2{}) - sizeofInetDiagReqV2]byte
	_ [sizeofInetDiagReqV2 - unsafe.Sizeof(inetDiagReqV2{})]byte
	_ [unsafe.Sizeof(inetDiagMsg{}) - sizeofInetDiagMsg]byte
	_ [sizeofInetDiagMsg - unsafe.Sizeof(inetDiagMsg{})]byte
	_ [unsafe.Sizeof(diagRequest{}) - sizeofDiagRequest]byte
	_ [sizeofDiagRequest - unsafe.Sizeof(diagRequest{})]byte
)

// State numbers are the kernel's own (include/net/tcp_states.h, mirrored by
// x/sys/unix's BPF_TCP_* constants); this fails to compile if one differs.
var _ [0]struct{} = [(StateEstablished ^ unix.BPF_TCP_ESTABLISHED) |
	(StateSynSent ^ unix.BPF_TCP_SYN_SENT) |
	(StateSynRecv ^ unix.BPF_TCP_SYN_RECV) |
	(StateFinWait1 ^ unix.BPF_TCP_FIN_WAIT1) |
	(StateFinWait2 ^ unix.BPF_TCP_FIN_WAIT2) |
	(StateTimeWait ^ unix.BPF_TCP_TIME_WAIT) |
	(StateClose ^ unix.BPF_TCP_CLOSE) |
	(StateCloseWait ^ unix.BPF_TCP_CLOSE_WAIT) |
	(StateLastAck ^ unix.BPF_TCP_LAST_ACK) |
	(StateListen ^ unix.BPF_TCP_LISTEN) |
	(StateClosing ^ unix.BPF_TCP_CLOSING)]struct{}{}

// diagStates asks for every state State names (bits 1-11) and for
// TCP_BOUND_INACTIVE. The kernel adds its internal TCP_NEW_SYN_RECV
// (half-open connections, kept as request sockets) whenever SYN_RECV is asked
// for and reports them as SYN_RECV. TCP_BOUND_INACTIVE (Linux 6.8+) reports
// sockets that are bound but neither listening nor connected, as CLOSE: they
// hold the port too, and /proc/net/tcp cannot show them. Older kernels ignore
// the bit. Asking for it walks the bind hash as well (+0.2 ms with 65536
// buckets).
const diagStates = 1<<(StateClosing+1) - 1<<StateEstablished | 1<<tcpBoundInactive

// tcpBoundInactive is TCP_BOUND_INACTIVE (include/net/tcp_states.h), a state
// that only sock_diag filters use; x/sys/unix lacks it.
const tcpBoundInactive = 13

// diagBufSize bounds each read. Netlink never builds a dump datagram larger
// than 32 KiB, however large the reader's buffer (netlink_recvmsg caps
// max_recvmsg_len there); each socket takes about 124 bytes of it (header,
// inet_diag_msg and the attributes the kernel always adds).
const diagBufSize = 32 << 10

// sockets reads the table through netlink and falls back to /proc/net/tcp*
// on any netlink failure: sock_diag may be compiled out, its module absent,
// or the netlink family refused by a sandbox (seccomp, gVisor, SELinux).
func sockets(port uint16) ([]Socket, error) {
	socks, err := socketsNetlink(port)
	if err != nil {
		var procErr error
		socks, procErr = socketsProc(port)
		if procErr != nil {
			return nil, fmt.Errorf("reuse: Sockets(%d): %w; fallback: %w", port, err, procErr)
		}
	}
	resolveOwners(socks)
	return socks, nil
}

// socketsNetlink dumps the TCP sockets on local port port, IPv4 then IPv6,
// through one NETLINK_SOCK_DIAG socket.
func socketsNetlink(port uint16) ([]Socket, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("netlink sock_diag: %w", os.NewSyscallError("socket", err))
	}
	defer unix.Close(fd)

	buf := make([]byte, diagBufSize)
	var out []Socket
	for seq, family := range [...]uint8{unix.AF_INET, unix.AF_INET6} {
		out, err = diagDump(fd, buf, family, uint32(seq)+1, port, out)
		// A kernel without IPv6 may have no AF_INET6 diag handler: then
		// there are no IPv6 sockets to report.
		if family == unix.AF_INET6 && (errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EAFNOSUPPORT)) {
			err = nil
		}
		if err != nil {
			return nil, fmt.Errorf("netlink sock_diag: %w", err)
		}
	}
	return out, nil
}

// diagDump sends one dump request for family and appends the sockets of the
// reply, which may span many datagrams, to out.
func diagDump(fd int, buf []byte, family uint8, seq uint32, port uint16, out []Socket) ([]Socket, error) {
	req := diagRequest{
		hdr: unix.NlMsghdr{
			Len:   sizeofDiagRequest,
			Type:  unix.SOCK_DIAG_BY_FAMILY,
			Flags: unix.NLM_F_REQUEST | unix.NLM_F_DUMP,
			Seq:   seq,
		},
		req:  inetDiagReqV2{family: family, protocol: unix.IPPROTO_TCP, states: diagStates},
		attr: unix.NlAttr{Len: unix.SizeofNlAttr + sizeofDiagFilter, Type: inetDiagReqBytecode},
		op:   inetDiagBcOp{code: inetDiagBcSCond, yes: sizeofDiagFilter, no: sizeofDiagFilter + 4}, // yes: accept, no: reject
		cond: inetDiagHostcond{family: unix.AF_UNSPEC, port: int32(port)},
	}
	msg := (*[sizeofDiagRequest]byte)(unsafe.Pointer(&req))[:]
	kernel := &unix.SockaddrNetlink{Family: unix.AF_NETLINK}
	for {
		err := unix.Sendto(fd, msg, 0, kernel)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return out, os.NewSyscallError("sendto", err)
		}
		break
	}
	for {
		// MSG_TRUNC makes netlink return the datagram's real length, so a
		// reply that did not fit is detected instead of silently cut.
		n, from, err := unix.Recvfrom(fd, buf, unix.MSG_TRUNC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return out, os.NewSyscallError("recvfrom", err)
		}
		if n > len(buf) {
			return out, fmt.Errorf("%d-byte datagram exceeds the %d-byte buffer", n, len(buf))
		}
		if n < unix.SizeofNlMsghdr {
			return out, fmt.Errorf("short datagram of %d bytes", n)
		}
		if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
			continue // not from the kernel
		}
		var done bool
		out, done, err = parseDiag(buf[:n], seq, out)
		if err != nil || done {
			return out, err
		}
	}
}

// parseDiag appends the sockets in one datagram of a dump reply to out, and
// reports whether the datagram ended the dump.
func parseDiag(b []byte, seq uint32, out []Socket) (_ []Socket, done bool, _ error) {
	ne := binary.NativeEndian
	for len(b) >= unix.SizeofNlMsghdr {
		l := ne.Uint32(b[0:4])
		typ := ne.Uint16(b[4:6])
		mseq := ne.Uint32(b[8:12])
		if l < unix.SizeofNlMsghdr || uint64(l) > uint64(len(b)) {
			return out, false, fmt.Errorf("malformed message: length %d, %d bytes left", l, len(b))
		}
		payload := b[unix.SizeofNlMsghdr:l]
		next := (int(l) + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		b = b[min(next, len(b)):]
		if mseq != seq {
			continue // a stray answer to an earlier request
		}
		switch typ {
		case unix.NLMSG_DONE:
			// The dump's own result follows; a negative value is an errno.
			if len(payload) >= 4 {
				if e := int32(ne.Uint32(payload)); e < 0 {
					return out, false, os.NewSyscallError("dump", unix.Errno(-e))
				}
			}
			return out, true, nil
		case unix.NLMSG_ERROR:
			if len(payload) < 4 {
				return out, false, fmt.Errorf("malformed NLMSG_ERROR of %d bytes", len(payload))
			}
			if e := int32(ne.Uint32(payload)); e < 0 {
				return out, false, os.NewSyscallError("request", unix.Errno(-e))
			}
			return out, true, nil // an acknowledgement: the request is complete
		case unix.SOCK_DIAG_BY_FAMILY:
			if len(payload) < sizeofInetDiagMsg {
				return out, false, fmt.Errorf("malformed inet_diag_msg of %d bytes", len(payload))
			}
			var m inetDiagMsg
			copy((*[sizeofInetDiagMsg]byte)(unsafe.Pointer(&m))[:], payload)
			if s, ok := m.socket(); ok {
				out = append(out, s)
			}
		}
	}
	return out, false, nil
}

// socket converts a reply, keeping IPv4-mapped IPv6 addresses as they are.
func (m *inetDiagMsg) socket() (Socket, bool) {
	var local, remote netip.Addr
	switch m.family {
	case unix.AF_INET:
		local = netip.AddrFrom4([4]byte(m.id.src[:4]))
		remote = netip.AddrFrom4([4]byte(m.id.dst[:4]))
	case unix.AF_INET6:
		local = netip.AddrFrom16(m.id.src)
		remote = netip.AddrFrom16(m.id.dst)
	default:
		return Socket{}, false
	}
	return Socket{
		Local:  netip.AddrPortFrom(local, binary.BigEndian.Uint16(m.id.sport[:])),
		Remote: netip.AddrPortFrom(remote, binary.BigEndian.Uint16(m.id.dport[:])),
		State:  State(m.state),
		UID:    m.uid,
		Inode:  uint64(m.inode),
	}, true
}

// procNetTCP are the kernel's text tables of TCP sockets. tcp6 is absent when
// the kernel runs without IPv6 (ipv6.disable=1, or built without it).
var procNetTCP = [...]struct {
	path     string
	optional bool
}{{"/proc/net/tcp", false}, {"/proc/net/tcp6", true}}

// socketsProc reads the TCP sockets on local port port from /proc/net/tcp and
// /proc/net/tcp6. The kernel formats the whole table for every read, so this
// costs time in proportion to all TCP sockets, not to the ones on port.
func socketsProc(port uint16) ([]Socket, error) {
	var out []Socket
	for _, t := range procNetTCP {
		f, err := os.Open(t.path)
		if err != nil {
			if t.optional && errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return nil, err
		}
		out, err = parseProcNetTCP(f, port, out)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", t.path, err)
		}
	}
	// The kernel prints the table in pages while sockets come and go, and a
	// socket that moved in between can be listed twice (seen: one FIN_WAIT2
	// in two reads of a page). Two identical entries are one socket: even
	// two SO_REUSEPORT listeners differ in their inodes.
	seen := make(map[Socket]bool, len(out))
	uniq := out[:0]
	for _, s := range out {
		if !seen[s] {
			seen[s] = true
			uniq = append(uniq, s)
		}
	}
	return uniq, nil
}

// parseProcNetTCP appends the sockets on local port port listed in r, in the
// format of /proc/net/tcp or /proc/net/tcp6, to out. A line is
//
//	sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
//	0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 1000 0 12345 ...
//
// Addresses are hexadecimal 32-bit words (one for IPv4, four for IPv6), each
// printed as a host-order integer; ports and state are hexadecimal, uid and
// inode decimal.
func parseProcNetTCP(r io.Reader, port uint16, out []Socket) ([]Socket, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
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
			return out, fmt.Errorf("malformed line %q", sc.Bytes())
		}
		s, ok, err := parseProcSocket(f, port)
		if err != nil {
			return out, fmt.Errorf("malformed line %q: %w", sc.Bytes(), err)
		}
		if ok {
			out = append(out, s)
		}
	}
	return out, sc.Err()
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
	var raw [16]byte
	const wordHex = 8
	if len(hex) != net4Hex && len(hex) != net6Hex {
		return netip.AddrPort{}, fmt.Errorf("address %q: %d hex digits", b, len(hex))
	}
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

// Hex digits of an IPv4 and an IPv6 address in /proc/net/tcp*.
const (
	net4Hex = 2 * 4
	net6Hex = 2 * 16
)

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

// resolveOwners fills in PID and Command of the sockets with an inode. Linux
// tells which process holds a socket only through the links
// "socket:[inode]" under /proc/PID/fd, so this looks at one open file after
// another of each process until every inode is found, skipping processes it
// may not inspect or that exit meanwhile. The calling process comes first and
// is looked at with fstat on its own descriptors, 4 times cheaper than a link
// read through /proc; the others follow in the order /proc lists them, by
// PID.
func resolveOwners(socks []Socket) {
	o := ownerScan{socks: socks}
	for i, s := range socks {
		if s.Inode == 0 {
			continue
		}
		if o.want == nil {
			o.want = make(map[uint64]int, len(socks))
		}
		o.want[s.Inode] = i
	}
	if len(o.want) == 0 {
		return
	}
	o.dents = make([]byte, dentsBufSize)
	self := os.Getpid()
	if o.scanSelf(self); len(o.want) == 0 {
		return
	}
	proc, err := unix.Open("/proc", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(proc)
	buf := make([]byte, dentsBufSize) // o.dents holds each process's listing
	for {
		n, err := unix.Getdents(proc, buf)
		if err != nil || n <= 0 {
			return
		}
		for b := buf[:n]; ; {
			name, rest, ok := nextDirent(b)
			if !ok {
				break
			}
			b = rest
			pid, err := parseUint(name, 10, 31)
			if err != nil || pid == 0 || int(pid) == self {
				continue // not a process, or done already
			}
			if o.scanOther(proc, string(name), int(pid)); len(o.want) == 0 {
				return
			}
		}
	}
}

// dentsBufSize is the size of a buffer for getdents64: about 150 entries of
// /proc or of a /proc/PID/fd directory.
const dentsBufSize = 4 << 10

// ownerScan is the state of one resolveOwners call, with buffers reused from
// one descriptor and one process to the next.
type ownerScan struct {
	want  map[uint64]int // inode -> index in socks, of the sockets not found yet
	socks []Socket
	comm  string // the command of the process being scanned, once needed
	dents []byte // getdents64 output for a /proc/PID/fd directory
	// link holds a link's target; a longer one, never a socket's, is cut.
	link [len("socket:[18446744073709551615]")]byte
	name [len("2147483647") + 1]byte // a descriptor's name, NUL-terminated
}

// scanSelf looks through the calling process's own descriptors, whose PID is
// pid. /proc/self, unlike /proc/<Getpid()>, is right even when /proc is
// another PID namespace's.
func (o *ownerScan) scanSelf(pid int) {
	dir, err := unix.Open("/proc/self/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(dir)
	o.comm = ""
	var st unix.Stat_t
	o.eachFD(dir, func(fd int, _ []byte) bool {
		// A descriptor closed and reused since the count or the listing
		// is still this process's: whatever fstat finds is ours.
		if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			return false
		}
		return o.found(uint64(st.Ino), pid, "self")
	})
}

// scanOther looks through the open files of process pid, named name in the
// /proc directory proc, by reading the links in its fd directory.
func (o *ownerScan) scanOther(proc int, name string, pid int) {
	dir, err := unix.Openat(proc, name+"/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return // another user's process, or gone
	}
	defer unix.Close(dir)
	o.comm = ""
	o.eachFD(dir, func(fd int, fdName []byte) bool {
		if fdName == nil {
			fdName = append(strconv.AppendUint(o.name[:0], uint64(fd), 10), 0)
		}
		n, err := readlinkat(dir, &fdName[0], o.link[:])
		if err != nil {
			return false // closed meanwhile, or never open
		}
		ino, ok := socketInode(o.link[:n])
		return ok && o.found(ino, pid, name)
	})
}

// found records that process pid, named name under /proc, holds the socket
// with inode ino if that is one of the sockets wanted, and reports whether
// none is left to find.
func (o *ownerScan) found(ino uint64, pid int, name string) (done bool) {
	i, ok := o.want[ino]
	if !ok {
		return false
	}
	delete(o.want, ino)
	if o.comm == "" {
		o.comm = readComm(name)
	}
	o.socks[i].PID, o.socks[i].Command = pid, o.comm
	return len(o.want) == 0
}

// eachFD calls fn with each descriptor open in dir, an open /proc/PID/fd
// directory, until fn returns true. It may also call fn with numbers that
// are not open. fn gets the descriptor's name, NUL-terminated, when it comes
// from the directory's listing, and nil otherwise.
//
// Listing the directory costs about as much per entry as an fstat, so this
// lists only its tail. Since Linux 6.2 the directory's size is the number n
// of open descriptors, and descriptors are numbered from the lowest free
// one: the numbers below n are tried without a listing, and the listing
// starts at n (its offsets are descriptor numbers plus 2, after "." and
// ".."), where it has as many entries as there are unused numbers below n.
// A descriptor open throughout is seen either way; one opened or closed
// meanwhile may or may not be, as with a whole listing.
func (o *ownerScan) eachFD(dir int, fn func(fd int, name []byte) bool) {
	n := 0
	var st unix.Stat_t
	if fdDirSizeIsCount() && unix.Fstat(dir, &st) == nil && st.Size > 0 && st.Size <= math.MaxInt32 {
		if _, err := unix.Seek(dir, st.Size+2, io.SeekStart); err == nil {
			n = int(st.Size)
		}
	}
	for fd := range n {
		if fn(fd, nil) {
			return
		}
	}
	for {
		m, err := unix.Getdents(dir, o.dents)
		if err != nil || m <= 0 {
			return
		}
		for b := o.dents[:m]; ; {
			name, rest, ok := nextDirent(b)
			if !ok {
				break
			}
			b = rest
			fd, err := parseUint(name, 10, 31)
			if err != nil || int(fd) < n {
				continue // "." or "..", or tried already
			}
			if fn(int(fd), name[:len(name)+1]) {
				return
			}
		}
	}
}

// fdDirSizeIsCount reports whether the kernel is Linux 6.2 or later, where
// stat of /proc/PID/fd gives the number of open descriptors as the size.
// Earlier kernels give 0; gVisor, which says it is Linux 4.4, is not asked.
var fdDirSizeIsCount = sync.OnceValue(func() bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	// "6.18.0-foo": the leading numbers of the first two fields.
	num := func(s string) int {
		v := 0
		for i := 0; i < len(s) && '0' <= s[i] && s[i] <= '9' && v < 1e6; i++ {
			v = 10*v + int(s[i]-'0')
		}
		return v
	}
	major, rest, _ := strings.Cut(unix.ByteSliceToString(u.Release[:]), ".")
	return num(major) > 6 || num(major) == 6 && num(rest) >= 2
})

// nextDirent returns the name of the first entry of b, a getdents64 result
// (struct linux_dirent64), and the entries after it. The name is followed in
// b by its terminating NUL.
func nextDirent(b []byte) (name, rest []byte, ok bool) {
	const (
		reclenOff = unsafe.Offsetof(unix.Dirent{}.Reclen)
		nameOff   = unsafe.Offsetof(unix.Dirent{}.Name)
	)
	if len(b) <= int(nameOff) {
		return nil, nil, false
	}
	reclen := int(binary.NativeEndian.Uint16(b[reclenOff:]))
	if reclen <= int(nameOff) || reclen > len(b) {
		return nil, nil, false
	}
	name = b[nameOff:reclen]
	end := bytes.IndexByte(name, 0)
	if end < 0 {
		return nil, nil, false
	}
	return name[:end], b[reclen:], true
}

// readlinkat is unix.Readlinkat for a name that is NUL-terminated already,
// which saves copying it.
func readlinkat(dirfd int, name *byte, buf []byte) (int, error) {
	n, _, errno := unix.Syscall6(unix.SYS_READLINKAT, uintptr(dirfd), uintptr(unsafe.Pointer(name)),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// socketInode parses the target of a /proc/PID/fd link to a socket,
// "socket:[12345]".
func socketInode(link []byte) (uint64, bool) {
	const prefix = "socket:["
	if len(link) <= len(prefix)+1 || string(link[:len(prefix)]) != prefix || link[len(link)-1] != ']' {
		return 0, false
	}
	ino, err := parseUint(link[len(prefix):len(link)-1], 10, 64)
	return ino, err == nil
}

// readComm returns the command name of process name, or "" if it is gone.
func readComm(name string) string {
	b, err := os.ReadFile("/proc/" + name + "/comm")
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(b), "\n")
}

// haveCensus: AddrInUseError is made only where Sockets can read the table.
const haveCensus = true
