//go:build !plan9

package reuse_test

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"syscall"

	"github.com/safelisten/reuse"
)

// These examples check for ECONNRESET, which Plan 9's syscall package lacks.

// WithRSTOnClose makes every accepted connection's Close send RST: no
// TIME_WAIT is left, and the client reads "connection reset by peer".
func ExampleWithRSTOnClose() {
	ln, err := reuse.Listen("tcp", "127.0.0.1:0", reuse.WithRSTOnClose())
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()

	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	client.Write([]byte("ping"))
	server, err := ln.Accept()
	if err != nil {
		log.Fatal(err)
	}
	io.ReadFull(server, make([]byte, 4))
	server.Close()

	_, err = client.Read(make([]byte, 1))
	fmt.Println(errors.Is(err, syscall.ECONNRESET))
	// Output: true
}

// Abort drops one connection with RST, for example a client that misbehaves,
// while the listener's other connections close gracefully.
func ExampleAbort() {
	ln, err := reuse.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	client.Write([]byte("x"))
	server, err := ln.Accept()
	if err != nil {
		log.Fatal(err)
	}
	io.ReadFull(server, make([]byte, 1))

	if err := reuse.Abort(server); err != nil {
		log.Fatal(err)
	}
	_, err = client.Read(make([]byte, 1))
	fmt.Println(errors.Is(err, syscall.ECONNRESET))
	// Output: true
}
