// The expected rows are Linux's: other systems have no socket table for the
// census, and their TIME_WAIT rules differ.

package main

import (
	"bytes"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// want is what each close order must show on Linux, for SO_REUSEADDR on and off.
var want = map[closeOrder]map[bool]row{
	clientFirst: {
		true:  {clientRead: "-", serverPort: "nothing", relisten: "ok"},
		false: {clientRead: "-", serverPort: "nothing", relisten: "ok"},
	},
	serverFirst: {
		true:  {clientRead: "EOF", serverPort: "TIME_WAIT", relisten: "ok"},
		false: {clientRead: "EOF", serverPort: "TIME_WAIT", relisten: "address already in use"},
	},
	clientOpen: {
		true:  {clientRead: "EOF", serverPort: "FIN_WAIT2", relisten: "ok"},
		false: {clientRead: "EOF", serverPort: "FIN_WAIT2", relisten: "address already in use"},
	},
	serverRST: {
		true:  {clientRead: "connection reset", serverPort: "nothing", relisten: "ok"},
		false: {clientRead: "connection reset", serverPort: "nothing", relisten: "ok"},
	},
}

func TestRows(t *testing.T) {
	defer goleak.VerifyNone(t)
	// Go opens the netpoller's descriptors on first network use; do that
	// before counting, so the count compares only what measure opens.
	warm, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	warm.Close()
	before := openFDs(t)

	rows, err := measure()
	if err != nil {
		t.Fatal(err)
	}
	if after := openFDs(t); after != before {
		t.Errorf("open descriptors: %d before measure, %d after: something was not closed", before, after)
	}
	if len(rows) != 2*len(orders) {
		t.Fatalf("got %d rows, want %d", len(rows), 2*len(orders))
	}
	seen := map[closeOrder]map[bool]bool{}
	for _, r := range rows {
		w, ok := want[r.order][r.reuseAddr]
		if !ok || seen[r.order][r.reuseAddr] {
			t.Errorf("unexpected or repeated row %v, SO_REUSEADDR %s", r.order, onOff(r.reuseAddr))
			continue
		}
		if seen[r.order] == nil {
			seen[r.order] = map[bool]bool{}
		}
		seen[r.order][r.reuseAddr] = true
		if r.tries > 1 {
			t.Logf("%v, SO_REUSEADDR %s: measured %d times: another socket used its port", r.order, onOff(r.reuseAddr), r.tries)
		}
		got := row{clientRead: r.clientRead, serverPort: r.serverPort, relisten: r.relisten}
		if got != w {
			t.Errorf("%v, SO_REUSEADDR %s:\n got client read %q, server port %q, re-listen %q\nwant client read %q, server port %q, re-listen %q",
				r.order, onOff(r.reuseAddr), got.clientRead, got.serverPort, got.relisten, w.clientRead, w.serverPort, w.relisten)
		}
	}
}

// TestRun checks the printed form: a header, a line per row with its cells,
// and the explanation under the table.
func TestRun(t *testing.T) {
	var buf bytes.Buffer
	if err := run(&buf, 0); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, s := range []string{"plain TCP", "close order", "SO_REUSEADDR", "client read", "kernel, server port", "re-listen", "Why:", "last resort"} {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
	lines := strings.Split(out, "\n")
	for _, o := range orders {
		for _, on := range []bool{true, false} {
			w := want[o][on]
			cells := []string{o.String(), onOff(on), w.clientRead, w.serverPort, w.relisten}
			if o == serverFirst && on {
				cells = append(cells, "<- a plain net.Listen + net/http server")
			}
			found := false
			for _, l := range lines {
				if strings.HasPrefix(l, o.String()+" ") && fields(l, o.String()) == strings.Join(cells[1:], "|") {
					found = true
				}
			}
			if !found {
				t.Errorf("no line %q in:\n%s", strings.Join(cells, " | "), out)
			}
		}
	}
	// The explanation is for reading in a terminal: at most 10 lines of at
	// most ~90 columns. (The table is as wide as its cells need.)
	_, why, _ := strings.Cut(out, "\nWhy:")
	para := strings.Split(strings.TrimSpace("Why:"+why), "\n")
	if len(para) > 10 {
		t.Errorf("explanation has %d lines, want at most 10", len(para))
	}
	for _, l := range para {
		if len(l) > 92 {
			t.Errorf("explanation line is %d columns wide: %q", len(l), l)
		}
	}
}

// TestCLI: -h says what the command does; a stray argument is an error.
func TestCLI(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := cli([]string{"-h"}, &out, &errOut); code != 0 {
		t.Errorf("-h: exit %d", code)
	}
	for _, s := range []string{"usage: closeorder", "close order", "TIME_WAIT", "reuse.Upgrade", "-restarts"} {
		if !strings.Contains(errOut.String(), s) {
			t.Errorf("-h output lacks %q:\n%s", s, errOut.String())
		}
	}
	errOut.Reset()
	if code := cli([]string{"extra"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "usage:") {
		t.Errorf("a stray argument: exit %d, output %q", code, errOut.String())
	}
	if out.Len() != 0 {
		t.Errorf("nothing on stdout: %q", out.String())
	}
}

// fields returns the cells of a table line after its first cell, joined by
// "|". Cells are separated by at least two spaces; a cell holds single ones.
func fields(line, first string) string {
	var cells []string
	for _, c := range strings.Split(strings.TrimPrefix(line, first), "  ") {
		if c = strings.TrimSpace(c); c != "" {
			cells = append(cells, c)
		}
	}
	return strings.Join(cells, "|")
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count descriptors: %v", err)
	}
	return len(ents)
}

// TestRows_ForeignSocket: a socket that is not the demo's own shows up on
// its port between the closes and the re-listen, on the demo's address or
// on the wildcard, where it can bind (with SO_REUSEADDR, past the demo's
// TIME_WAIT), else on another local address, which changes nothing. A row
// notices one in its way and is measured again on a fresh port, and every
// row is right.
func TestRows_ForeignSocket(t *testing.T) {
	type key struct {
		o  closeOrder
		on bool
	}
	placed, inWay := map[key]bool{}, map[key]bool{}
	between = func(r row, addr string) func() {
		if placed[key{r.order, r.reuseAddr}] {
			return func() {} // once per row
		}
		placed[key{r.order, r.reuseAddr}] = true
		ap := netip.MustParseAddrPort(addr)
		// Other programs' TIME_WAITs may hold the port on 127.0.0.2: all
		// of 127/8 is loopback.
		hosts := []netip.Addr{ap.Addr(), netip.IPv4Unspecified()}
		for i := byte(2); i < 10; i++ {
			hosts = append(hosts, netip.AddrFrom4([4]byte{127, 0, 0, i}))
		}
		for _, host := range hosts {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
				t.Fatal(err)
			}
			if unix.Bind(fd, &unix.SockaddrInet4{Addr: host.As4(), Port: int(ap.Port())}) == nil {
				t.Logf("%v, SO_REUSEADDR %s: a stranger bound %v", r.order, onOff(r.reuseAddr), netip.AddrPortFrom(host, ap.Port()))
				inWay[key{r.order, r.reuseAddr}] = host == ap.Addr() || host.IsUnspecified()
				return func() { unix.Close(fd) }
			}
			unix.Close(fd)
		}
		// Busy on every address (other programs' TIME_WAITs): the next
		// try gets a stranger.
		delete(placed, key{r.order, r.reuseAddr})
		return func() {}
	}
	defer func() { between = nil }()

	rows, err := measure()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		// More than twice when port 0 gave a port that an earlier
		// row's TIME_WAIT still holds.
		if !placed[key{r.order, r.reuseAddr}] {
			t.Errorf("%v, SO_REUSEADDR %s: no stranger was placed", r.order, onOff(r.reuseAddr))
		}
		if inWay[key{r.order, r.reuseAddr}] && r.tries < 2 {
			t.Errorf("%v, SO_REUSEADDR %s: measured %d times, want 2 or more", r.order, onOff(r.reuseAddr), r.tries)
		}
		w := want[r.order][r.reuseAddr]
		if got := (row{clientRead: r.clientRead, serverPort: r.serverPort, relisten: r.relisten}); got != w {
			t.Errorf("%v, SO_REUSEADDR %s: got %+v, want %+v", r.order, onOff(r.reuseAddr), got, w)
		}
	}
}
