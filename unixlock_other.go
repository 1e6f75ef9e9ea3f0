//go:build !(aix || darwin || dragonfly || freebsd || linux || netbsd || openbsd || solaris)

package reuse

import "context"

// canLock is false where there is no flock: a stale unix socket file is then
// reported, not replaced.
const canLock = false

func lockFile(context.Context, string) (func(), error) { return func() {}, nil }

func isConnRefused(error) bool { return false }
