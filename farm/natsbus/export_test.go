package natsbus

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// SetMaxSetMembers sets the bound on what SetMembers returns, in place of
// transport.MaxSetMembers, for the rest of the test tb.
func SetMaxSetMembers(tb testing.TB, n int) {
	old := maxSetMembers
	maxSetMembers = n
	tb.Cleanup(func() { maxSetMembers = old })
}

// TooFewPeers exposes tooFewPeers to the tests.
var TooFewPeers = tooFewPeers

// SetReplicasRecheck sets how often a bucket's replica count of one is
// read again, in place of replicasRecheck, for the rest of the test tb,
// which must not run in parallel with others.
func SetReplicasRecheck(tb testing.TB, d time.Duration) {
	old := replicasRecheck
	replicasRecheck = d
	tb.Cleanup(func() { replicasRecheck = old })
}

// SetBeforeCondWrite makes tr call f with each conditional write it is
// about to send (a take's purge; a write of SetNX, CompareAndSwap or
// AddRecord; a cut's); set before tr is used.
func SetBeforeCondWrite(tr *Transport, f func(*nats.Msg, []jetstream.PublishOpt)) {
	tr.beforeCondWrite = f
}
