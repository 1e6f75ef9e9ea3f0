package reuse

import "github.com/safelisten/reuse/internal/census"

// The census's types and states, under the names the tests used when the
// census was part of this package; on every OS, as the per-OS helpers
// (waitStates) take them.
type (
	State  = census.State
	Socket = census.Socket
)

const (
	StateEstablished = census.StateEstablished
	StateSynSent     = census.StateSynSent
	StateSynRecv     = census.StateSynRecv
	StateFinWait1    = census.StateFinWait1
	StateFinWait2    = census.StateFinWait2
	StateTimeWait    = census.StateTimeWait
	StateClose       = census.StateClose
	StateCloseWait   = census.StateCloseWait
	StateLastAck     = census.StateLastAck
	StateListen      = census.StateListen
	StateClosing     = census.StateClosing
)
