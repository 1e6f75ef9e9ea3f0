package census

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The request and reply of netlink sock_diag for AF_UNIX, from
// include/uapi/linux/unix_diag.h; x/sys/unix does not define them.

// unixDiagReq is struct unix_diag_req.
type unixDiagReq struct {
	family   uint8
	protocol uint8
	_        uint16
	states   uint32 // bit 1<<state for each state to report
	ino      uint32 // the socket's own inode, for a single lookup; 0 in a dump
	show     uint32 // UDIAG_SHOW_*: the attributes wanted in each reply
	cookie   [2]uint32
}

// unixDiagMsg is struct unix_diag_msg, the body of each reply message; the
// attributes follow it. Only the state is read.
type unixDiagMsg struct {
	_     uint8     // udiag_family
	_     uint8     // udiag_type
	state uint8     // udiag_state: TCP_LISTEN, TCP_ESTABLISHED, TCP_CLOSE
	_     uint8     // pad
	_     uint32    // udiag_ino: the socket's own inode
	_     [2]uint32 // udiag_cookie
}

// unixDiagRequest is a whole SOCK_DIAG_BY_FAMILY dump request.
type unixDiagRequest struct {
	hdr unix.NlMsghdr
	req unixDiagReq
}

// Values from include/uapi/linux/unix_diag.h and include/net/tcp_states.h.
const (
	unixDiagShowVFS = 0x2 // UDIAG_SHOW_VFS: ask for UNIX_DIAG_VFS
	unixDiagVFS     = 1   // UNIX_DIAG_VFS: struct unix_diag_vfs {__u32 ino; __u32 dev}
	unixStateListen = 10  // TCP_LISTEN, the state of a listening unix socket
)

// The sizes the kernel ABI fixes; each pair below fails to compile if the Go
// layout differs from the C one.
const (
	unixSizeofDiagReq     = 24
	unixSizeofDiagMsg     = 16
	unixSizeofDiagVFS     = 8
	unixSizeofDiagRequest = unix.SizeofNlMsghdr + unixSizeofDiagReq
)

var (
	_ [unsafe.Sizeof(unixDiagReq{}) - unixSizeofDiagReq]byte
	_ [unixSizeofDiagReq - unsafe.Sizeof(unixDiagReq{})]byte
	_ [unsafe.Sizeof(unixDiagMsg{}) - unixSizeofDiagMsg]byte
	_ [unixSizeofDiagMsg - unsafe.Sizeof(unixDiagMsg{})]byte
	_ [unsafe.Sizeof(unixDiagRequest{}) - unixSizeofDiagRequest]byte
	_ [unixSizeofDiagRequest - unsafe.Sizeof(unixDiagRequest{})]byte
)

// unixDiagTimeout bounds the whole dump (SO_RCVTIMEO on each read, set to
// what is left of it).
const unixDiagTimeout = time.Second

// unixDiagBufSize: netlink never sends a dump datagram larger than 32 KiB.
const unixDiagBufSize = 32 << 10

// UnixBound reports whether a unix socket in this network namespace is bound
// to the file with device dev and inode ino, as stat(2) gives them, and
// whether one of those listens. It reads the kernel's table of unix sockets
// (netlink sock_diag, which any user may read) and takes at most a second.
// Sockets of other network namespaces are not in it, even when they share
// the filesystem.
//
// The table carries only the low 32 bits of an inode: a socket bound to
// another file on the same device whose inode has the same low bits counts
// too. A false answer is thus never wrong about this namespace; a true one
// very rarely is. An error (netlink refused by a sandbox, no sock_diag for
// AF_UNIX, a dump that took over a second) means nothing is known.
func UnixBound(dev, ino uint64) (bound, listening bool, err error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return false, false, fmt.Errorf("unix sock_diag: %w", os.NewSyscallError("socket", err))
	}
	defer unix.Close(fd)
	// The table holds the kernel's dev_t, MAJOR<<20 | MINOR, not stat's
	// encoding of it.
	want := unixVFS{ino: uint32(ino), dev: unix.Major(dev)<<20 | unix.Minor(dev)}
	bound, listening, err = unixDump(fd, want)
	if err != nil {
		return false, false, fmt.Errorf("unix sock_diag: %w", err)
	}
	return bound, listening, nil
}

// unixVFS is struct unix_diag_vfs: the file a socket is bound to.
type unixVFS struct{ ino, dev uint32 }

// unixDump asks for every unix socket with its file and reports whether one
// is bound to want, and whether one of those listens.
func unixDump(fd int, want unixVFS) (bound, listening bool, err error) {
	const seq = 1
	req := unixDiagRequest{
		hdr: unix.NlMsghdr{
			Len:   unixSizeofDiagRequest,
			Type:  unix.SOCK_DIAG_BY_FAMILY,
			Flags: unix.NLM_F_REQUEST | unix.NLM_F_DUMP,
			Seq:   seq,
		},
		req: unixDiagReq{family: unix.AF_UNIX, states: ^uint32(0), show: unixDiagShowVFS},
	}
	msg := (*[unixSizeofDiagRequest]byte)(unsafe.Pointer(&req))[:]
	kernel := &unix.SockaddrNetlink{Family: unix.AF_NETLINK}
	for {
		err := unix.Sendto(fd, msg, 0, kernel)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, false, os.NewSyscallError("sendto", err)
		}
		break
	}
	deadline := time.Now().Add(unixDiagTimeout)
	buf := make([]byte, unixDiagBufSize)
	for {
		// Each read waits at most until the deadline.
		left := time.Until(deadline)
		if left <= 0 {
			return false, false, fmt.Errorf("the dump took over %v", unixDiagTimeout)
		}
		tv := unix.NsecToTimeval(max(left.Nanoseconds(), 1000)) // a zero timeval would wait forever
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return false, false, os.NewSyscallError("setsockopt SO_RCVTIMEO", err)
		}
		// MSG_TRUNC makes netlink return the datagram's real length, so a
		// reply that did not fit is detected instead of silently cut.
		n, from, err := unix.Recvfrom(fd, buf, unix.MSG_TRUNC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, false, os.NewSyscallError("recvfrom", err)
		}
		if n > len(buf) {
			return false, false, fmt.Errorf("%d-byte datagram exceeds the %d-byte buffer", n, len(buf))
		}
		if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
			continue // not from the kernel
		}
		done, err := unixParse(buf[:n], seq, want, &bound, &listening)
		if err != nil || done {
			return bound, listening, err
		}
	}
}

// unixParse reads one datagram of the dump's reply, sets bound and listening
// for each socket bound to want, and reports whether the dump ended.
func unixParse(b []byte, seq uint32, want unixVFS, bound, listening *bool) (done bool, _ error) {
	ne := binary.NativeEndian
	for len(b) >= unix.SizeofNlMsghdr {
		l := ne.Uint32(b[0:4])
		typ := ne.Uint16(b[4:6])
		mseq := ne.Uint32(b[8:12])
		if l < unix.SizeofNlMsghdr || uint64(l) > uint64(len(b)) {
			return false, fmt.Errorf("malformed message: length %d, %d bytes left", l, len(b))
		}
		payload := b[unix.SizeofNlMsghdr:l]
		b = b[min(unixAlign(int(l), unix.NLMSG_ALIGNTO), len(b)):]
		if mseq != seq {
			continue // a stray answer to an earlier request
		}
		switch typ {
		case unix.NLMSG_DONE:
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
			return true, nil
		case unix.SOCK_DIAG_BY_FAMILY:
			if len(payload) < unixSizeofDiagMsg {
				return false, fmt.Errorf("malformed unix_diag_msg of %d bytes", len(payload))
			}
			vfs, ok, err := unixFindVFS(payload[unixSizeofDiagMsg:])
			if err != nil {
				return false, err
			}
			if ok && vfs == want {
				var m unixDiagMsg
				copy((*[unixSizeofDiagMsg]byte)(unsafe.Pointer(&m))[:], payload)
				*bound = true
				*listening = *listening || m.state == unixStateListen
			}
		}
	}
	return false, nil
}

// unixFindVFS returns the UNIX_DIAG_VFS attribute among attrs, if any: only
// a socket bound to a file has one.
func unixFindVFS(attrs []byte) (unixVFS, bool, error) {
	ne := binary.NativeEndian
	for len(attrs) >= unix.SizeofNlAttr {
		l := int(ne.Uint16(attrs[0:2]))
		typ := ne.Uint16(attrs[2:4]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < unix.SizeofNlAttr || l > len(attrs) {
			return unixVFS{}, false, fmt.Errorf("malformed attribute: length %d, %d bytes left", l, len(attrs))
		}
		if typ == unixDiagVFS {
			if l < unix.SizeofNlAttr+unixSizeofDiagVFS {
				return unixVFS{}, false, errors.New("malformed UNIX_DIAG_VFS")
			}
			v := attrs[unix.SizeofNlAttr:]
			return unixVFS{ino: ne.Uint32(v[0:4]), dev: ne.Uint32(v[4:8])}, true, nil
		}
		attrs = attrs[min(unixAlign(l, unix.NLA_ALIGNTO), len(attrs)):]
	}
	return unixVFS{}, false, nil
}

func unixAlign(n, to int) int { return (n + to - 1) &^ (to - 1) }
