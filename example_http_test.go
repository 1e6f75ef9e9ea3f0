//go:build linux

package reuse_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"

	"github.com/safelisten/reuse"
)

// This example runs on every OS; it is built on Linux only, where the tests
// run, to keep net/http out of the per-OS vet runs in CI.

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
