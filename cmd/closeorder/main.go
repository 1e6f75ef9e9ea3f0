// Command closeorder shows, on this machine's kernel, what a restart costs
// a TCP server and its clients. First, for each close order, which side of
// a connection is left in TIME_WAIT and whether a restarted server can then
// listen on its old port, with and without SO_REUSEADDR. Then, under load
// from clients that never retry, what a plain stop-and-start restart costs
// them against reuse.Upgrade with a drain. It uses loopback ports it picks
// itself and finishes in seconds:
//
//	go run ./cmd/closeorder
//	go run ./cmd/closeorder -restarts 10
package main

import (
	"context"
	"errors"
	"flag"
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
	"github.com/safelisten/reuse/internal/census"
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
	tries      int    // how many fresh ports it took: another socket can take a port between Close and re-listen
}

const (
	readTimeout   = 2 * time.Second
	censusTimeout = time.Second
	censusEvery   = 5 * time.Millisecond
	maxTries      = 5
)

func main() {
	if addr := os.Getenv(envServe); addr != "" {
		os.Exit(serve(addr)) // a server of the restart demo: this program started by itself
	}
	os.Exit(cli(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: closeorder [-restarts N]

closeorder shows, on this machine's kernel and on loopback, what a restart
costs a TCP server and its clients:
  - for each close order, which side keeps TIME_WAIT and whether a restarted
    server can listen on its old port at once, with and without SO_REUSEADDR;
  - under load from HTTP clients that never retry, the failed requests of a
    plain stop-and-start restart against reuse.Upgrade with a drain.

`

// cli runs the command with args and returns its exit code.
func cli(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("closeorder", flag.ContinueOnError)
	fs.SetOutput(stderr)
	restarts := fs.Int("restarts", 5, "restarts of each kind in the restart demo; 0 skips it")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	switch err := fs.Parse(args); {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case err != nil:
		return 2
	case fs.NArg() > 0 || *restarts < 0:
		fs.Usage()
		return 2
	}
	if err := run(stdout, *restarts); err != nil {
		fmt.Fprintln(stderr, "closeorder:", err)
		return 1
	}
	return 0
}

// run measures every row and prints the tables and the explanation to w.
func run(w io.Writer, restarts int) error {
	rows, err := measure()
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "Close order and TIME_WAIT: tcp4 on 127.0.0.1, plain TCP (MPTCP off), a fresh port per row.")
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "close order\tSO_REUSEADDR\tclient read\tkernel, server port\tre-listen\t")
	for _, r := range rows {
		mark := ""
		if r.order == serverFirst && r.reuseAddr {
			mark = "<- a plain net.Listen + net/http server"
		}
		fmt.Fprintf(tw, "%v\t%s\t%s\t%s\t%s\t%s\n", r.order, onOff(r.reuseAddr), r.clientRead, r.serverPort, r.relisten, mark)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprint(w, `
Why: the side that closes first keeps the connection in TIME_WAIT for 60 s on Linux. When
that side is the server (net/http closes idle keep-alive connections first), the TIME_WAIT
holds the server's port, and a listener without SO_REUSEADDR cannot bind it; the TIME_WAIT
keeps the old listener's SO_REUSEADDR, so the old and the new listener both need it. Go's
net.Listen sets it itself, as reuse.Listen does. RST-on-close leaves nothing behind, but
the client sees "connection reset" and data not yet sent is lost: it is a last resort.
`)
	if restarts == 0 {
		return nil
	}
	rs, err := measureRestarts(restarts)
	if errors.Is(err, errors.ErrUnsupported) {
		fmt.Fprintf(w, "\nNo restart demo here: %v.\n", err)
		return nil
	}
	if err != nil {
		return err
	}
	if err := printRestarts(w, restarts, rs); err != nil {
		return err
	}
	fmt.Fprint(w, `
Why: a stop-and-start restart leaves a gap in which nothing listens, so connects are
refused, and Shutdown closes idle keep-alive connections under clients that are sending.
Upgrade hands the same listening socket to the new process, whose queue never closes, and
the drain closes a connection only after a response that says "Connection: close".
`)
	return nil
}

// measure runs every close order with SO_REUSEADDR on and off.
func measure() ([]row, error) {
	var rows []row
	for _, o := range orders {
		for _, on := range []bool{true, false} {
			r, err := measureRow(o, on)
			if err != nil {
				return nil, fmt.Errorf("%v, SO_REUSEADDR %s: %w", o, onOff(on), err)
			}
			rows = append(rows, r)
		}
	}
	return rows, nil
}

// errForeign says that a socket other than the demo's own was on its port,
// which makes the row say nothing about the close order.
var errForeign = errors.New("another socket used the port")

// measureRow runs demo on fresh ports until no other socket got in its way.
func measureRow(o closeOrder, reuseAddr bool) (row, error) {
	for try := 1; ; try++ {
		r, err := demo(o, reuseAddr)
		r.tries = try
		if !errors.Is(err, errForeign) {
			return r, err
		}
		if try == maxTries {
			return r, fmt.Errorf("%d fresh ports in a row: %w", maxTries, err)
		}
	}
}

// between, when not nil, runs after the closes and before the re-listen,
// with the row and the demo's server address, and what it returns runs when
// the demo ends: the tests put a stranger's socket on the port in between.
var between func(r row, addr string) (undo func())

// demo opens one connection on a fresh port, closes it in order o, and looks
// at what the closes left on the server's port. It returns errForeign when a
// socket not its own was in the way of its address, on it or on a wildcard,
// before or after the re-listen: another program's, or a client socket given
// that port number. Closing twice is harmless, so the defers
// close whatever an early return leaves open.
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

	// The server's side of the connection is the only socket the port may hold.
	own := func(s census.Socket) bool {
		return s.Local == addrPort(server.LocalAddr()) && s.Remote == addrPort(server.RemoteAddr())
	}
	if r.serverPort, err = watch(port, o.settled(), own); err != nil {
		return r, err
	}
	if between != nil {
		defer between(r, addr)()
	}
	if r.relisten, err = relisten(addr, reuseAddr, own); err != nil {
		return r, err
	}
	if _, err := onPort(port, own); err != nil {
		return r, err
	}
	client.Close() // clientOpen: only now, after the re-listen
	return r, nil
}

func addrPort(a net.Addr) netip.AddrPort {
	ap := a.(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
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

// watch polls the socket table until the server's port shows want, or the
// deadline passes, and returns what it shows then. Loopback is fast, but a
// Close returns before the peer has processed the FIN, so one look right after
// the closes could see a passing state (FIN_WAIT1, LAST_ACK).
func watch(port int, want string, own func(census.Socket) bool) (string, error) {
	deadline := time.Now().Add(censusTimeout)
	for {
		got, err := onPort(port, own)
		if errors.Is(err, errors.ErrUnsupported) {
			return "n/a", nil // no socket table on this OS
		}
		if err != nil || got == want || time.Now().After(deadline) {
			return got, err
		}
		time.Sleep(censusEvery)
	}
}

// onPort lists the states of the sockets in the way of a bind of
// 127.0.0.1:port: with the listener closed, what its connection left behind.
// It returns errForeign if one of them is not one that own picks.
func onPort(port int, own func(census.Socket) bool) (string, error) {
	t, err := census.Read(census.Query{Port: uint16(port), Match: inTheWay})
	if err != nil {
		return "", err
	}
	var states []string
	for _, s := range t.Sockets {
		if !own(s) {
			return "", fmt.Errorf("%w: %v %v -> %v", errForeign, s.State, s.Local, s.Remote)
		}
		states = append(states, s.State.String())
	}
	if len(states) == 0 {
		return "nothing", nil
	}
	slices.Sort(states)
	return strings.Join(states, ", "), nil
}

// inTheWay reports whether s is on a local address that can block a bind
// of 127.0.0.1 on its port, as the demo's own sockets are: 127.0.0.1
// itself, or a wildcard that takes IPv4. Sockets on other addresses of the
// port (127.0.0.2, ::1) change nothing in a row.
func inTheWay(s census.Socket) bool {
	a := s.Local.Addr().Unmap()
	return a == netip.AddrFrom4([4]byte{127, 0, 0, 1}) || a.IsUnspecified() && s.V6Only != census.V6OnlyOn
}

// relisten tries what a restarted server does: listen on the same address
// and port at once, with the same SO_REUSEADDR setting as before. When the
// port is taken, the error's diagnosis must name only the demo's own
// socket: else it returns errForeign.
func relisten(addr string, reuseAddr bool, own func(census.Socket) bool) (string, error) {
	ln, err := reuse.Listen("tcp4", addr, reuse.WithReuseAddr(reuseAddr))
	switch {
	case err == nil:
		ln.Close()
		return "ok", nil
	case !reuse.IsAddrInUse(err):
		return err.Error(), nil
	}
	var inUse *reuse.AddrInUseError
	if errors.As(err, &inUse) {
		d := inUse.Diagnosis()
		if d.Reason == reuse.ReasonGone {
			return "", fmt.Errorf("%w: re-listen: %v", errForeign, err)
		}
		for _, h := range d.Holders {
			if !own(census.Socket{Local: h.Local, Remote: h.Remote}) {
				return "", fmt.Errorf("%w: re-listen: %v", errForeign, err)
			}
		}
	}
	return "address already in use", nil
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}
