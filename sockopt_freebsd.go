package reuse

import "golang.org/x/sys/unix"

// reusePortOption maps the plan's reuse-port option to this OS's constant.
// FreeBSD's SO_REUSEPORT only allows duplicate binds; SO_REUSEPORT_LB
// (FreeBSD 12+) balances connections over the group.
func reusePortOption(o sockopt) (int, bool) {
	switch o {
	case soReusePort:
		return unix.SO_REUSEPORT, true
	case soReusePortLB:
		return unix.SO_REUSEPORT_LB, true
	}
	return 0, false
}
