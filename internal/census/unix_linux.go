package census

import (
	"encoding/binary"
	"fmt"
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

// The sizes the kernel ABI fixes, checked with the inet ones in
// netlink_linux.go.
const (
	unixSizeofDiagReq     = 24
	unixSizeofDiagMsg     = 16
	unixSizeofDiagVFS     = 8
	unixSizeofDiagRequest = unix.SizeofNlMsghdr + unixSizeofDiagReq
)

// unixDiagTimeout bounds the whole dump.
const unixDiagTimeout = time.Second

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
	c, err := openDiag(time.Now().Add(unixDiagTimeout))
	if err != nil {
		return false, false, fmt.Errorf("unix sockets: %w", err)
	}
	defer c.close()
	// The table holds the kernel's dev_t, MAJOR<<20 | MINOR, not stat's
	// encoding of it.
	want := unixVFS{ino: uint32(ino), dev: unix.Major(dev)<<20 | unix.Minor(dev)}
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
	err = c.dump((*[unixSizeofDiagRequest]byte)(unsafe.Pointer(&req))[:], seq, unixScan(want, &bound, &listening))
	if err != nil {
		return false, false, fmt.Errorf("unix sockets: %w", err)
	}
	return bound, listening, nil
}

// unixVFS is struct unix_diag_vfs: the file a socket is bound to.
type unixVFS struct{ ino, dev uint32 }

// unixScan returns the dump's callback: it sets bound for each socket bound
// to want, and listening for each of those that listens.
func unixScan(want unixVFS, bound, listening *bool) func(typ uint16, payload []byte) error {
	return func(typ uint16, payload []byte) error {
		if typ != unix.SOCK_DIAG_BY_FAMILY {
			return nil
		}
		if len(payload) < unixSizeofDiagMsg {
			return fmt.Errorf("malformed unix_diag_msg of %d bytes", len(payload))
		}
		var vfs unixVFS
		var found bool
		err := eachAttr(payload[unixSizeofDiagMsg:], func(typ uint16, val []byte) {
			if typ == unixDiagVFS && len(val) >= unixSizeofDiagVFS {
				vfs, found = unixVFS{ino: binary.NativeEndian.Uint32(val[0:4]), dev: binary.NativeEndian.Uint32(val[4:8])}, true
			}
		})
		if err == nil && found && vfs == want {
			var m unixDiagMsg
			copy((*[unixSizeofDiagMsg]byte)(unsafe.Pointer(&m))[:], payload)
			*bound = true
			*listening = *listening || m.state == unixStateListen
		}
		return err
	}
}
