package reuse

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
	"strings"
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
	return out, nil
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
// "socket:[inode]" under /proc/PID/fd, so this reads one link per open file
// of each process until every inode is found, skipping processes it may not
// inspect or that exit meanwhile. The calling process comes first and is
// looked at with fstat on its own descriptors, 4 times cheaper than a link
// read through /proc.
func resolveOwners(socks []Socket) {
	var want map[uint64]int // inode -> index in socks
	for i, s := range socks {
		if s.Inode == 0 {
			continue
		}
		if want == nil {
			want = make(map[uint64]int, len(socks))
		}
		want[s.Inode] = i
	}
	if len(want) == 0 {
		return
	}
	self := os.Getpid()
	link := make([]byte, len("socket:[18446744073709551615]"))
	// /proc/self, unlike /proc/<Getpid()>, is right even when /proc is
	// another PID namespace's.
	if ownersIn("self", self, true, want, socks, link); len(want) == 0 {
		return
	}
	proc, err := os.Open("/proc")
	if err != nil {
		return
	}
	names, _ := proc.Readdirnames(-1)
	proc.Close()
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid <= 0 || pid == self {
			continue // not a process, or done already
		}
		if ownersIn(name, pid, false, want, socks, link); len(want) == 0 {
			return
		}
	}
}

// ownersIn looks through the open files of process pid, named name under
// /proc, for the inodes in want, fills in the sockets it finds and removes
// them from want. self says pid is the calling process.
func ownersIn(name string, pid int, self bool, want map[uint64]int, socks []Socket, link []byte) {
	dir, err := os.Open("/proc/" + name + "/fd")
	if err != nil {
		return // another user's process, or gone
	}
	defer dir.Close()
	fds, err := dir.Readdirnames(-1)
	if err != nil || len(fds) == 0 {
		return
	}
	rc, err := dir.SyscallConn()
	if err != nil {
		return
	}
	var comm string
	var st unix.Stat_t
	rc.Control(func(dirfd uintptr) {
		for _, fd := range fds {
			var ino uint64
			if self {
				// A descriptor closed and reused since the listing is
				// still this process's: whatever fstat finds is ours.
				n, err := strconv.Atoi(fd)
				if err != nil || unix.Fstat(n, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
					continue
				}
				ino = uint64(st.Ino)
			} else {
				n, err := unix.Readlinkat(int(dirfd), fd, link)
				if err != nil {
					continue // closed meanwhile
				}
				var ok bool
				if ino, ok = socketInode(link[:n]); !ok {
					continue
				}
			}
			i, ok := want[ino]
			if !ok {
				continue
			}
			delete(want, ino)
			if comm == "" {
				comm = readComm(name)
			}
			socks[i].PID, socks[i].Command = pid, comm
			if len(want) == 0 {
				return
			}
		}
	})
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
