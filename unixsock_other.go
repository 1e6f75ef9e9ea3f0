//go:build !linux

package reuse

import (
	"context"
	"net"
)

// replaceStale does nothing off Linux: on macOS and the BSDs a live server
// whose accept queue is full also refuses connects, so a refused connect
// does not prove a socket file stale, and no other system has been checked.
// The bind's error is returned as net.Listen returns it.
func replaceStale(_ context.Context, _ *net.ListenConfig, _, _ string, err error) (net.Listener, error) {
	return nil, err
}
