package farm

import (
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestGateRecordTellsDeletionFromLoss: the hit gate's reading of a
// session's record (checkHit, as a hit makes it while the node's delivery
// lags), on a node of a private Redis, with no revocation mark there. S is
// a peer's session the node holds whole.
//
// A record cut elsewhere cuts the node's copy, which resumes while that
// end is ahead and not after. A record missing while the store's
// generation is the one the node read is a retirement: refused (before
// the gate read records, both resumed). A record missing from a store that
// lost its data (its generation record gone, or another one there: a node
// found the loss first) or while the node writes its sessions back is
// the write-back's to restore, not a retirement: it resumes (a gate that
// refused every missing record refused these, and proxy
// TestEarlyDataRefusedAfterStoreLoss counted a replay after a store
// restart as a resumption refused rather than as store_lost).
func TestGateRecordTellsDeletionFromLoss(t *testing.T) {
	t.Parallel()
	n := benchNode(t, "gaterecord", nil)
	ctx := t.Context()
	gen := n.storeGeneration()
	if gen == nil {
		t.Fatal("the node has not read the store's generation")
	}
	now := time.Now()
	id := n.cfg.Cache.NewID()
	rec := session.Record{State: []byte("state"), ServerName: "localhost", Expires: now.Add(time.Hour), Chain: 7, ChainStart: now}
	if err := n.cfg.Cache.Insert(id, rec, session.OriginPeer); err != nil {
		t.Fatal(err)
	}
	put := func(key string, v []byte) {
		t.Helper()
		if err := n.cfg.Records.PutRecords(ctx, transport.Item{Key: key, Value: v, TTL: time.Hour}); err != nil {
			t.Fatal(err)
		}
	}
	// putRecord stores S's record as its issuer would, ending at end.
	putRecord := func(end time.Time) {
		t.Helper()
		r := rec
		r.Expires = end
		body, err := r.AppendBinary(nil)
		if err != nil {
			t.Fatal(err)
		}
		hdr := header{typ: valRecord, time: n.cfg.Now(), sender: n.instance + 2, farm: n.cfg.Farm}
		put(sessionKey(id), n.keys.seal(nil, hdr, body, id[:]))
	}
	held := func() time.Time {
		for got, r := range n.cfg.Cache.Snapshot(-1) {
			if got == id {
				return r.Expires
			}
		}
		return time.Time{}
	}
	check := func(want bool, what string) {
		t.Helper()
		if got := n.checkHit(ctx, id, rec.Chain); got != want {
			t.Errorf("%s: the gate let S resume: %v, want %v (gated hits: confirmed %d, retired %d, store_error %d)", what, got, want,
				n.ctr.gated[gateConfirmed].Load(), n.ctr.gated[gateRetired].Load(), n.ctr.gated[gateStoreError].Load())
		}
	}

	putRecord(rec.Expires)
	check(true, "S's record whole")
	cut := time.Now().Add(2 * time.Second).Truncate(time.Millisecond)
	putRecord(cut)
	check(true, "S's record cut to its grace, still ahead")
	if got := held(); !got.Equal(cut) {
		t.Errorf("the node's copy of S ends at %v, its record cut elsewhere at %v", got, cut)
	}
	putRecord(time.Now().Add(-time.Millisecond))
	check(false, "S's record cut to the past")

	if err := n.cfg.Records.DeleteRecords(ctx, sessionKey(id)); err != nil {
		t.Fatal(err)
	}
	check(false, "S's record deleted, the store's generation unchanged")
	if got := n.ctr.gated[gateRetired].Load(); got != 2 {
		t.Errorf("%d gated hits counted retired, want 2", got)
	}

	if err := n.cfg.Records.DeleteRecords(ctx, generationKey); err != nil {
		t.Fatal(err)
	}
	check(true, "S's record missing, the store's generation gone with its data")
	put(generationKey, []byte("another node found the loss first"))
	check(true, "S's record missing, the store of another generation")
	put(generationKey, gen)
	n.refilling.Store(true)
	check(true, "S's record missing while the node writes its sessions back")
	n.refilling.Store(false)
	check(false, "S's record missing, the write-back done")
}

// TestHitLag: the hit gate's bound is MaxDeliveryLag, or the grace less
// the flush window where the cache cuts resumed sessions and that is
// shorter.
func TestHitLag(t *testing.T) {
	const ms = time.Millisecond
	for _, tt := range []struct {
		maxLag, grace, window, want time.Duration
	}{
		{500 * ms, 30 * time.Second, 0, 500 * ms},       // the defaults
		{500 * ms, 30 * time.Second, 80 * ms, 500 * ms}, // carried sessions' window
		{500 * ms, 300 * ms, 0, 300 * ms},               // a grace shorter than the bound
		{500 * ms, 300 * ms, 40 * ms, 260 * ms},         // ... with the window
		{500 * ms, 500 * ms, 0, 500 * ms},
		{500 * ms, -1, 0, 500 * ms}, // no cut: resumed sessions keep their Lifetime
	} {
		if got := hitLag(tt.maxLag, tt.grace, tt.window); got != tt.want {
			t.Errorf("hitLag(%v, %v, %v) = %v, want %v", tt.maxLag, tt.grace, tt.window, got, tt.want)
		}
	}
}

// TestPeerMarkInterval: a node's msgMarks come at a fifth of the hit
// gate's bound, so a short grace brings them closer together.
func TestPeerMarkInterval(t *testing.T) {
	const ms = time.Millisecond
	for _, tt := range []struct {
		maxLag, grace, set, want time.Duration
	}{
		{500 * ms, 0, 0, 100 * ms},           // the defaults: a fifth of 500 ms, at most 100 ms
		{150 * ms, 0, 0, 30 * ms},            // a short MaxDeliveryLag
		{500 * ms, 300 * ms, 0, 60 * ms},     // a grace shorter than MaxDeliveryLag
		{500 * ms, 20 * ms, 0, 10 * ms},      // at least 10 ms
		{500 * ms, 300 * ms, 7 * ms, 7 * ms}, // PeerMarkInterval as set
	} {
		c, err := session.New(&session.Config{ResumeGrace: tt.grace})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cfg := Config{Cache: c, MaxDeliveryLag: tt.maxLag, PeerMarkInterval: tt.set}
		if got := peerMarkInterval(&cfg); got != tt.want {
			t.Errorf("MaxDeliveryLag %v, grace %v, PeerMarkInterval %v: interval %v, want %v", tt.maxLag, tt.grace, tt.set, got, tt.want)
		}
	}
}

// TestCarryFlushWindow: with carried sessions and no FlushWindow set, the
// window is 80 ms, or half of whichever of the write-through timeout, the
// lookup timeout and the grace is shorter than twice that.
func TestCarryFlushWindow(t *testing.T) {
	const ms = time.Millisecond
	for _, tt := range []struct {
		writeThrough, lookup, grace, want time.Duration
	}{
		{250 * ms, 250 * ms, 30 * time.Second, 80 * ms}, // the defaults
		{250 * ms, 250 * ms, -1, 80 * ms},               // no cut
		{250 * ms, 100 * ms, 30 * time.Second, 50 * ms}, // a short lookup timeout
		{120 * ms, 250 * ms, 30 * time.Second, 60 * ms}, // a short write-through timeout
		{250 * ms, 250 * ms, 100 * ms, 50 * ms},         // a short grace
	} {
		if got := carryFlushWindow(tt.writeThrough, tt.lookup, tt.grace); got != tt.want {
			t.Errorf("carryFlushWindow(%v, %v, %v) = %v, want %v", tt.writeThrough, tt.lookup, tt.grace, got, tt.want)
		}
	}
}
