package reuse_test

import (
	"context"
	"fmt"
	"log"
	"net"

	"github.com/safelisten/reuse"
)

// Control fits a net.ListenConfig you already have, for its other fields.
func ExampleControl() {
	lc := net.ListenConfig{
		KeepAlive: -1,
		Control:   reuse.Control(reuse.WithReuseAddr(true)),
	}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	fmt.Println(ln.Addr().Network())
	// Output: tcp
}

// ListenConfig returns a net.ListenConfig to adjust further, here to choose
// plain TCP over MPTCP.
func ExampleListenConfig() {
	lc := reuse.ListenConfig(reuse.WithRSTOnClose())
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	fmt.Println(ln.Addr().Network())
	// Output: tcp
}

// IsAddrInUse tells "the port is taken" from other failures on every OS,
// including Windows, where errors.Is(err, syscall.EADDRINUSE) is false.
func ExampleIsAddrInUse() {
	first, err := reuse.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer first.Close()

	_, err = reuse.Listen("tcp", first.Addr().String())
	fmt.Println(reuse.IsAddrInUse(err))
	// Output: true
}

// A client that must reconnect from a fixed local port binds it with
// SO_REUSEADDR, so its own last connection's TIME_WAIT does not stop it.
func ExampleDial() {
	ln, err := reuse.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	c, err := reuse.Dial("tcp", "127.0.0.1:0", ln.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	fmt.Println(c.RemoteAddr().String() == ln.Addr().String())
	// Output: true
}

// ListenPacket leaves SO_REUSEADDR off for UDP unless asked: with it, another
// user's socket could bind the same port and read its datagrams.
func ExampleListenPacket() {
	pc, err := reuse.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer pc.Close()
	_, err = reuse.ListenPacket("udp", pc.LocalAddr().String())
	fmt.Println(reuse.IsAddrInUse(err))
	// Output: true
}
