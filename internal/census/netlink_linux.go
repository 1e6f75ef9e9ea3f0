package census

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"
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

// inetDiagMsg is struct inet_diag_msg, the body of each reply message;
// attributes (struct nlattr) follow it.
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

// Values from include/uapi/linux/inet_diag.h and tcp_states.h that
// x/sys/unix lacks.
const (
	inetDiagReqBytecode = 1  // INET_DIAG_REQ_BYTECODE: the request attribute holding a filter
	inetDiagBcSCond     = 7  // INET_DIAG_BC_S_COND: match the local address and port
	inetDiagSKV6Only    = 11 // INET_DIAG_SKV6ONLY: a u8 reply attribute, IPV6_V6ONLY
	tcpBoundInactive    = 13 // TCP_BOUND_INACTIVE, a state only sock_diag filters use
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

// The sizes the kernel ABI fixes; each pair of array types below (for the
// unix dump's structs too) fails to compile if the Go layout differs from the
// C one.
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
	_ [unsafe.Sizeof(unixDiagReq{}) - unixSizeofDiagReq]byte
	_ [unixSizeofDiagReq - unsafe.Sizeof(unixDiagReq{})]byte
	_ [unsafe.Sizeof(unixDiagMsg{}) - unixSizeofDiagMsg]byte
	_ [unixSizeofDiagMsg - unsafe.Sizeof(unixDiagMsg{})]byte
	_ [unsafe.Sizeof(unixDiagRequest{}) - unixSizeofDiagRequest]byte
	_ [unixSizeofDiagRequest - unsafe.Sizeof(unixDiagRequest{})]byte
)

// State numbers are the kernel's own (mirrored by x/sys/unix's BPF_TCP_*
// constants); this fails to compile if one differs.
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
// the bit.
const diagStates = 1<<numStates - 1<<StateEstablished | 1<<tcpBoundInactive

// readNetlink dumps the TCP sockets on local port port, IPv4 then IPv6,
// through one NETLINK_SOCK_DIAG socket, and calls add with each.
func readNetlink(port uint16, deadline time.Time, add func(Socket)) error {
	c, err := openDiag(deadline)
	if err != nil {
		return err
	}
	defer c.close()
	for seq, family := range [...]uint8{unix.AF_INET, unix.AF_INET6} {
		req := diagRequest{
			hdr: unix.NlMsghdr{
				Len:   sizeofDiagRequest,
				Type:  unix.SOCK_DIAG_BY_FAMILY,
				Flags: unix.NLM_F_REQUEST | unix.NLM_F_DUMP,
				Seq:   uint32(seq) + 1,
			},
			req:  inetDiagReqV2{family: family, protocol: unix.IPPROTO_TCP, states: diagStates},
			attr: unix.NlAttr{Len: unix.SizeofNlAttr + sizeofDiagFilter, Type: inetDiagReqBytecode},
			op:   inetDiagBcOp{code: inetDiagBcSCond, yes: sizeofDiagFilter, no: sizeofDiagFilter + 4}, // yes: accept, no: reject
			cond: inetDiagHostcond{family: unix.AF_UNSPEC, port: int32(port)},
		}
		err := c.dump((*[sizeofDiagRequest]byte)(unsafe.Pointer(&req))[:], req.hdr.Seq, func(typ uint16, payload []byte) error {
			if typ != unix.SOCK_DIAG_BY_FAMILY {
				return nil
			}
			s, ok, err := parseDiagMsg(payload)
			if ok {
				add(s)
			}
			return err
		})
		// A kernel without IPv6 may have no AF_INET6 diag handler: then
		// there are no IPv6 sockets to report.
		if family == unix.AF_INET6 && (errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EAFNOSUPPORT)) {
			err = nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// diagBufSize bounds each read. Netlink never builds a dump datagram larger
// than 32 KiB, however large the reader's buffer (netlink_recvmsg caps
// max_recvmsg_len there); each socket takes about 124 bytes of it.
const diagBufSize = 32 << 10

// diagConn is a NETLINK_SOCK_DIAG socket whose reads give up at a deadline.
// It serves any sock_diag dump: TCP here, any family's request in general.
type diagConn struct {
	fd       int
	buf      []byte
	deadline time.Time
}

// openDiag opens a sock_diag socket for a dump that ends by deadline: a
// sandbox may accept the socket and never reply.
func openDiag(deadline time.Time) (*diagConn, error) {
	if time.Until(deadline) <= 0 {
		return nil, fmt.Errorf("netlink sock_diag: %w", os.ErrDeadlineExceeded)
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("netlink sock_diag: %w", os.NewSyscallError("socket", err))
	}
	return &diagConn{fd: fd, buf: make([]byte, diagBufSize), deadline: deadline}, nil
}

// waitAtMost makes the next receive time out (SO_RCVTIMEO) after d.
func (c *diagConn) waitAtMost(d time.Duration) error {
	tv := unix.NsecToTimeval(max(d.Nanoseconds(), int64(time.Microsecond)))
	if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("netlink sock_diag: %w", os.NewSyscallError("setsockopt SO_RCVTIMEO", err))
	}
	return nil
}

func (c *diagConn) close() { unix.Close(c.fd) }

// dump sends req, a whole netlink request whose header carries seq, and
// calls fn with the type and payload of each message of the reply, which may
// span many datagrams, until the kernel ends it with NLMSG_DONE. It returns
// the first error of fn, of the kernel (NLMSG_ERROR, a negative NLMSG_DONE),
// or of a reply that is malformed or late (errors.Is with
// os.ErrDeadlineExceeded).
func (c *diagConn) dump(req []byte, seq uint32, fn func(typ uint16, payload []byte) error) error {
	kernel := &unix.SockaddrNetlink{Family: unix.AF_NETLINK}
	for {
		err := unix.Sendto(c.fd, req, 0, kernel)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("netlink sock_diag: %w", os.NewSyscallError("sendto", err))
		}
		break
	}
	for {
		if time.Now().After(c.deadline) {
			return fmt.Errorf("netlink sock_diag: %w", os.ErrDeadlineExceeded)
		}
		// Each wait ends at the deadline, not a whole timeout after it.
		if err := c.waitAtMost(time.Until(c.deadline)); err != nil {
			return err
		}
		// MSG_TRUNC makes netlink return the datagram's real length, so a
		// reply that did not fit is detected instead of silently cut.
		n, from, err := unix.Recvfrom(c.fd, c.buf, unix.MSG_TRUNC)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return fmt.Errorf("netlink sock_diag: no reply: %w", os.ErrDeadlineExceeded)
		case err != nil:
			return fmt.Errorf("netlink sock_diag: %w", os.NewSyscallError("recvfrom", err))
		case n > len(c.buf):
			return fmt.Errorf("netlink sock_diag: %d-byte datagram exceeds the %d-byte buffer", n, len(c.buf))
		}
		if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
			continue // not from the kernel
		}
		done, err := eachMessage(c.buf[:n], seq, fn)
		if err != nil {
			return fmt.Errorf("netlink sock_diag: %w", err)
		}
		if done {
			return nil
		}
	}
}

// eachMessage calls fn with each message of one datagram of a dump reply to
// request seq, and reports whether the datagram ended the dump.
func eachMessage(b []byte, seq uint32, fn func(typ uint16, payload []byte) error) (done bool, _ error) {
	ne := binary.NativeEndian
	if len(b) < unix.SizeofNlMsghdr {
		return false, fmt.Errorf("short datagram of %d bytes", len(b))
	}
	for len(b) >= unix.SizeofNlMsghdr {
		l := ne.Uint32(b[0:4])
		typ := ne.Uint16(b[4:6])
		mseq := ne.Uint32(b[8:12])
		if l < unix.SizeofNlMsghdr || uint64(l) > uint64(len(b)) {
			return false, fmt.Errorf("malformed message: length %d, %d bytes left", l, len(b))
		}
		payload := b[unix.SizeofNlMsghdr:l]
		b = b[min(nlmsgAlign(int(l)), len(b)):]
		if mseq != seq {
			continue // a stray answer to an earlier request
		}
		switch typ {
		case unix.NLMSG_DONE:
			// The dump's own result follows; a negative value is an errno.
			if len(payload) >= 4 {
				if e := int32(ne.Uint32(payload)); e < 0 {
					return false, os.NewSyscallError("dump", unix.Errno(-e))
				}
			}
			return true, nil
		case unix.NLMSG_ERROR:
			if len(payload) < 4 {
				return false, fmt.Errorf("malformed NLMSG_ERROR of %d bytes", len(payload))
			}
			if e := int32(ne.Uint32(payload)); e < 0 {
				return false, os.NewSyscallError("request", unix.Errno(-e))
			}
			return true, nil // an acknowledgement: the request is complete
		}
		if err := fn(typ, payload); err != nil {
			return false, err
		}
	}
	return false, nil
}

// nlmsgAlign rounds n up as messages and attributes are (NLMSG_ALIGNTO and
// NLA_ALIGNTO are both 4).
func nlmsgAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// parseDiagMsg converts an inet_diag_msg and its attributes, keeping
// IPv4-mapped IPv6 addresses as they are. ok is false for a family other
// than IPv4 and IPv6.
func parseDiagMsg(payload []byte) (_ Socket, ok bool, _ error) {
	if len(payload) < sizeofInetDiagMsg {
		return Socket{}, false, fmt.Errorf("malformed inet_diag_msg of %d bytes", len(payload))
	}
	var m inetDiagMsg
	copy((*[sizeofInetDiagMsg]byte)(unsafe.Pointer(&m))[:], payload)
	var local, remote netip.Addr
	switch m.family {
	case unix.AF_INET:
		local = netip.AddrFrom4([4]byte(m.id.src[:4]))
		remote = netip.AddrFrom4([4]byte(m.id.dst[:4]))
	case unix.AF_INET6:
		local = netip.AddrFrom16(m.id.src)
		remote = netip.AddrFrom16(m.id.dst)
	default:
		return Socket{}, false, nil
	}
	s := Socket{
		Local:  netip.AddrPortFrom(local, binary.BigEndian.Uint16(m.id.sport[:])),
		Remote: netip.AddrPortFrom(remote, binary.BigEndian.Uint16(m.id.dport[:])),
		State:  State(m.state),
		UID:    m.uid,
		Inode:  uint64(m.inode),
	}
	// The kernel adds INET_DIAG_SKV6ONLY for IPv6 sockets in LISTEN and
	// CLOSE (inet_diag_msg_attrs_fill), whatever the request's ext asks.
	err := eachAttr(payload[sizeofInetDiagMsg:], func(typ uint16, val []byte) {
		if typ == inetDiagSKV6Only && len(val) > 0 {
			s.V6Only = V6OnlyOff
			if val[0] != 0 {
				s.V6Only = V6OnlyOn
			}
		}
	})
	if err != nil {
		return Socket{}, false, err
	}
	return s, true, nil
}

// eachAttr calls fn with the type and value of each netlink attribute in b.
func eachAttr(b []byte, fn func(typ uint16, val []byte)) error {
	ne := binary.NativeEndian
	for len(b) >= unix.SizeofNlAttr {
		l := int(ne.Uint16(b[0:2]))
		if l < unix.SizeofNlAttr || l > len(b) {
			return fmt.Errorf("malformed attribute: length %d, %d bytes left", l, len(b))
		}
		fn(ne.Uint16(b[2:4])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER), b[unix.SizeofNlAttr:l])
		b = b[min(nlmsgAlign(l), len(b)):]
	}
	return nil
}
