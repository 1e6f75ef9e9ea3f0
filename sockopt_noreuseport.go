//go:build aix || darwin || netbsd || openbsd || solaris

package reuse

// reusePortOption reports that this OS has no balancing reuse-port option:
// x/sys has no SO_REUSEPORT for Solaris and illumos, and on the others it
// hands the port to the newest socket instead of balancing.
func reusePortOption(sockopt) (int, bool) { return 0, false }
