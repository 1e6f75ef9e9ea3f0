package drain_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"time"

	"github.com/safelisten/reuse"
	"github.com/safelisten/reuse/drain"
)

// A server drains when it is told to stop: after reuse.Upgrade has returned
// nil, a new process serves on the same socket, and the clients of this one
// move to it as their responses tell them to, with no failed request.
func Example() {
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello")
	})}
	d := drain.New(srv)

	ln, err := reuse.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(d.Listener(ln)) }()

	// Here the server runs until it is told to stop.

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Connections idle for a second are closed; the others close after
	// their next response.
	if err := d.Drain(ctx, time.Second); err != nil {
		log.Print(err)
		srv.Close()
	}
	fmt.Println(<-served)
	// Output: http: Server closed
}
