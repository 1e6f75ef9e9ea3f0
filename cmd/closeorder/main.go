// Command closeorder shows, on this machine's kernel, which side of a TCP
// connection is left holding TIME_WAIT for each close order, and whether a
// restarted server can then listen on its old port with and without
// SO_REUSEADDR. It uses loopback ports that it picks itself and needs no
// arguments:
//
//	go run ./cmd/closeorder
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/safelisten/reuse"
)

// closeOrder is one way of ending the demo's connection.
type closeOrder int

const (
	clientFirst closeOrder = iota // client Close, server reads EOF, server Close
	serverFirst                   // server Close, client reads EOF, client Close
	clientOpen                    // server Close, client reads EOF, client closes after the re-listen
	serverRST                     // as serverFirst, but the server's Close sends RST
)

var orders = []closeOrder{clientFirst, serverFirst, clientOpen, serverRST}

func (o closeOrder) String() string {
	return [...]string{
		"client closes first",
		"server closes first",
		"server first, client still open",
		"server first, RST-on-close",
	}[o]
}

// settled is what the textbook says the server's port shows once the closes
// are done. The census polls until it sees this; if the kernel disagrees, the
// deadline passes and the table shows what the kernel had instead.
func (o closeOrder) settled() string {
	return [...]string{"nothing", "TIME_WAIT", "FIN_WAIT2", "nothing"}[o]
}

// row is one line of the table.
type row struct {
	order      closeOrder
	reuseAddr  bool
	clientRead string // after the server's close: "EOF", "connection reset"; "-" if the client closed first
	serverPort string // states on the server's address, "nothing", or "n/a" without a socket table
	relisten   string // "ok", "address already in use", or another error as is
}

const (
	readTimeout   = 2 * time.Second
	censusTimeout = time.Second
	censusEvery   = 5 * time.Millisecond
)

var loopback = netip.MustParseAddr("127.0.0.1")

func main() {
	if err := run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "closeorder:", err)
		os.Exit(1)
	}
}

// run measures every row and prints the table and the explanation to w.
func run(w io.Writer) error {
	rows, err := measure()
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "Close order and TIME_WAIT: tcp4 on 127.0.0.1, plain TCP (MPTCP off), a fresh port per row.")
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "close order\tSO_REUSEADDR\tclient read\tkernel, server port\tre-listen")
	for _, r := range rows {
		fmt.Fprintf(tw, "%v\t%s\t%s\t%s\t%s\n", r.order, onOff(r.reuseAddr), r.clientRead, r.serverPort, r.relisten)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprint(w, `
Why: the side that closes first keeps the connection in TIME_WAIT for 60 s on Linux. When
that side is the server, the TIME_WAIT holds the server's port, and a listener without
SO_REUSEADDR cannot bind it; the TIME_WAIT keeps the old listener's SO_REUSEADDR, so the
old and the new listener both need it. A server that closed while its client is still open
waits in FIN_WAIT2 and blocks the port the same way. SO_REUSEADDR is the fix, and
reuse.Listen sets it by default. RST-on-close leaves nothing behind, but the client sees
"connection reset" and data not yet sent is lost: it is a last resort.
`)
	return nil
}

// measure runs every close order with SO_REUSEADDR on and off.
func measure() ([]row, error) {
	var rows []row
	for _, o := range orders {
		for _, on := range []bool{true, false} {
			r, err := demo(o, on)
			if err != nil {
				return nil, fmt.Errorf("%v, SO_REUSEADDR %s: %w", o, onOff(on), err)
			}
			rows = append(rows, r)
		}
	}
	return rows, nil
}

// demo opens one connection on a fresh port, closes it in order o, and looks
// at what the closes left on the server's port. Closing twice is harmless, so
// the defers close whatever an early return leaves open.
func demo(o closeOrder, reuseAddr bool) (r row, err error) {
	r = row{order: o, reuseAddr: reuseAddr, clientRead: "-"}
	ctx := context.Background()
	opts := []reuse.Option{reuse.WithReuseAddr(reuseAddr)}
	if o == serverRST {
		opts = append(opts, reuse.WithRSTOnClose())
	}
	lc := reuse.ListenConfig(opts...)
	// Go opens listeners as MPTCP where it can; the textbook story is about TCP.
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(ctx, "tcp4", "127.0.0.1:0")
	if errors.Is(err, errors.ErrUnsupported) && o == serverRST {
		// Where accepted sockets do not inherit SO_LINGER (Windows, Solaris,
		// illumos, AIX) only reuse.Listen can give RST-on-close; MPTCP is
		// Linux-only, so the listener is plain TCP there anyway.
		ln, err = reuse.Listen("tcp4", "127.0.0.1:0", opts...)
	}
	if err != nil {
		return r, err
	}
	defer ln.Close()
	addr := ln.Addr().String()
	port := ln.Addr().(*net.TCPAddr).Port

	var d net.Dialer
	d.SetMultipathTCP(false)
	client, err := d.DialContext(ctx, "tcp4", addr)
	if err != nil {
		return r, err
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		return r, err
	}
	defer server.Close()

	// One byte each way through the server: the dial is then surely complete
	// (so an RST reaches an established client, not its connect), and the
	// server has no unread data, which would make its Close send RST itself.
	if _, err := client.Write([]byte{1}); err != nil {
		return r, fmt.Errorf("client write: %w", err)
	}
	if err := read(server, true); err != nil {
		return r, fmt.Errorf("server read: %w", err)
	}

	if o == clientFirst {
		client.Close()
		if err := read(server, false); err != io.EOF {
			return r, fmt.Errorf("server read after the client's close: got %v, want EOF", err)
		}
		server.Close()
	} else {
		server.Close()
		r.clientRead = describe(read(client, false))
		if o != clientOpen {
			client.Close()
		}
	}
	ln.Close()

	if r.serverPort, err = census(port, o.settled()); err != nil {
		return r, err
	}
	r.relisten = relisten(addr, reuseAddr)
	client.Close() // clientOpen: only now, after the re-listen
	return r, nil
}

// read reads one byte from c with a deadline; want says a byte is expected.
// It returns io.EOF as is, so callers can compare.
func read(c net.Conn, want bool) error {
	if err := c.SetReadDeadline(time.Now().Add(readTimeout)); err != nil {
		return err
	}
	var b [1]byte
	n, err := c.Read(b[:])
	switch {
	case err != nil:
		return err
	case !want:
		return fmt.Errorf("read %d unexpected bytes", n)
	}
	return nil
}

// describe names the client's read result for the table.
func describe(err error) string {
	switch err {
	case nil:
		return "data"
	case io.EOF:
		return "EOF"
	}
	// The innermost error is the system's own words, without the
	// "read tcp4 a->b:" prefix that would swamp the table. It is matched by
	// text because plan9's syscall package has no ECONNRESET and this one file
	// must build everywhere; Unix and plan9 both say "connection reset".
	// Windows' WSAECONNRESET says otherwise and is shown as is.
	for u := errors.Unwrap(err); u != nil; u = errors.Unwrap(u) {
		err = u
	}
	if strings.Contains(err.Error(), "connection reset") {
		return "connection reset"
	}
	return err.Error()
}

// census polls the socket table until the server's port shows want, or the
// deadline passes, and returns what it shows then. Loopback is fast, but a
// Close returns before the peer has processed the FIN, so one look right after
// the closes could see a passing state (FIN_WAIT1, LAST_ACK).
func census(port int, want string) (string, error) {
	deadline := time.Now().Add(censusTimeout)
	for {
		got, err := onPort(port)
		if errors.Is(err, errors.ErrUnsupported) {
			return "n/a", nil // no socket table on this OS
		}
		if err != nil || got == want || time.Now().After(deadline) {
			return got, err
		}
		time.Sleep(censusEvery)
	}
}

// onPort lists the states of the sockets on 127.0.0.1:port, the address a
// re-listen has to bind, leaving out listeners: the old one is closed, and
// what blocks the bind is what its connections left behind.
func onPort(port int) (string, error) {
	ss, err := reuse.Sockets(port)
	if err != nil {
		return "", err
	}
	var states []string
	for _, s := range ss {
		if s.Local.Addr().Unmap() == loopback && s.State != reuse.StateListen {
			states = append(states, s.State.String())
		}
	}
	if len(states) == 0 {
		return "nothing", nil
	}
	slices.Sort(states)
	return strings.Join(states, ", "), nil
}

// relisten tries what a restarted server does: listen on the same address
// and port at once, with the same SO_REUSEADDR setting as before.
func relisten(addr string, reuseAddr bool) string {
	ln, err := reuse.Listen("tcp4", addr, reuse.WithReuseAddr(reuseAddr))
	switch {
	case err == nil:
		ln.Close()
		return "ok"
	case reuse.IsAddrInUse(err):
		return "address already in use"
	}
	return err.Error()
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}
