package loadgen

// Plan 9 reports network errors as strings, not errnos: refused and reset
// connections are counted as Other there.
func isRefused(error) bool { return false }

func isReset(error) bool { return false }
