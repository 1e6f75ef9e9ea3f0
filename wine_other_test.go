//go:build !windows

package reuse

import "testing"

// Hooks for what Wine cannot run, for tests shared with Windows
// (helpers_windows_test.go); a program for another OS never runs under Wine.

func onWine() bool { return false }

func unixOrSkip(*testing.T) {}
