package reuse

import "strings"

// isAddrInUse: Plan 9 errors are strings; its IP stack says "address in use"
// (not verified here).
func isAddrInUse(err error) bool {
	return err != nil && strings.Contains(err.Error(), "address in use")
}
