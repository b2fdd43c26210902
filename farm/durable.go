package farm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/session"
)

// A RevokeStatus says how far a farm-wide revocation has got.
type RevokeStatus uint8

const (
	// RevokeNotFound: neither this node nor the store knows the session.
	RevokeNotFound RevokeStatus = iota
	// RevokePending: applied on this node and queued for the farm; the
	// node retries, with backoff, until the store holds the tombstone and
	// the bus has carried the revocation.
	RevokePending
	// RevokeApplied: the store holds the tombstone (if there is a store)
	// and the revocation has been published to every node.
	RevokeApplied
	// RevokeRecorded: no reachable node knows the session (neither this
	// node nor the store, and it is not young, or did not come while
	// awaited), so its chain cannot be learned; the revocation is
	// recorded by the session's ID, in the store and on the bus, so that
	// a node that holds the session (its issuer, cut off from the farm
	// when it issued it) revokes its chain when it comes back, before it
	// writes the session to the store, and any node that loads or
	// receives it later does too.
	RevokeRecorded
)

// String returns "not-found", "pending", "applied" or "recorded".
func (s RevokeStatus) String() string {
	switch s {
	case RevokeNotFound:
		return "not-found"
	case RevokePending:
		return "pending"
	case RevokeApplied:
		return "applied"
	case RevokeRecorded:
		return "recorded"
	}
	return "RevokeStatus(?)"
}

// A pendingRev is one revoked chain on its way to the farm.
type pendingRev struct {
	rev    revocation
	ids    []session.ID // stored sessions of the chain to delete
	stored bool         // tombstone written (or no store)
	// tomb is the revocation sealed for the store, once a write of it
	// was tried: every later write adds the same member, so that a write
	// cut short (it may have added it) and tried again leaves one
	// tombstone, not two. A later until seals it anew.
	tomb      []byte
	published bool
	done      chan struct{} // closed once stored and published
}

// revocations holds the revocations not yet applied farm-wide. It is never
// bounded by dropping: revocations are few and each one matters.
type revocations struct {
	mu      sync.Mutex
	pending []*pendingRev
	byChain map[uint64]*pendingRev // pending, by chain
	ids     []*pendingID           // revocations by ID not yet stored and published (see revokeid.go)
	wake    chan struct{}
	applied uint64
	retries uint64
	// recent holds the last recentApplied chains the revoker applied
	// farm-wide, each with the end it applied, in a ring whose next
	// entry to overwrite is recentNext: see removedDone.
	recent     [recentApplied]appliedRev
	recentNext int
	file       revFile    // Config.RevocationFile's
	idle       *sync.Cond // on mu: a journal write ended (revFile.writing)
	// syncs counts the writes to Config.RevocationFile and its journal
	// (appends and rewrites), each one fsync or more, for the tests and
	// benchmarks.
	syncs uint64
	// writeHook, if set, is called before each journal write, n.revs.mu
	// not held (the tests hold a write up, or slow it down).
	writeHook func()
}

// recentApplied is how many of the chains it applied last the revoker
// remembers, with their ends, for removedDone (16 bytes each). More
// revocations applied while one session.Cache.Remove scans the cache (a
// burst of them) push the chain out: it is then queued once more, one
// more tombstone.
const recentApplied = 256

// An appliedRev is a chain the revoker applied farm-wide, and the end
// (Unix ns) it applied; the zero value is none.
type appliedRev struct {
	chain uint64
	until int64
}

// appliedLocked reports whether the revoker applied a revocation of chain
// until until or later, among the last recentApplied it applied (r.mu is
// held). One whose end has passed matters no more: no session of its
// chain can still be cached.
func (r *revocations) appliedLocked(chain uint64, until time.Time) bool {
	u := until.UnixNano()
	for _, a := range r.recent {
		if a.chain == chain && a.until >= u {
			return true
		}
	}
	return false
}

func (r *revocations) signal() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// add queues a revocation of rev (with stored session id, if known) and
// returns its done channel, once the revocation is durable in
// Config.RevocationFile, if set (persistAddLocked); the error is why it
// is not (it is logged once, and the revocation stays in memory and is
// retried).
func (n *Node) addRevocation(id session.ID, rev revocation) (<-chan struct{}, error) {
	r := &n.revs
	r.mu.Lock()
	p := n.addRevocationLocked(id, rev)
	err := n.persistAddLocked(id, rev)
	r.mu.Unlock()
	r.signal()
	return p.done, err
}

// addRevocationLocked is addRevocation without writing the file or waking
// the revoker (n.revs.mu is held).
func (n *Node) addRevocationLocked(id session.ID, rev revocation) *pendingRev {
	r := &n.revs
	p := r.byChain[rev.chain]
	if p == nil {
		p = &pendingRev{rev: rev, stored: n.cfg.Coord == nil, done: make(chan struct{})}
		r.pending = append(r.pending, p)
		if r.byChain == nil {
			r.byChain = make(map[uint64]*pendingRev)
		}
		r.byChain[rev.chain] = p
	} else if rev.until.After(p.rev.until) {
		// A later end: the store and the bus must get it too, though
		// they may hold the earlier one already. A node that reads only
		// the store (one that joins, or one that missed the message)
		// would otherwise take the chain as revoked only until the
		// earlier end, and accept its sessions after it.
		p.rev.until = rev.until
		p.tomb = nil // sealed with the earlier until
		p.stored = n.cfg.Coord == nil
		p.published = false
	}
	if p.rev.start.IsZero() {
		p.rev.start = rev.start
	}
	if id != (session.ID{}) {
		p.ids = append(p.ids, id)
		if n.cfg.Coord != nil {
			p.stored = false // one more key to delete
		}
	}
	return p
}

// pendingRevocations returns the number of revoked chains not yet applied
// farm-wide (written to the store and published).
func (n *Node) pendingRevocations() int {
	n.revs.mu.Lock()
	defer n.revs.mu.Unlock()
	return len(n.revs.pending) + len(n.revs.ids)
}

// RevokeSession revokes the session id and its whole resumption chain across
// the farm — it stops resuming on every node, including those that only have
// it in the store — and waits (until ctx is done) for the revocation to
// reach the farm. It returns RevokeApplied once the store holds the
// tombstone and the bus has carried it, RevokePending if ctx ended first —
// the revocation is then in force on this node and the node keeps retrying
// (across reconnects; across restarts with Config.RevocationFile) — and
// RevokeRecorded if neither this node nor the store knows id: its chain
// cannot be learned, so the revocation is recorded by id in the store and
// on the bus, and the node that holds the session, if any (an issuer cut
// off from the farm), revokes its chain when it hears of it (see
// RevokeRecorded); RevokePending if ctx ended before the store and the
// bus took that record. While the store cannot be asked, or if ctx ends
// before it answers or before a young session comes, a session this node
// does not hold is recorded by id too (RevokePending): the store is asked
// again, and the session's chain revoked if it knows it, as soon as it
// answers. An id that could no longer resume anywhere (issued longer than
// the cache's Lifetime and ResumeGrace ago), or that the farm's ID keys do
// not authenticate (no node of the farm holds a session under it), is
// RevokeNotFound. Until it reaches the farm, a revocation by id is kept in
// memory and, with Config.RevocationFile, in a file beside it (its path
// plus ".ids"), from which the next Join queues it again. A session that
// another node has
// revoked already is known to the store for as long as its record could
// have lived: its chain is revoked again until its end by this node's
// cache (its MaxChainLifetime), if that is later. On a farm
// without a store, a session this node does not hold is RevokeNotFound
// with ErrNoStore: a peer may hold it, and only a node that holds it can
// revoke its chain. A young session (see Config.WriteThroughTimeout) that
// neither this node nor the store knows yet may still be on its way (its
// issuer's write waiting in a flush window, while its client resumes it
// from a carried copy): it is waited for, on the bus and in the store, as
// a handshake would wait for it, until it is no longer young or ctx ends.
// On a bus that marks its delivery (transport.DeliveryMarker), RevokeApplied
// waits Config.MaxDeliveryLag more: a peer whose delivery lags no further
// has the revocation by then, and one whose delivery lags further (or whose
// subscription is down) takes no carried copy of a session of the chain
// and resumes none it holds before its store confirms the chain is not
// revoked (see the hit gate, hitgate.go).
func (n *Node) RevokeSession(ctx context.Context, id session.ID) (RevokeStatus, error) {
	var done <-chan struct{}
	applied := RevokeApplied // what the farm took, once it did
	if rec, ok := n.cfg.Cache.Remove(id); ok {
		// The REMOVE hook queued the chain, unless a peer's
		// revocation removed the session first: see removedDone.
		done = n.removedDone(id, rec)
	} else {
		if n.cfg.Records == nil {
			// Peers may hold it: no store to learn its chain from.
			// (Without a store there is no write-through, and no
			// young session to wait for.)
			return RevokeNotFound, ErrNoStore
		}
		var found bool
		var err error
		done, found, err = n.revokeUnheld(ctx, id)
		if !found && err == nil && ctx.Err() == nil {
			// No reachable node knows it: recorded by ID.
			if done = n.recordRevocation(id, false); done == nil {
				return RevokeNotFound, nil // it could no longer resume
			}
			applied = RevokeRecorded
			found, err = true, nil
		}
		if !found && (err != nil || ctx.Err() != nil) && n.recordRevocation(id, true) != nil {
			// The store is out of reach, or ctx ended before it
			// answered or before a young session came: the store is
			// asked again, and the revocation recorded by ID, when
			// it answers (see applyIDRevocations).
			return RevokePending, nil
		}
		if !found {
			return RevokeNotFound, err
		}
	}
	if done != nil {
		select {
		case <-done:
		case <-ctx.Done():
			return RevokePending, nil
		}
	}
	if wait := n.RevokeApplyWait(); wait > 0 {
		// A peer resumes a session without asking its store (a carried
		// copy, one it holds) only while its bus has delivered
		// everything published until MaxDeliveryLag ago: once that
		// much has passed since the publish, every such peer has it.
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return RevokePending, nil
		}
	}
	return applied, nil
}

// RevokeApplyWait returns how long RevokeSession waits, after the bus and
// the store carried a revocation, before it reports RevokeApplied:
// Config.MaxDeliveryLag on a bus that marks its delivery
// (transport.DeliveryMarker), zero otherwise. A caller that bounds
// RevokeSession's context to learn whether a revocation applied should
// allow this much on top of the farm's round trips.
func (n *Node) RevokeApplyWait() time.Duration {
	if _, marks := n.cfg.Bus.(transport.DeliveryMarker); marks {
		return n.cfg.MaxDeliveryLag
	}
	return 0
}

func (n *Node) revocationDone(chain uint64) <-chan struct{} {
	n.revs.mu.Lock()
	defer n.revs.mu.Unlock()
	for _, p := range n.revs.pending {
		if p.rev.chain == chain {
			return p.done
		}
	}
	return nil
}

// revoker applies pending revocations to the store and the bus, retrying
// with backoff until both succeed.
func (n *Node) revoker(ctx context.Context) {
	defer n.wg.Done()
	failures := 0
	for {
		var wait <-chan time.Time
		if failures > 0 {
			wait = time.After(backoff(failures))
		}
		select {
		case <-ctx.Done():
			return
		case <-n.revs.wake:
			if failures > 0 {
				// Something changed (a new revocation, a reconnect): try
				// again, but not faster than the backoff allows.
				select {
				case <-ctx.Done():
					return
				case <-wait:
				}
			}
		case <-wait:
		}
		done, progressed := n.applyRevocations(ctx)
		switch {
		case done:
			failures = 0
		case progressed:
			// A chunk the store is too slow to take whole within
			// OpTimeout: what it took is kept, and the next attempt
			// goes on from there at once, at the store's pace.
			failures = 0
			n.revs.signal()
		default:
			failures++
		}
	}
}

// applyRevocations tries once to apply every pending revocation, and
// reports whether none is left, and whether it wrote a tombstone to the
// store that was not there before. It applies them a chunk at a time (at
// most BatchSize revocations), each chunk's store write and publish
// within OpTimeout, and stops at the first chunk that fails: a tombstone
// is one round trip to the store (about 225 µs on Redis here), so a
// long list in one write (the revocations made during a store outage)
// never finished within OpTimeout and was tried again whole, for ever
// (TestManyPendingRevocationsReachTheStore). The tombstones a chunk
// wrote before its OpTimeout ran out count as stored, so that the next
// attempt goes on after them (TestSlowStoreRevocationsDrain).
func (n *Node) applyRevocations(ctx context.Context) (none, progressed bool) {
	r := &n.revs
	idsOK := n.applyIDRevocations(ctx)
	r.mu.Lock()
	ptrs := slices.Clone(r.pending)
	r.mu.Unlock()
	if len(ptrs) == 0 {
		return idsOK, false
	}
	failed := false
	for len(ptrs) > 0 && !failed && ctx.Err() == nil {
		k := min(len(ptrs), n.cfg.BatchSize)
		ok, stored := n.applyRevocationChunk(ctx, ptrs[:k])
		failed = !ok
		progressed = progressed || stored > 0
		ptrs = ptrs[k:]
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	kept := r.pending[:0]
	var done []uint64
	for _, p := range r.pending {
		if p.stored && p.published {
			close(p.done)
			r.recent[r.recentNext] = appliedRev{chain: p.rev.chain, until: p.rev.until.UnixNano()}
			r.recentNext = (r.recentNext + 1) % recentApplied
			delete(r.byChain, p.rev.chain)
			done = append(done, p.rev.chain)
			r.applied++
			continue
		}
		kept = append(kept, p)
	}
	clear(r.pending[len(kept):])
	r.pending = kept
	if failed {
		r.retries++
	}
	n.persistDoneLocked(done)
	return len(r.pending) == 0 && idsOK, progressed
}

// applyRevocationChunk tries once to write the tombstones of ptrs to the
// store and publish them, and reports whether both succeeded, and how
// many tombstones it wrote (all of them, or those written before the
// write failed or ran out of time). It marks what it applied, written
// tombstones included; applyRevocations drops them from the list.
func (n *Node) applyRevocationChunk(ctx context.Context, ptrs []*pendingRev) (bool, int) {
	r := &n.revs
	hdr := header{time: n.cfg.Now(), sender: n.instance, farm: n.cfg.Farm}
	r.mu.Lock()
	work := make([]pendingRev, len(ptrs))
	var sealed []byte // journal records of the tombstones sealed now
	recs := 0
	for i, p := range ptrs {
		if !p.stored && p.tomb == nil {
			p.tomb = n.sealTombstone(hdr, p.rev).member
			if n.cfg.RevocationFile != "" {
				if sealed == nil {
					sealed = []byte{revJournalVersion}
				}
				sealed = appendRevTomb(sealed, p.rev, p.tomb)
				recs++
			}
		}
		work[i] = *p
		work[i].ids = append([]session.ID(nil), p.ids...)
	}
	if recs > 0 {
		// Kept before the store may hold them, so that a restart
		// writes the same members again, not new ones. Should this
		// fail, a restart seals them anew: one more member each.
		n.journalRevocationsLocked(sealed, recs)
	}
	r.mu.Unlock()

	var storeErr, pubErr error
	var toStore []tombstone
	var toPublish []revocation
	var dels []string
	var marks []transport.Item
	for _, w := range work {
		if !w.stored {
			toStore = append(toStore, tombstone{member: w.tomb, until: w.rev.until})
			if m, ok := n.chainMark(hdr, w.rev); ok {
				marks = append(marks, m)
			}
			for _, id := range w.ids {
				dels = append(dels, sessionKey(id))
				if m, ok := n.revokedMark(hdr, id, w.rev); ok {
					marks = append(marks, m)
				}
			}
		}
		if !w.published {
			toPublish = append(toPublish, w.rev)
		}
	}
	var wg sync.WaitGroup
	written := 0 // of toStore, in order
	if len(toStore) > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
			defer cancel()
			written, storeErr = n.storeTombstones(sctx, dels, marks, toStore)
		}()
	}
	if len(toPublish) > 0 {
		pubErr = n.publishRevocations(ctx, hdr, toPublish)
	}
	wg.Wait()
	// A node that joins reads the list after it subscribes (see Join). It
	// misses no revocation only if each one is published after its
	// tombstone is in the store: one published before (or while) it was
	// stored goes out once more. Revocations are rare; a repeat costs a
	// peer a map lookup.
	// stored[i]: work[i]'s tombstone was written by this attempt.
	stored := make([]bool, len(work))
	for i, k := 0, 0; i < len(work) && k < written; i++ {
		if !work[i].stored {
			stored[i] = true
			k++
		}
	}
	var again []revocation
	for i, w := range work {
		if stored[i] && (w.published || pubErr == nil) {
			again = append(again, w.rev)
		}
	}
	var againErr error
	if len(again) > 0 {
		againErr = n.publishRevocations(ctx, hdr, again)
	}
	if storeErr != nil {
		n.ctr.storeWriteErrors.Add(1)
		if ctx.Err() == nil {
			n.logOnce(&n.ctr.storeErrLogged, "farm: revocation not yet in the store; retrying", storeErr)
		}
	}
	if pubErr != nil {
		n.ctr.publishErrors.Add(1)
		if ctx.Err() == nil {
			n.logOnce(&n.ctr.publishErrLogged, "farm: revocation not yet published; retrying", pubErr)
		}
	} else if len(toPublish) > 0 {
		n.ctr.publishedRevocations.Add(uint64(len(toPublish)))
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	for i, p := range ptrs {
		// Only what this attempt covered: ids added meanwhile, or a
		// later end, keep p.stored (and a later end p.published) false.
		same := p.rev.until.Equal(work[i].rev.until)
		if stored[i] && len(p.ids) == len(work[i].ids) && same {
			p.stored = true
		}
		if pubErr == nil && !work[i].published && same {
			p.published = true
		}
		if againErr != nil && stored[i] {
			p.published = false // once more, now that it is stored
		}
	}
	return storeErr == nil && pubErr == nil && againErr == nil, written
}

// storeTombstones deletes the records dels, writes the revoked sessions'
// marks (see revokedMark) and then writes tombs to the store, one at a
// time, and returns how many of tombs it wrote before it was done or
// failed (a tombstone whose write failed, or was cut short by ctx, is not
// counted: it may be in the store, and is written again as the same
// member).
func (n *Node) storeTombstones(ctx context.Context, dels []string, marks []transport.Item, tombs []tombstone) (int, error) {
	if len(dels) > 0 && n.cfg.Records != nil {
		if err := n.cfg.Records.DeleteRecords(ctx, dels...); err != nil {
			return 0, err
		}
	}
	if len(marks) > 0 && n.cfg.Records != nil {
		if err := n.cfg.Records.PutRecords(ctx, marks...); err != nil {
			return 0, err
		}
	}
	for i, tb := range tombs {
		if err := n.cfg.Coord.SetAdd(ctx, tombstoneKey, tb.member, tb.until); err != nil {
			return i, err
		}
	}
	return len(tombs), nil
}

// publishRevocations publishes revs in as many messages as the bus's size
// limit needs (busMessages).
func (n *Node) publishRevocations(ctx context.Context, hdr header, revs []revocation) error {
	items := make([]item, len(revs))
	for i := range revs {
		items[i].rev = &revs[i]
	}
	msgs, _, _ := n.busMessages(hdr, items)
	pctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	return n.publish(pctx, msgs...)
}

// drainRevocations tries, until ctx is done, to apply what is pending (Close
// calls it).
func (n *Node) drainRevocations(ctx context.Context) {
	for failures := 1; ; failures++ {
		done, progressed := n.applyRevocations(ctx)
		if done {
			return
		}
		if progressed {
			failures = 0 // as the revoker: go on at the store's pace
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff(failures)):
		}
	}
}

// revocationFileContext is the context Config.RevocationFile is sealed
// with (see appendRevocationFile for its body).
const revocationFileContext = "pending-revocations"

// Config.RevocationFile holds the pending revocations as of its last
// rewrite (compactRevocationsLocked), in the format it has always had, so
// that an older node still reads it. What changes after is appended to
// the pending revocations journal beside it (revJournalSuffix after it):
// each revocation added, before RevokeSession returns, and the chains
// applied farm-wide, each append one write and one fsync, so that adding
// a revocation to N pending costs a frame, not a rewrite of N; and the
// tombstones the revoker seals, before it writes them to the store
// (revRecTomb), so that a restart writes the same members again. Appends
// are grouped (journalRevocationsLocked): the records added while one
// write is in flight go in the next, one write and one fsync for all of
// them, and each caller waits for the write that holds its own. The file
// is rewritten, and the journal started again with the pending
// revocations' tombstones alone, if any is sealed (journalTombsLocked),
// by Join (loadRevocations), by Close, when an append fails, and once the
// journal holds more than revJournalBound records for the pending
// revocations; both are removed when none is pending.
//
// The journal is framed and sealed as the sent journal is (journal.go),
// under a context of its own. Its first frame's body is revJournalVersion
// and the SHA-256 of the revocations file it extends (its bytes as
// written; zeros where there was none): one that names another file (a
// crash came after a rewrite and before the journal was removed, or an
// older node rewrote the file) is ignored, since that file holds what it
// added. Each further frame's body is revJournalVersion and then records
// (appendRevRecord). A last frame cut short, or zero bytes where one
// should begin (a crash during an append), ends the journal: its records
// were never reported durable. Anything else that does not open or
// decode fails Join, as a malformed revocations file does.
const (
	revJournalSuffix  = ".journal"
	revJournalContext = "pending-revocations-journal"
	revJournalVersion = 1
	// revJournalSlack is the records a journal may hold beyond three
	// times the pending revocations (an add, a tombstone and room for the
	// dones each) before it is compacted: a rewrite of N costs about as
	// much as appending N records, and so stays within a few times what
	// the appends cost.
	revJournalSlack = 256
)

// Kinds of a revocations journal record: a revocation added (its entry
// as in the file, with at most one ID), a chain applied farm-wide, and the
// tombstone a pending revocation was sealed into for the store (chain,
// until, the member's length in 2 bytes and the member), so that a
// restart writes the same member again and adds none to the store's set.
const (
	revRecAdd  = 1
	revRecDone = 2
	revRecTomb = 3
)

// revTombsOnly is what the first frame of a journal that Close leaves
// names after the file's hash (revTombsOnlyHash): a node that predates
// revRecTomb finds it names another file, and ignores it (reading the
// file alone, as after a clean Close before), where it would refuse the
// records it does not know.
const revTombsOnly = "tombstones only"

// revTombsOnlyHash returns the name a journal that holds only tombstone
// records gives the file it goes with, whose hash is h.
func revTombsOnlyHash(h [sha256.Size]byte) [sha256.Size]byte {
	return sha256.Sum256(append([]byte(revTombsOnly), h[:]...))
}

// maxTombLen bounds the member of a tombstone record (its length is 2
// bytes); a longer one (none is) is not kept.
const maxTombLen = 1<<16 - 1

// appendRevTomb appends a revRecTomb record of rev sealed as tomb.
func appendRevTomb(b []byte, rev revocation, tomb []byte) []byte {
	if len(tomb) > maxTombLen {
		return b
	}
	b = append(b, revRecTomb)
	b = binary.BigEndian.AppendUint64(b, rev.chain)
	b = binary.BigEndian.AppendUint64(b, uint64(rev.until.UnixNano()))
	b = binary.BigEndian.AppendUint16(b, uint16(len(tomb)))
	return append(b, tomb...)
}

// revJournalBound returns the most records the journal may hold with
// live revocations pending.
func revJournalBound(live int) int { return 3*live + revJournalSlack }

// revJournalPath returns the path of the journal beside the revocations
// file at path.
func revJournalPath(path string) string { return path + revJournalSuffix }

// revFile is the state of Config.RevocationFile and its journal
// (revocations.file); n.revs.mu is held. While writing, the journal (and
// the files) are the writer's alone: the others wait (waitIdleLocked).
type revFile struct {
	hash    [sha256.Size]byte // the file's, as the journal names it; zeros: none
	onDisk  bool              // a file or journal may be there
	journal *os.File          // open for appending; nil: none since the last rewrite
	recs    int               // records appended to the journal
	compact bool              // the next write rewrites the file
	failed  bool              // the last write failed, and said so
	writing bool              // a journal write is in flight, n.revs.mu released
	next    *revBatch         // the records waiting for the next write; nil: none
}

// A revBatch is the journal frames that wait for the same write: those
// queued while the write before was in flight.
type revBatch struct {
	bodies [][]byte // a frame's body each
	recs   int      // the records they hold
	done   bool     // written, or made moot by a rewrite or a removal
	err    error    // why neither the write nor the rewrite after it took them
}

// waitIdleLocked waits until no journal write is in flight (n.revs.mu is
// held, and released while it waits).
func (r *revocations) waitIdleLocked() {
	for r.file.writing {
		r.idleCond().Wait()
	}
}

// idleCond returns r.idle, made on first use (r.mu is held).
func (r *revocations) idleCond() *sync.Cond {
	if r.idle == nil {
		r.idle = sync.NewCond(&r.mu)
	}
	return r.idle
}

// finishNextLocked ends the batch waiting for the next write, if any,
// with err: a rewrite (err nil) or a removal made it moot.
func (f *revFile) finishNextLocked(err error) {
	if f.next != nil {
		f.next.done, f.next.err = true, err
		f.next = nil
	}
}

// persistAddLocked makes the revocation rev (with stored session id, if
// known), just added, durable in Config.RevocationFile, if set, before
// the caller reports it: appended to the journal and fsynced, or the file
// rewritten (n.revs.mu is held, and released while it waits). It returns
// why neither was done.
func (n *Node) persistAddLocked(id session.ID, rev revocation) error {
	if n.cfg.RevocationFile == "" {
		return nil
	}
	var ids []session.ID
	if id != (session.ID{}) {
		ids = []session.ID{id}
	}
	return n.journalRevocationsLocked(appendRevRecord([]byte{revJournalVersion}, revRecAdd, rev, ids), 1)
}

// persistDoneLocked records in Config.RevocationFile, if set, that the
// chains done are applied farm-wide and no longer pending: it removes the
// file and journal if nothing is pending, else appends to the journal (a
// crash before that only applies them once more). n.revs.mu is held, and
// released while it waits.
func (n *Node) persistDoneLocked(done []uint64) {
	if n.cfg.RevocationFile == "" || len(done) == 0 {
		return
	}
	n.revs.waitIdleLocked()
	if len(n.revs.pending) == 0 {
		n.removeRevocationFilesLocked()
		return
	}
	body := make([]byte, 1, 1+len(done)*9)
	body[0] = revJournalVersion
	for _, c := range done {
		body = appendRevRecord(body, revRecDone, revocation{chain: c}, nil)
	}
	n.journalRevocationsLocked(body, len(done))
}

// journalRevocationsLocked appends a frame of body (recs records) to the
// journal, creating it if need be, or has the file rewritten instead
// (compactRevocationsLocked) when one is due or the append fails, and
// returns once that is done, with why neither was. n.revs.mu is held, and
// released while it waits.
//
// The frames queued while a write is in flight go in the next one, one
// write and one fsync for all of them (group commit): the first caller to
// find no write in flight writes the batch (writeBatchLocked), and the
// others wait for it. Each caller returns only once the write, or the
// rewrite, that holds its own record has ended, with its outcome.
func (n *Node) journalRevocationsLocked(body []byte, recs int) error {
	r := &n.revs
	f := &r.file
	if f.next == nil {
		f.next = &revBatch{}
	}
	b := f.next
	b.bodies = append(b.bodies, body)
	b.recs += recs
	for !b.done {
		if f.writing {
			r.idleCond().Wait()
			continue
		}
		n.writeBatchLocked() // b is f.next: the write before it ended
	}
	return b.err
}

// writeBatchLocked writes the batch waiting (f.next) to the journal, in
// one write and one fsync, n.revs.mu released meanwhile, or rewrites the
// file instead when one is due or the write fails (a frame cut short
// there ends what the journal gives back: the journal is not appended to
// again). It ends the batch with the outcome. n.revs.mu is held and no
// write is in flight.
func (n *Node) writeBatchLocked() {
	r := &n.revs
	f := &r.file
	b := f.next
	if f.compact || f.recs+b.recs > revJournalBound(len(r.pending)) {
		if err := n.compactRevocationsLocked(); err != nil {
			f.finishNextLocked(err) // a success ended it
		}
		return
	}
	f.next = nil
	var first []byte // the journal's first frame's body, if it is new
	if f.journal == nil {
		f.recs = 0
		first = append([]byte{revJournalVersion}, f.hash[:]...)
	}
	jf, path, hook := f.journal, revJournalPath(n.cfg.RevocationFile), r.writeHook
	f.writing = true
	r.syncs++
	r.mu.Unlock()
	if hook != nil {
		hook()
	}
	var buf []byte
	if first != nil {
		buf = n.appendFrame(buf, first, revJournalContext)
	}
	for _, body := range b.bodies {
		buf = n.appendFrame(buf, body, revJournalContext)
	}
	err := writeJournal(&jf, path, buf)
	r.mu.Lock()
	f.journal, f.writing = jf, false
	r.idleCond().Broadcast()
	if err == nil {
		f.recs += b.recs
		f.onDisk, f.failed = true, false
		b.done = true
		return
	}
	f.compact = true
	if !f.failed {
		n.log.Warn("farm: cannot append to the pending revocations journal; rewriting the pending revocations file", "err", err)
	}
	// The rewrite holds b's records, which are in memory, and those
	// queued since.
	b.err = n.compactRevocationsLocked()
	b.done = true
}

// compactRevocationsLocked writes the pending revocations to
// Config.RevocationFile, if set, whole (sealed with the farm secret), and
// removes the journal; or removes both if none is pending. Either holds
// what the batch waiting for a journal write (f.next) would add, which it
// ends. It returns why the file was not written. n.revs.mu is held, and
// released while it waits for a journal write in flight to end.
func (n *Node) compactRevocationsLocked() error {
	return n.rewriteRevocationsLocked(false)
}

// rewriteRevocationsLocked is compactRevocationsLocked; then, if a
// pending revocation has its tombstone sealed, it starts the journal
// again with them (revRecTomb), named, if closing, so that only a node
// that knows them reads it (revTombsOnlyHash).
func (n *Node) rewriteRevocationsLocked(closing bool) error {
	path := n.cfg.RevocationFile
	if path == "" {
		return nil
	}
	n.revs.waitIdleLocked()
	f := &n.revs.file
	if len(n.revs.pending) == 0 {
		return n.removeRevocationFilesLocked()
	}
	var body []byte
	for _, p := range n.revs.pending {
		body = appendRevocationFile(body, p.rev, p.ids)
	}
	hdr := header{typ: valTombstone, time: n.cfg.Now(), sender: n.instance, farm: n.cfg.Farm}
	sealed := n.keys.seal(nil, hdr, body, []byte(revocationFileContext))
	n.revs.syncs++
	if err := writeFileAtomic(path, sealed); err != nil {
		if !f.failed {
			n.log.Warn("farm: cannot persist pending revocations; they stay in memory and are retried", "err", err)
		}
		f.failed, f.compact = true, true
		return err
	}
	// The journal now names another file: should its removal fail, or a
	// crash come first, the next Join ignores it.
	closeJournalFile(&f.journal)
	if err := os.Remove(revJournalPath(path)); err != nil && !errors.Is(err, os.ErrNotExist) {
		n.log.Warn("farm: cannot remove the pending revocations journal", "err", err)
	}
	f.hash, f.onDisk, f.recs = sha256.Sum256(sealed), true, 0
	f.compact, f.failed = false, false
	f.finishNextLocked(nil)
	n.journalTombsLocked(closing)
	return nil
}

// journalTombsLocked starts the journal, just removed by a rewrite, with
// the tombstones of the pending revocations, if any is sealed: a frame
// that names the file (or, if closing, revTombsOnlyHash of it) and one of
// revRecTomb records. Should the write fail, the journal is removed: a
// restart then seals those revocations anew. n.revs.mu is held, and no
// journal write is in flight.
func (n *Node) journalTombsLocked(closing bool) {
	f := &n.revs.file
	body := []byte{revJournalVersion}
	recs := 0
	for _, p := range n.revs.pending {
		if p.tomb != nil {
			body = appendRevTomb(body, p.rev, p.tomb)
			recs++
		}
	}
	if recs == 0 {
		return
	}
	name := f.hash
	if closing {
		name = revTombsOnlyHash(f.hash)
	}
	buf := n.appendFrame(nil, append([]byte{revJournalVersion}, name[:]...), revJournalContext)
	buf = n.appendFrame(buf, body, revJournalContext)
	path := revJournalPath(n.cfg.RevocationFile)
	n.revs.syncs++
	if err := writeJournal(&f.journal, path, buf); err != nil {
		n.log.Warn("farm: cannot keep the tombstones of the pending revocations; a restart seals them anew", "err", err)
		os.Remove(path)
		return
	}
	if closing {
		// Nothing is appended to a journal so named.
		closeJournalFile(&f.journal)
	}
	f.recs = recs
}

// removeRevocationFilesLocked removes Config.RevocationFile and its
// journal, the journal first: a file left alone holds only revocations
// applied already, which a Join applies once more. None is pending, so
// the batch waiting for a journal write, if any, is moot: it ends. It
// returns why a file was not removed. n.revs.mu is held, and no journal
// write is in flight.
func (n *Node) removeRevocationFilesLocked() error {
	f := &n.revs.file
	if !f.onDisk && !f.compact {
		f.finishNextLocked(nil)
		return nil
	}
	closeJournalFile(&f.journal)
	path := n.cfg.RevocationFile
	for _, p := range []string{revJournalPath(path), path} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			if !f.failed {
				n.log.Warn("farm: cannot remove the pending revocations file", "file", p, "err", err)
			}
			// The next write rewrites the file, which a new journal
			// then names.
			f.failed, f.compact = true, true
			return err
		}
	}
	f.finishNextLocked(nil)
	*f = revFile{}
	return nil
}

// closeRevocations leaves Config.RevocationFile, if set, whole and its
// journal gone (Close calls it), so that what a closed node leaves is one
// file, which an older node reads whole.
func (n *Node) closeRevocations() {
	if n.cfg.RevocationFile == "" {
		return
	}
	r := &n.revs
	r.mu.Lock()
	defer r.mu.Unlock()
	r.waitIdleLocked()
	if r.file.journal != nil || r.file.recs > 0 || r.file.compact {
		n.rewriteRevocationsLocked(true)
	}
	closeJournalFile(&r.file.journal)
}

// loadRevocations reads Config.RevocationFile and its journal, if they
// exist, applies their revocations locally, queues them for the farm and
// rewrites the file whole.
func (n *Node) loadRevocations() error {
	path := n.cfg.RevocationFile
	if path == "" {
		return nil
	}
	if err := checkStateDir(path); err != nil {
		return err
	}
	entries, found, err := n.readRevocations(path)
	if err != nil || !found {
		return err
	}
	now := n.cfg.Now()
	live := make([]revocation, 0, len(entries))
	for _, e := range entries {
		if e.rev.until.After(now) {
			live = append(live, e.rev)
		}
	}
	// In one pass over the cache, before they are queued.
	n.cfg.Cache.RemoveChains(revocationSeq(live), session.OriginPeer)
	// Queued under one lock and written back once: written once per
	// entry, a file of N revocations cost N rewrites of up to its whole
	// size (20000: 150 s before Join returned).
	r := &n.revs
	r.mu.Lock()
	for _, e := range entries {
		rev := e.rev
		if !rev.until.After(now) {
			continue
		}
		var p *pendingRev
		if len(e.ids) == 0 {
			p = n.addRevocationLocked(session.ID{}, rev)
		}
		for _, id := range e.ids {
			p = n.addRevocationLocked(id, rev)
		}
		if e.tomb != nil && p.rev.until.Equal(e.rev.until) {
			// Sealed before the restart, and maybe in the store: the
			// same member, not a new one.
			p.tomb = e.tomb
		}
	}
	r.file.onDisk = true
	n.compactRevocationsLocked()
	r.mu.Unlock()
	r.signal()
	return nil
}

// readRevocations reads the revocations file at path and its journal, and
// returns the revocations they hold, in the order they were first added,
// and whether there was either.
func (n *Node) readRevocations(path string) ([]revocationEntry, bool, error) {
	var set revReplay
	var hash [sha256.Size]byte
	raw, err := readRegular(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, false, fmt.Errorf("farm: the pending revocations file: %w", err)
	default:
		// No bound on the time it was sealed: the file is this node's
		// own, and a clock stepped back since must not make it
		// unreadable.
		_, body, err := n.keys.openLocal(raw, n.cfg.Farm, valTombstone, []byte(revocationFileContext), n.cfg.Now())
		if err != nil {
			return nil, false, errors.New("farm: the pending revocations file does not open under the farm's secrets: " + err.Error())
		}
		entries, err := decodeRevocationFile(body)
		if err != nil {
			return nil, false, errors.New("farm: the pending revocations file is malformed: " + err.Error())
		}
		for _, e := range entries {
			set.add(e)
		}
		hash = sha256.Sum256(raw)
	}
	jpath := revJournalPath(path)
	jraw, err := readRegular(jpath)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return set.entries(), raw != nil, nil
	case err != nil:
		return nil, false, fmt.Errorf("farm: the pending revocations journal: %w", err)
	}
	now := n.cfg.Now()
	tombsOnly := revTombsOnlyHash(hash)
	for first := true; len(jraw) > 0; first = false {
		frame, rest, ok := nextFrame(jraw)
		if !ok || len(frame) == 0 && allZero(jraw) {
			// A crash during an append: what it held was never
			// reported durable.
			n.log.Warn("farm: the pending revocations journal ends in a partial write; what came before is kept", "file", jpath)
			break
		}
		jraw = rest
		_, body, err := n.keys.openLocal(frame, n.cfg.Farm, valTombstone, []byte(revJournalContext), now)
		if err != nil {
			return nil, false, errors.New("farm: the pending revocations journal does not open under the farm's secrets: " + err.Error())
		}
		if first {
			switch {
			case len(body) == 0 || body[0] != revJournalVersion:
				return nil, false, errors.New("farm: the pending revocations journal is of an unknown version")
			case len(body) != 1+sha256.Size:
				return nil, false, errors.New("farm: the pending revocations journal is malformed: a bad first frame")
			case !bytes.Equal(body[1:], hash[:]) && !(raw != nil && bytes.Equal(body[1:], tombsOnly[:])):
				// Left by a crash within a rewrite, after the file
				// was written (which holds what the journal added),
				// or the file was since written by an older node.
				n.log.Info("farm: the pending revocations journal is older than the pending revocations file; ignored", "file", jpath)
				return set.entries(), true, nil
			}
			continue
		}
		recs, err := decodeRevJournal(body)
		if err != nil {
			return nil, false, errors.New("farm: the pending revocations journal is malformed: " + err.Error())
		}
		for _, rec := range recs {
			switch {
			case rec.done:
				set.done(rec.rev.chain)
			case rec.tomb != nil:
				set.tomb(rec.rev, rec.tomb)
			default:
				set.add(revocationEntry{rev: rec.rev, ids: rec.ids})
			}
		}
	}
	return set.entries(), true, nil
}

// readRegular reads the file at path, refusing one that is not a regular
// file: reading a named pipe would block Join until something wrote to it.
func readRegular(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	return os.ReadFile(path)
}

// allZero reports whether b is all zero bytes, as the end of a file
// extended by a write that a power loss cut short can be.
func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// revReplay is a set of pending revocations rebuilt from the file and its
// journal, as addRevocationLocked and applyRevocations change the list.
type revReplay struct {
	order   []*revocationEntry
	byChain map[uint64]*revocationEntry
}

func (s *revReplay) add(e revocationEntry) {
	if p := s.byChain[e.rev.chain]; p != nil {
		if e.rev.until.After(p.rev.until) {
			p.rev.until = e.rev.until
			p.tomb = nil // sealed with the earlier until
		}
		p.ids = append(p.ids, e.ids...)
		return
	}
	if s.byChain == nil {
		s.byChain = make(map[uint64]*revocationEntry)
	}
	p := &revocationEntry{rev: e.rev, ids: slices.Clone(e.ids)}
	s.order = append(s.order, p)
	s.byChain[e.rev.chain] = p
}

func (s *revReplay) done(chain uint64) { delete(s.byChain, chain) }

// tomb records that the pending revocation of rev's chain was sealed into
// tomb, if it is pending with that until (a tombstone of an earlier until,
// or of a chain no longer pending, is of no use).
func (s *revReplay) tomb(rev revocation, tomb []byte) {
	if p := s.byChain[rev.chain]; p != nil && p.rev.until.Equal(rev.until) {
		p.tomb = tomb
	}
}

// entries returns the set, in the order its chains were added.
func (s *revReplay) entries() []revocationEntry {
	out := make([]revocationEntry, 0, len(s.byChain))
	for _, p := range s.order {
		if s.byChain[p.rev.chain] == p {
			out = append(out, *p)
		}
	}
	return out
}

// A revRecord is one record of a revocations journal frame.
type revRecord struct {
	done bool // the chain was applied farm-wide; else added, or sealed
	rev  revocation
	ids  []session.ID
	tomb []byte // revRecTomb: rev sealed as a tombstone
}

// appendRevRecord appends a journal record of kind: for revRecAdd, the
// kind and rev's entry as in the file (appendRevocationFile); for
// revRecDone, the kind and rev's chain (8 bytes).
func appendRevRecord(b []byte, kind byte, rev revocation, ids []session.ID) []byte {
	b = append(b, kind)
	if kind == revRecDone {
		return binary.BigEndian.AppendUint64(b, rev.chain)
	}
	return appendRevocationFile(b, rev, ids)
}

// decodeRevJournal decodes the body of a journal frame after the first,
// all of it or nothing: its version, then records of known kinds only.
func decodeRevJournal(body []byte) ([]revRecord, error) {
	body, err := afterVersion(body, revJournalVersion)
	if err != nil {
		return nil, err
	}
	var out []revRecord
	for len(body) > 0 {
		kind := body[0]
		body = body[1:]
		switch kind {
		case revRecDone:
			if len(body) < 8 {
				return nil, errors.New("truncated record")
			}
			out = append(out, revRecord{done: true, rev: revocation{chain: binary.BigEndian.Uint64(body)}})
			body = body[8:]
		case revRecAdd:
			e, rest, err := decodeRevocationEntry(body)
			if err != nil {
				return nil, err
			}
			out = append(out, revRecord{rev: e.rev, ids: e.ids})
			body = rest
		case revRecTomb:
			if len(body) < 18 {
				return nil, errors.New("truncated record")
			}
			rev := revocation{chain: binary.BigEndian.Uint64(body), until: time.Unix(0, int64(binary.BigEndian.Uint64(body[8:])))}
			k := int(binary.BigEndian.Uint16(body[16:]))
			body = body[18:]
			if len(body) < k || k == 0 {
				return nil, errors.New("truncated or empty tombstone")
			}
			out = append(out, revRecord{rev: rev, tomb: slices.Clone(body[:k])})
			body = body[k:]
		default:
			return nil, fmt.Errorf("unknown record kind %d", kind)
		}
	}
	return out, nil
}

// A revocationEntry is one revocation in Config.RevocationFile's body,
// with the IDs of its chain's stored sessions.
type revocationEntry struct {
	rev revocation
	ids []session.ID
	// tomb is the tombstone rev was sealed into before a restart, from
	// the journal (never in the file); nil: none.
	tomb []byte
}

// revocationEntryLen is the length of an entry before its IDs: chain (8),
// until (8, Unix ns), the number of IDs (2).
const revocationEntryLen = 8 + 8 + 2

// appendRevocationFile appends one entry of Config.RevocationFile's body:
// chain, until, the number of IDs and the IDs (at most 65535 of them).
func appendRevocationFile(b []byte, rev revocation, ids []session.ID) []byte {
	ids = ids[:min(len(ids), 1<<16-1)]
	b = binary.BigEndian.AppendUint64(b, rev.chain)
	b = binary.BigEndian.AppendUint64(b, uint64(rev.until.UnixNano()))
	b = binary.BigEndian.AppendUint16(b, uint16(len(ids)))
	for _, id := range ids {
		b = append(b, id[:]...)
	}
	return b
}

// decodeRevocationFile decodes Config.RevocationFile's body, all of it or
// nothing: an entry cut short, or bytes after the last whole entry, are an
// error.
func decodeRevocationFile(body []byte) ([]revocationEntry, error) {
	var out []revocationEntry
	for len(body) > 0 {
		e, rest, err := decodeRevocationEntry(body)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
		body = rest
	}
	return out, nil
}

// decodeRevocationEntry decodes the entry (appendRevocationFile) at the
// start of b, and returns it and what follows.
func decodeRevocationEntry(b []byte) (revocationEntry, []byte, error) {
	if len(b) < revocationEntryLen {
		return revocationEntry{}, nil, fmt.Errorf("truncated entry (%d bytes left)", len(b))
	}
	e := revocationEntry{rev: revocation{chain: binary.BigEndian.Uint64(b), until: time.Unix(0, int64(binary.BigEndian.Uint64(b[8:])))}}
	k := int(binary.BigEndian.Uint16(b[16:]))
	b = b[revocationEntryLen:]
	if len(b) < k*session.IDLen {
		return revocationEntry{}, nil, fmt.Errorf("truncated entry: %d session IDs announced, room for %d", k, len(b)/session.IDLen)
	}
	if k > 0 {
		e.ids = make([]session.ID, k)
		for i := range e.ids {
			e.ids[i] = session.ID(b[:session.IDLen])
			b = b[session.IDLen:]
		}
	}
	return e, b, nil
}

// backlog holds new sessions whose store write (or, without a store,
// publish) failed, for when the transport returns: bounded, keeping the
// newest, handed back newest first.
type backlog struct {
	mu      sync.Mutex
	items   []item // ring
	head, n int
	dropped uint64
}

func newBacklog(size int) *backlog { return &backlog{items: make([]item, size)} }

func (b *backlog) push(it item) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.n == len(b.items) {
		b.items[b.head] = item{}
		b.head = (b.head + 1) % len(b.items)
		b.n--
		b.dropped++
	}
	b.items[(b.head+b.n)%len(b.items)] = it
	b.n++
}

// popNewest moves up to max unexpired items, newest first, into buf.
func (b *backlog) popNewest(buf []item, max int, now time.Time) []item {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.n > 0 && len(buf) < max {
		i := (b.head + b.n - 1) % len(b.items)
		it := b.items[i]
		b.items[i] = item{}
		b.n--
		if it.rec.Expires.After(now) {
			buf = append(buf, it)
		}
	}
	return buf
}

func (b *backlog) stats() (int, uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n, b.dropped
}

func (b *backlog) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n
}

// laterLife holds the retirements and grace cuts of batches whose store
// write or publish failed, for when the transport returns (see
// keepLifecycle): one per path (Node.lifeq for flush, Node.lifesq for
// flushStore). An item matters only until its expires — by then the
// session's record has left the store, and peers' copies their caches — and
// is dropped silently after that. It holds at most size items, one per
// session: a retirement replaces a cut of the same session (it deletes
// the record the cut would rewrite), and of two cuts the earlier end wins.
// When full, the items that expire soonest go first, counted.
//
// Items popped for a write stay in out until the write's outcome is known
// (settle), so that what the node persists (see saveLife) never misses an
// item in flight; notify, if set, is called after each change.
type laterLife struct {
	mu      sync.Mutex
	size    int
	m       map[session.ID]item
	out     []item
	dropped uint64
	notify  func()
}

func newLaterLife(size int) *laterLife {
	return &laterLife{size: size, m: make(map[session.ID]item)}
}

// push keeps the unexpired items of its, making room, if it must, by
// dropping the items that expire soonest.
func (l *laterLife) push(its []item, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.notify != nil {
		defer l.notify()
	}
	l.pushLocked(its, now)
}

func (l *laterLife) pushLocked(its []item, now time.Time) {
	for _, it := range its {
		if !it.expires.After(now) {
			continue
		}
		if old, ok := l.m[it.id]; ok {
			switch {
			case old.op == opRetire:
				continue
			case it.op == opCut && !it.until.Before(old.until):
				continue
			}
			if it.rec.Expires.IsZero() {
				it.rec = old.rec // a cut's carried record
			}
			l.m[it.id] = it
			continue
		}
		if len(l.m) >= l.size {
			l.makeRoomLocked(now)
		}
		l.m[it.id] = it
	}
}

// makeRoomLocked drops the expired items and, if that freed too little, the
// quarter of the items that expire soonest.
func (l *laterLife) makeRoomLocked(now time.Time) {
	for id, it := range l.m {
		if !it.expires.After(now) {
			delete(l.m, id)
		}
	}
	if len(l.m) < l.size {
		return
	}
	all := make([]item, 0, len(l.m))
	for _, it := range l.m {
		all = append(all, it)
	}
	slices.SortFunc(all, func(a, b item) int { return a.expires.Compare(b.expires) })
	for _, it := range all[:max(len(all)/4, len(all)-l.size+1)] {
		delete(l.m, it.id)
		l.dropped++
	}
}

// pop moves up to max unexpired items into buf.
func (l *laterLife) pop(buf []item, max int, now time.Time) []item {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id, it := range l.m {
		if len(buf) >= max {
			break
		}
		delete(l.m, id)
		if it.expires.After(now) {
			buf = append(buf, it)
			l.out = append(l.out, it)
		}
	}
	return buf
}

// settle ends the write of the items pop handed out: if it failed, they
// are kept again (as keepLifecycle does when the node is not closing: then
// this changes nothing).
func (l *laterLife) settle(ok bool, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.out) == 0 {
		return
	}
	if !ok {
		l.pushLocked(l.out, now)
	}
	clear(l.out)
	l.out = l.out[:0]
	if l.notify != nil {
		l.notify()
	}
}

// snapshot returns the items kept and those in flight.
func (l *laterLife) snapshot() []item {
	l.mu.Lock()
	defer l.mu.Unlock()
	all := make([]item, 0, len(l.m)+len(l.out))
	for _, it := range l.m {
		all = append(all, it)
	}
	return append(all, l.out...)
}

// get returns the unexpired item kept for id.
func (l *laterLife) get(id session.ID, now time.Time) (item, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	it, ok := l.m[id]
	if ok && !it.expires.After(now) {
		delete(l.m, id)
		return item{}, false
	}
	return it, ok
}

func (l *laterLife) stats() (int, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m), l.dropped
}

func (l *laterLife) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}
