package reuse_test

import (
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/safelisten/reuse"
	"github.com/safelisten/reuse/drain"
)

// A server that upgrades to its new version on SIGHUP without failing a
// request, and stops on SIGTERM. README.md's quick start is this function
// as a main (TestREADME_QuickStart).
func Example_upgrade() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP, syscall.SIGTERM)
	ln, err := reuse.Listen("tcp", ":8080") // after an Upgrade: the old process's socket
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello\n")
	})}
	d := drain.New(srv)
	go func() {
		if err := srv.Serve(d.Listener(ln)); !errors.Is(err, http.ErrServerClosed) {
			log.Fatal(err)
		}
	}()
	if err := reuse.Ready(); err != nil { // the old process may go now
		log.Fatal(err)
	}
	for s := range sig {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if s == syscall.SIGHUP {
			if err := reuse.Upgrade(ctx); err != nil {
				log.Print(err) // the new version did not start: serve on
				cancel()
				continue
			}
			err = d.Drain(ctx, time.Second)
		} else {
			err = srv.Shutdown(ctx)
		}
		cancel()
		if err != nil {
			log.Print(err)
		}
		return
	}
}

// TestHelperQuickStart is not a test: it is Example_upgrade as a server
// process, for TestREADME_QuickStartUpgradesOnSIGHUP.
func TestHelperQuickStart(t *testing.T) {
	if os.Getenv("REUSE_TEST_HELPER") != "TestHelperQuickStart" || os.Getenv("REUSE_TEST_SUPERVISE") != "" {
		t.Skip("child process only")
	}
	Example_upgrade()
	os.Exit(0)
}

// TestREADME_QuickStart: README.md's quick start is Example_upgrade, as a
// program, so that it compiles and cannot drift.
func TestREADME_QuickStart(t *testing.T) {
	src, err := os.ReadFile("example_upgrade_linux_test.go")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(readme), "```go\n")
	block, _, _ = strings.Cut(block, "```")
	if !ok {
		t.Fatal("README.md has no Go block")
	}
	code := string(src)
	code = code[strings.Index(code, "import ("):]
	i := strings.Index(code, "// A server that")
	j := strings.Index(code, "func Example_upgrade() {")
	k := strings.Index(code, "\n}\n") + 3
	want := "package main\n\n" + code[:i] + "func main() {" + code[j+len("func Example_upgrade() {"):k]
	want = strings.Replace(want, "\t\"testing\"\n", "", 1)
	want = strings.Replace(want, "\t\"strings\"\n", "", 1)
	if block != want {
		t.Errorf("README.md's quick start differs from Example_upgrade; paste this:\n%s", want)
	}
}
