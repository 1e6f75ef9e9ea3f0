//go:build unix && !linux

package main

// adoptOrphans: only Linux has PR_SET_CHILD_SUBREAPER; elsewhere the
// generations of the demo's server that outlive their parent are reaped by
// init.
func adoptOrphans() bool { return false }

func reap(int) {}
