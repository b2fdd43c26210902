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

// SetTakeBeforePurge makes tr's TakeRecord call f with each purge it is
// about to send; set before tr is used.
func SetTakeBeforePurge(tr *Transport, f func(*nats.Msg, []jetstream.PublishOpt)) {
	tr.takeBeforePurge = f
}
