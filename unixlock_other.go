//go:build !linux

package reuse

import "context"

// canReplaceStale is false off Linux: on macOS and the BSDs a live server
// whose accept queue is full also refuses connects, and Windows and Plan 9
// have no flock here. A stale unix socket file is reported, not replaced.
const canReplaceStale = false

// maxPathLen is not used where canReplaceStale is false.
const maxPathLen = 0

func lockFile(context.Context, string) (func(), error) { return func() {}, nil }

func isConnRefused(error) bool { return false }
