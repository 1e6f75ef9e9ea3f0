package main

import (
	"os"
	"testing"

	"github.com/safelisten/reuse/internal/loadgen"
	"go.uber.org/goleak"
)

// TestMain runs the demo's server when a test starts this binary as one.
func TestMain(m *testing.M) {
	if addr := os.Getenv(envServe); addr != "" {
		os.Exit(serve(addr))
	}
	os.Exit(m.Run())
}

// TestRestarts: under the demo's load, a plain stop-and-start refuses
// connects, and an Upgrade with a drain fails no request.
func TestRestarts(t *testing.T) {
	defer goleak.VerifyNone(t)
	rs, err := measureRestarts(3)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 {
		t.Fatalf("got %d rows, want 2", len(rs))
	}
	plain, up := rs[0], rs[1]
	t.Logf("%s: %v", plain.name, plain.res)
	t.Logf("%s: %v", up.name, up.res)
	if plain.res.Failed[loadgen.Refused] == 0 {
		t.Errorf("a plain restart refused no connect: %v", plain.res)
	}
	if up.res.Failures() != 0 {
		t.Errorf("an Upgrade failed requests: %v", up.res)
	}
	if up.res.OK == 0 || plain.res.OK == 0 {
		t.Errorf("no load got through: %v / %v", plain.res, up.res)
	}
}
