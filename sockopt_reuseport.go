//go:build linux || dragonfly

package reuse

import "golang.org/x/sys/unix"

// reusePortOption maps the plan's reuse-port option to this OS's constant;
// SO_REUSEPORT balances connections over the group on Linux and DragonFly.
func reusePortOption(o sockopt) (int, bool) {
	if o == soReusePort {
		return unix.SO_REUSEPORT, true
	}
	return 0, false
}
