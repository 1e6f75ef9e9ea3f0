//go:build !unix

package reuse

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
)

// Upgrade needs fork and exec with inherited descriptors, which this OS does
// not give Go programs in the form the handoff uses.
func upgrade(context.Context) error {
	return fmt.Errorf("reuse: Upgrade on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}

// ready has no parent to tell and no systemd here.
func ready() error { return nil }

// Nothing is inherited here.
func takeListener(context.Context, string, string, *options, bool) (net.Listener, byte, error) {
	return nil, 0, nil
}

func takePacketConn(context.Context, string, string, *options) (net.PacketConn, byte, error) {
	return nil, 0, nil
}

// track: nothing to hand over where Upgrade is unsupported.
func track(any, byte) {}
