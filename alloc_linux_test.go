package reuse

import (
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Allocation counts are pinned against the stdlib in the same run, so that
// a change that makes Listen or Accept allocate more fails here.

func TestAllocs_ListenWithDefaultsCostsOneMoreThanNetListen(t *testing.T) {
	listen := func(fn func() (net.Listener, error)) func() {
		return func() {
			ln, err := fn()
			require.NoError(t, err)
			ln.Close()
		}
	}
	std := testing.AllocsPerRun(100, listen(func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }))
	ours := testing.AllocsPerRun(100, listen(func() (net.Listener, error) { return Listen("tcp", "127.0.0.1:0") }))
	// One more: the weak pointer by which Upgrade finds the listener.
	assert.Equal(t, std+1, ours, "allocations per Listen: net %.0f, reuse %.0f", std, ours)
}

// TestAllocs_AcceptWithRSTOnCloseMatchesStdlib: RST-on-close is inherited
// from the listener, so an accepted connection costs no more than one from a
// plain listener.
func TestAllocs_AcceptWithRSTOnCloseMatchesStdlib(t *testing.T) {
	perConn := func(ln net.Listener) float64 {
		defer ln.Close()
		return testing.AllocsPerRun(100, func() {
			c, err := net.Dial("tcp", ln.Addr().String())
			require.NoError(t, err)
			s, err := ln.Accept()
			require.NoError(t, err)
			s.Close()
			c.Close()
		})
	}
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	rst, err := Listen("tcp", "127.0.0.1:0", WithRSTOnClose())
	require.NoError(t, err)
	std, ours := perConn(plain), perConn(rst)
	assert.Equal(t, std, ours, "allocations per dial+accept+close: net %.0f, reuse RST %.0f", std, ours)
}
