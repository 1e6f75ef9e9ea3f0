//go:build linux

package reuse_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"

	"github.com/safelisten/reuse"
)

// These examples print what Linux does (ECONNRESET, SO_REUSEPORT balancing,
// the socket table); the package's tests run on Linux.

// A server that can be restarted at once: Listen is a drop-in for net.Listen,
// and http.Server takes its listener as it is.
func Example() {
	ln, err := reuse.Listen("tcp", "127.0.0.1:0") // in production: ":8080"
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "hello")
	})}
	go srv.Serve(ln)
	defer srv.Shutdown(context.Background())

	resp, err := http.Get("http://" + ln.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(string(body))
	// Output: hello
}

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

// Two listeners share one port and the kernel balances connections over
// them. Both need WithReusePort, and on Linux the same user ID.
func ExampleWithReusePort() {
	a, err := reuse.Listen("tcp", "127.0.0.1:0", reuse.WithReusePort(true))
	if errors.Is(err, errors.ErrUnsupported) {
		fmt.Println("no balancing SO_REUSEPORT on this OS")
		return
	}
	if err != nil {
		log.Fatal(err)
	}
	defer a.Close()
	b, err := reuse.Listen("tcp", a.Addr().String(), reuse.WithReusePort(true))
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	fmt.Println(a.Addr().String() == b.Addr().String())
	// Output: true
}

// An *AddrInUseError says what holds the port; errors.Is with
// syscall.EADDRINUSE and IsAddrInUse still work on it (Linux only).
func ExampleAddrInUseError() {
	first, err := reuse.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer first.Close()

	_, err = reuse.Listen("tcp4", first.Addr().String())
	fmt.Println(reuse.IsAddrInUse(err), errors.Is(err, syscall.EADDRINUSE))
	fmt.Println(strings.Contains(err.Error(), "is held by a LISTEN socket of this process"))
	// Output:
	// true true
	// true
}

// Diagnosis gives what the message says as data: here the listener that
// holds the port, and its process (Linux only).
func ExampleAddrInUseError_Diagnosis() {
	first, err := reuse.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer first.Close()

	_, err = reuse.Listen("tcp4", first.Addr().String())
	var inUse *reuse.AddrInUseError
	if errors.As(err, &inUse) {
		d := inUse.Diagnosis()
		h := d.Holders[0]
		fmt.Println(d.Reason, d.Count, h.State, h.Local.String() == first.Addr().String(), h.PID == os.Getpid())
	}
	// Output: listener 1 LISTEN true true
}
