package reuse_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"

	"github.com/safelisten/reuse"
)

// Control fits a net.ListenConfig you already have, for its other fields.
// With no options it gives this OS's safe defaults: SO_EXCLUSIVEADDRUSE on
// Windows, and on Unix the SO_REUSEADDR that Go already sets.
func ExampleControl() {
	lc := net.ListenConfig{
		KeepAlive: -1,
		Control:   reuse.Control(),
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
	lc := reuse.ListenConfig()
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	fmt.Println(ln.Addr().Network())
	// Output: tcp
}

// An option this OS cannot honour is an error, never dropped: the caller
// decides what to do instead. WithReusePort is errors.ErrUnsupported where
// the kernel does not balance connections over listeners (Windows, macOS,
// OpenBSD, ...); this server then runs one listener.
func ExampleWithReusePort_fallback() {
	ln, err := reuse.Listen("tcp", "127.0.0.1:0", reuse.WithReusePort(true))
	if errors.Is(err, errors.ErrUnsupported) {
		ln, err = reuse.Listen("tcp", "127.0.0.1:0")
	}
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
// SO_REUSEADDR on Unix, so its own last connection's TIME_WAIT does not stop
// it. On Windows, where that option would let others share the port, Dial
// leaves it off.
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
