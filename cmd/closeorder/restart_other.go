//go:build !unix

package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"
)

// envServe is unused here: there is no Upgrade to demonstrate.
const envServe = "CLOSEORDER_SERVE"

func serve(string) int {
	fmt.Fprintln(os.Stderr, "closeorder: no server mode on", runtime.GOOS)
	return 1
}

// measureRestarts: reuse.Upgrade needs fork and exec with inherited sockets,
// which this OS does not give Go programs.
func measureRestarts(int) ([]restartResult, error) {
	return nil, fmt.Errorf("reuse.Upgrade on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}
