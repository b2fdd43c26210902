package natsbus

import "testing"

// SetMaxSetMembers sets the bound on what SetMembers returns, in place of
// transport.MaxSetMembers, for the rest of the test tb.
func SetMaxSetMembers(tb testing.TB, n int) {
	old := maxSetMembers
	maxSetMembers = n
	tb.Cleanup(func() { maxSetMembers = old })
}

// TooFewPeers exposes tooFewPeers to the tests.
var TooFewPeers = tooFewPeers
