//go:build linux || windows

package reuse

import (
	"errors"
	"fmt"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// planOf runs plan for goos and returns its steps as strings ("SO_REUSEADDR=0"),
// with "wrap" added when Listen must set RST-on-close per connection.
func planOf(t *testing.T, goos string, k kind, v via, opts ...Option) ([]string, error) {
	t.Helper()
	o := build(opts)
	steps, wrap, err := plan(goos, k, &o, v)
	if err != nil {
		require.Empty(t, steps)
		require.False(t, wrap)
		return nil, err
	}
	out := []string{}
	for _, s := range steps {
		out = append(out, s.String())
	}
	if wrap {
		out = append(out, "wrap")
	}
	return out, nil
}

var (
	linuxLike = []string{"linux", "android", "dragonfly"}
	bsdLike   = []string{"darwin", "ios", "netbsd", "openbsd"}
	sunLike   = []string{"solaris", "illumos", "aix"}
	noSockets = []string{"plan9", "js", "wasip1"}
	unixes    = append(append(append([]string{"freebsd"}, linuxLike...), bsdLike...), sunLike...)
)

func TestPlan_DefaultsCostNothingOnUnix(t *testing.T) {
	for _, goos := range append(unixes, noSockets...) {
		for _, k := range []kind{kindTCPListen, kindUDP, kindLocal} {
			got, err := planOf(t, goos, k, viaListen)
			require.NoError(t, err, goos)
			assert.Empty(t, got, "%s kind %d: Go's own defaults need no setsockopt", goos, k)
		}
	}
}

func TestPlan_WindowsNeverSetsReuseAddrOnTCP(t *testing.T) {
	for _, opts := range [][]Option{nil, {WithReuseAddr(false)}, {WithReuseAddr(true), WithReuseAddr(false)}, {WithReuseAddr(false), WithExclusiveAddr(false)}} {
		for _, k := range []kind{kindTCPListen, kindTCPDial} {
			for _, v := range []via{viaListen, viaControl} {
				got, err := planOf(t, "windows", k, v, opts...)
				require.NoError(t, err)
				assert.NotContains(t, fmt.Sprint(got), "SO_REUSEADDR", "kind %d %v", k, got)
			}
		}
	}
	// Asked for, it is refused, not ignored: for listeners and Dial, through
	// Listen and Control, whatever comes with it.
	for _, opts := range [][]Option{{WithReuseAddr(true)}, {WithReuseAddr(false), WithReuseAddr(true)}, {WithReuseAddr(true), WithExclusiveAddr(false)}, {WithRSTOnClose(), WithReuseAddr(true)}} {
		for _, k := range []kind{kindTCPListen, kindTCPDial} {
			for _, v := range []via{viaListen, viaControl} {
				_, err := planOf(t, "windows", k, v, opts...)
				require.ErrorIs(t, err, errors.ErrUnsupported, "kind %d via %d", k, v)
				assert.EqualError(t, err, "reuse: WithReuseAddr(true) for TCP on windows, where SO_REUSEADDR lets another socket take a port in use: unsupported operation")
			}
		}
	}
	got, err := planOf(t, "windows", kindTCPListen, viaListen)
	require.NoError(t, err)
	assert.Equal(t, []string{"SO_EXCLUSIVEADDRUSE=1"}, got, "Windows TCP listeners are exclusive by default")
	got, err = planOf(t, "windows", kindTCPListen, viaListen, WithExclusiveAddr(false))
	require.NoError(t, err)
	assert.Empty(t, got, "WithExclusiveAddr(false) restores Go's plain Windows listener")
	got, err = planOf(t, "windows", kindUDP, viaListen)
	require.NoError(t, err)
	assert.Empty(t, got, "UDP on Windows: nothing unless asked")
	got, err = planOf(t, "windows", kindUDP, viaListen, WithReuseAddr(true))
	require.NoError(t, err)
	assert.Equal(t, []string{"SO_REUSEADDR=1"}, got, "UDP on Windows honours WithReuseAddr(true)")
	got, err = planOf(t, "windows", kindUDP, viaListen, WithExclusiveAddr(true))
	require.NoError(t, err)
	assert.Equal(t, []string{"SO_EXCLUSIVEADDRUSE=1"}, got)
	_, err = planOf(t, "windows", kindUDP, viaListen, WithExclusiveAddr(true), WithReuseAddr(true))
	assert.ErrorContains(t, err, "opposite")
}

func TestPlan_Table(t *testing.T) {
	type tc struct {
		goos []string
		kind kind
		via  via
		opts []Option
		want []string // nil with unsupported or errText
		// unsupported: errors.Is(err, errors.ErrUnsupported); errText: any other error.
		unsupported bool
		errText     string
	}
	rst, addrOff, addrOn := WithRSTOnClose(), WithReuseAddr(false), WithReuseAddr(true)
	portOn, portOff, exclOn := WithReusePort(true), WithReusePort(false), WithExclusiveAddr(true)
	cases := map[string]tc{
		"reuseaddr off clears Go's default":     {goos: unixes, kind: kindTCPListen, opts: []Option{addrOff}, want: []string{"SO_REUSEADDR=0"}},
		"reuseaddr on is Go's default, skipped": {goos: unixes, kind: kindTCPListen, opts: []Option{addrOn}, want: []string{}},
		"last option wins":                      {goos: unixes, kind: kindTCPListen, opts: []Option{addrOff, addrOn, portOn, portOff}, want: []string{}},
		"last option wins, other way":           {goos: linuxLike, kind: kindTCPListen, opts: []Option{addrOn, addrOff, portOff, portOn}, want: []string{"SO_REUSEADDR=0", "SO_REUSEPORT=1"}},
		"reuseport balances on linux":           {goos: linuxLike, kind: kindTCPListen, opts: []Option{portOn}, want: []string{"SO_REUSEPORT=1"}},
		"reuseport is _LB on freebsd":           {goos: []string{"freebsd"}, kind: kindTCPListen, opts: []Option{portOn}, want: []string{"SO_REUSEPORT_LB=1"}},
		"reuseport for UDP too":                 {goos: linuxLike, kind: kindUDP, opts: []Option{portOn}, want: []string{"SO_REUSEPORT=1"}},
		"reuseport unsupported without balancing": {goos: append(append(append([]string{"windows"}, bsdLike...), sunLike...), noSockets...),
			kind: kindTCPListen, opts: []Option{portOn}, unsupported: true},
		"reuseport off is a no-op everywhere":   {goos: append(append(unixes, noSockets...), "windows"), kind: kindUDP, opts: []Option{portOff}, want: []string{}},
		"rst inherited: set on the listener":    {goos: append(append([]string{"freebsd"}, linuxLike...), bsdLike...), kind: kindTCPListen, opts: []Option{rst}, want: []string{"SO_LINGER={1,0}"}},
		"rst not inherited: Listen wraps":       {goos: sunLike, kind: kindTCPListen, opts: []Option{rst}, want: []string{"wrap"}},
		"rst on windows: exclusive and wrap":    {goos: []string{"windows"}, kind: kindTCPListen, opts: []Option{rst}, want: []string{"wrap"}}, // after SO_EXCLUSIVEADDRUSE=1
		"rst via Control where not inherited":   {goos: append([]string{"windows"}, sunLike...), kind: kindTCPListen, via: viaControl, opts: []Option{rst}, unsupported: true},
		"rst via Control where inherited":       {goos: linuxLike, kind: kindTCPListen, via: viaControl, opts: []Option{rst}, want: []string{"SO_LINGER={1,0}"}},
		"rst with dial everywhere with sockets": {goos: append(unixes, "windows"), kind: kindTCPDial, opts: []Option{rst, addrOff}, want: []string{"SO_LINGER={1,0}"}},
		"rst on UDP is an error":                {goos: append(unixes, "windows", "plan9"), kind: kindUDP, opts: []Option{rst}, errText: "WithRSTOnClose does not apply to UDP"},
		"dial sets reuseaddr":                   {goos: unixes, kind: kindTCPDial, want: []string{"SO_REUSEADDR=1"}},
		"dial reuseaddr off":                    {goos: unixes, kind: kindTCPDial, opts: []Option{addrOff}, want: []string{}},
		"dial on windows":                       {goos: []string{"windows"}, kind: kindTCPDial, want: []string{}},
		"dial reuseaddr on, windows":            {goos: []string{"windows"}, kind: kindTCPDial, opts: []Option{addrOn}, unsupported: true},
		"listen reuseaddr on, windows":          {goos: []string{"windows"}, kind: kindTCPListen, opts: []Option{addrOn}, unsupported: true},
		"reuseaddr off, windows: Windows' own":  {goos: []string{"windows"}, kind: kindTCPListen, opts: []Option{addrOff}, want: []string{}},
		"udp reuseaddr only when asked":         {goos: append(unixes, "windows"), kind: kindUDP, opts: []Option{addrOn}, want: []string{"SO_REUSEADDR=1"}},
		"udp reuseaddr off clears multicast's":  {goos: append(unixes, "windows"), kind: kindUDP, opts: []Option{addrOff}, want: []string{"SO_REUSEADDR=0"}},
		"exclusive has no effect off windows":   {goos: unixes, kind: kindTCPListen, opts: []Option{exclOn}, want: []string{}},
		"reuseport contradicts exclusive":       {goos: append(unixes, "windows"), kind: kindTCPListen, opts: []Option{exclOn, portOn}, errText: "opposite"},
		"no socket options: anything asked":     {goos: noSockets, kind: kindTCPListen, opts: []Option{addrOn}, unsupported: true},
		"no socket options: rst":                {goos: noSockets, kind: kindTCPListen, opts: []Option{rst}, unsupported: true},
		"no socket options: rst dial":           {goos: noSockets, kind: kindTCPDial, opts: []Option{rst}, unsupported: true},
		"unix networks take no reuse option":    {goos: append(unixes, "windows", "plan9"), kind: kindLocal, opts: []Option{portOff}, errText: "WithReusePort does not apply to unix and ip networks"},
		"unix networks take no rst":             {goos: append(unixes, "windows"), kind: kindLocal, opts: []Option{rst}, errText: "WithRSTOnClose does not apply"},
		"nil option":                            {goos: []string{"linux"}, kind: kindTCPListen, opts: []Option{addrOn, nil}, errText: "option 2 of 2 is nil"},
		"nil control":                           {goos: []string{"linux"}, kind: kindUDP, opts: []Option{WithControl(nil)}, errText: "WithControl(nil)"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			v := c.via
			if v == 0 {
				v = viaListen
			}
			for _, goos := range c.goos {
				got, err := planOf(t, goos, c.kind, v, c.opts...)
				switch {
				case c.unsupported:
					assert.ErrorIs(t, err, errors.ErrUnsupported, goos)
					assert.ErrorContains(t, err, goos, "the error names the OS")
				case c.errText != "":
					assert.ErrorContains(t, err, c.errText, goos)
					assert.NotErrorIs(t, err, errors.ErrUnsupported, goos)
				default:
					require.NoError(t, err, goos)
					if goos == "windows" && c.kind == kindTCPListen {
						got = got[1:] // SO_EXCLUSIVEADDRUSE=1 by default
					}
					assert.Equal(t, c.want, got, goos)
				}
			}
		})
	}
}

func TestKindOf(t *testing.T) {
	for network, want := range map[string]kind{
		"tcp": kindTCPListen, "tcp4": kindTCPListen, "tcp6": kindTCPListen,
		"udp": kindUDP, "udp4": kindUDP, "udp6": kindUDP,
		"unix": kindLocal, "unixgram": kindLocal, "unixpacket": kindLocal, "ip4:icmp": kindLocal, "ip6:58": kindLocal,
	} {
		got, ok := kindOf(network, false)
		assert.True(t, ok, network)
		assert.Equal(t, want, got, network)
	}
	got, ok := kindOf("tcp6", true)
	assert.True(t, ok)
	assert.Equal(t, kindTCPDial, got)
	for _, bad := range []string{"", "tcp7", "TCP", "sctp", ":tcp"} {
		_, ok := kindOf(bad, false)
		assert.False(t, ok, bad)
	}
}

func TestStepString(t *testing.T) {
	assert.Equal(t, "SO_LINGER={1,0}", step{soLinger, true}.String())
	assert.Equal(t, "SO_LINGER={0,0}", step{soLinger, false}.String())
	assert.Equal(t, "SO_EXCLUSIVEADDRUSE=0", step{soExclusiveAddrUse, false}.String())
	assert.Equal(t, "sockopt(99)", sockopt(99).String())
}

// TestControlChain: the caller's functions run after ours, in order, and the
// first error comes back unchanged.
func TestControlChain(t *testing.T) {
	var ran []int
	mk := func(i int, err error) func(string, string, syscall.RawConn) error {
		return func(string, string, syscall.RawConn) error { ran = append(ran, i); return err }
	}
	boom := errors.New("boom")
	fn := control(nil, []func(string, string, syscall.RawConn) error{mk(1, nil), mk(2, boom), mk(3, nil)})
	require.NotNil(t, fn)
	assert.Same(t, boom, fn("tcp4", "127.0.0.1:0", nil))
	assert.Equal(t, []int{1, 2}, ran)
	assert.Nil(t, control(nil, nil), "nothing to do: no Control at all")
}
