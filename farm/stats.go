package farm

import (
	"sync/atomic"
	"time"
)

// Stats are a node's counters since Join.
type Stats struct {
	Connected bool   // subscribed to the bus now, and the transport answers its probes
	Connects  uint64 // times the subscription came up

	Queued  int    // items waiting to be published (to the bus and, on its own path, the store)
	Dropped uint64 // items dropped from a full queue

	Published            uint64 // sessions published to the bus
	PublishedRevocations uint64 // revocations published
	PublishErrors        uint64 // failed publish batches
	Unpublished          uint64 // items in failed publish batches

	StoreWrites      uint64 // sessions written to the store
	StoreWriteErrors uint64 // failed store batches

	// Unencodable counts sessions left out of a message or the store
	// because they do not fit a record (a server name over
	// session.MaxServerNameLen) or the message size limit; the rest of
	// their batch goes out.
	Unencodable uint64

	// BusHealthy and StoreHealthy say whether the last probe of the bus
	// and of the store was answered (true for a transport that cannot be
	// probed). Connected is false while either is not. ProbeFailures
	// counts failed probes.
	BusHealthy, StoreHealthy bool
	ProbeFailures            uint64

	// NegativeHits counts lookups answered by the negative cache: the ID
	// missed in the store within Config.NegativeCacheTTL, so the store
	// was not asked again.
	NegativeHits uint64

	// TombstonesTruncated counts reads of the store's revocations that
	// returned MaxSetMembers of them: some may have been left out.
	TombstonesTruncated uint64

	WriteThrough         uint64 // handshakes that waited for the store
	WriteThroughTimeouts uint64 // ... and gave up at WriteThroughTimeout
	WriteThroughFailed   uint64 // ... and were told the write failed
	BreakerOpen          bool   // write-through is suspended now
	BreakerTrips         uint64 // times it was suspended

	Received            uint64 // messages from the bus
	Self                uint64 // ... of them sent by this node, ignored
	ReceivedSessions    uint64 // sessions in authentic messages
	Inserted            uint64 // ... inserted into the cache
	InsertRefused       uint64 // ... refused by the cache (expired, revoked, foreign ID key)
	ReceivedRevocations uint64 // revoked chains received

	// With Config.LazyPeers: sessions held as received (Pending), kept so
	// far (PendingKept), decoded and inserted because a client presented
	// them (PendingTaken), and dropped as the oldest when full
	// (PendingEvicted).
	Pending        int
	PendingKept    uint64
	PendingTaken   uint64
	PendingEvicted uint64

	// Rejected counts dropped messages by reason, indexed by Rejection.
	Rejected [numRejections]uint64

	Lookups        uint64 // store lookups (misses of the local cache)
	LookupsSkipped uint64 // misses not looked up: the store breaker was open
	StoreHits      uint64
	StoreMisses    uint64
	StoreTimeouts  uint64
	StoreErrors    uint64
	StoreRejected  uint64 // stored values that did not open: tampered, replaced, or another farm's

	// Lookups that a handshake stopped waiting for, by cause: its
	// LookupTimeout passed (LookupDeadline) or it went away
	// (LookupCanceled). LookupLate counts store answers that came after
	// LookupTimeout (StoreTimeouts, those that never came, within
	// OpTimeout). LookupLatency is the distribution of the store's answers,
	// late ones included: choose LookupTimeout above its tail.
	LookupDeadline uint64
	LookupCanceled uint64
	LookupLate     uint64
	LookupLatency  Histogram

	// WriteThroughLatency is the distribution of write-through waits that
	// ended with the store's answer: choose WriteThroughTimeout above its
	// tail.
	WriteThroughLatency Histogram
	// Lifecycle counts single use, grace cuts and retirements.
	Lifecycle LifecycleStats

	PendingRevocations int    // revoked chains not yet in the store and on the bus (retried)
	Backlog            int    // sessions made during an outage, waiting for the transport
	BacklogDropped     uint64 // ... dropped from the full backlog (the oldest go first)
	WrittenBack        uint64 // sessions written back to a store that lost its data

	// Lag is the distribution of propagation delays: the time between a
	// peer sealing a message and this node receiving it, by the two nodes'
	// clocks.
	Lag Histogram
}

// RejectedTotal returns the number of rejected messages for all reasons.
func (s Stats) RejectedTotal() uint64 {
	var t uint64
	for _, n := range s.Rejected {
		t += n
	}
	return t
}

type nodeCounters struct {
	connects                                               atomic.Uint64
	published, publishedRevocations, publishErrors         atomic.Uint64
	unpublished, storeWrites, storeWriteErrors             atomic.Uint64
	writeThrough, writeThroughTimeouts, writeThroughFailed atomic.Uint64
	received, self, receivedSessions, inserted             atomic.Uint64
	insertRefused, receivedRevocations                     atomic.Uint64
	pendingKept, pendingTaken                              atomic.Uint64
	rejected                                               [numRejections]atomic.Uint64
	lookups, storeHits, storeMisses, storeTimeouts         atomic.Uint64
	storeErrors, storeRejected, lookupsSkipped             atomic.Uint64
	unencodable, negativeHits, tombstonesTruncated         atomic.Uint64
	writtenBack                                            atomic.Uint64

	publishErrLogged, storeErrLogged atomic.Bool
}

// Stats returns a snapshot of the node's counters.
func (n *Node) Stats() Stats {
	c := &n.ctr
	s := Stats{
		Connected:            n.connected.Load() && n.busProbe.healthy() && n.storeProbe.healthy(),
		BusHealthy:           n.busProbe.healthy(),
		StoreHealthy:         n.storeProbe.healthy(),
		Unencodable:          c.unencodable.Load(),
		NegativeHits:         c.negativeHits.Load(),
		TombstonesTruncated:  c.tombstonesTruncated.Load(),
		Connects:             c.connects.Load(),
		Published:            c.published.Load(),
		PublishedRevocations: c.publishedRevocations.Load(),
		PublishErrors:        c.publishErrors.Load(),
		Unpublished:          c.unpublished.Load(),
		StoreWrites:          c.storeWrites.Load(),
		StoreWriteErrors:     c.storeWriteErrors.Load(),
		WriteThrough:         c.writeThrough.Load(),
		WriteThroughTimeouts: c.writeThroughTimeouts.Load(),
		WriteThroughFailed:   c.writeThroughFailed.Load(),
		Received:             c.received.Load(),
		Self:                 c.self.Load(),
		ReceivedSessions:     c.receivedSessions.Load(),
		Inserted:             c.inserted.Load(),
		InsertRefused:        c.insertRefused.Load(),
		ReceivedRevocations:  c.receivedRevocations.Load(),
		Lookups:              c.lookups.Load(),
		LookupsSkipped:       c.lookupsSkipped.Load(),
		StoreHits:            c.storeHits.Load(),
		StoreMisses:          c.storeMisses.Load(),
		StoreTimeouts:        c.storeTimeouts.Load(),
		StoreErrors:          c.storeErrors.Load(),
		StoreRejected:        c.storeRejected.Load(),
		Lag:                  n.lag.snapshot(),
		LookupDeadline:       n.lk.deadline.Load(),
		LookupCanceled:       n.lk.canceled.Load(),
		LookupLate:           n.lk.late.Load(),
		LookupLatency:        n.lk.latency.snapshot(),
		WriteThroughLatency:  n.lk.writeThrough.snapshot(),
		Lifecycle:            n.life.snapshot(),
		PendingRevocations:   n.PendingRevocations(),
		WrittenBack:          c.writtenBack.Load(),
	}
	s.Backlog, s.BacklogDropped = n.backlog.stats()
	for _, pr := range []*probe{n.busProbe, n.storeProbe} {
		if pr != nil {
			s.ProbeFailures += pr.failures.Load()
		}
		if n.storeProbe == n.busProbe {
			break
		}
	}
	for i := range s.Rejected {
		s.Rejected[i] = c.rejected[i].Load()
	}
	s.Queued, s.Dropped = n.q.stats()
	s.PendingKept, s.PendingTaken = c.pendingKept.Load(), c.pendingTaken.Load()
	if n.pend != nil {
		s.Pending, s.PendingEvicted = n.pend.stats()
	}
	if n.sq != nil {
		q, d := n.sq.stats()
		s.Queued += q
		s.Dropped += d
	}
	s.BreakerOpen, s.BreakerTrips = n.brk.state(n.cfg.Now())
	return s
}

// LagBuckets are the upper bounds of the Lag histogram's buckets; a last,
// unbounded bucket follows.
var LagBuckets = []time.Duration{
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 5 * time.Second,
}

// A Histogram counts observations into LagBuckets.
type Histogram struct {
	Counts []uint64 // len(LagBuckets)+1: Counts[i] counts values <= LagBuckets[i]; the last, the rest
	Count  uint64
	Sum    time.Duration
}

type histogram struct {
	counts []atomic.Uint64
	count  atomic.Uint64
	sum    atomic.Int64
}

func newHistogram() histogram {
	return histogram{counts: make([]atomic.Uint64, len(LagBuckets)+1)}
}

func (h *histogram) observe(d time.Duration) {
	d = max(d, 0)
	i := 0
	for i < len(LagBuckets) && d > LagBuckets[i] {
		i++
	}
	h.counts[i].Add(1)
	h.count.Add(1)
	h.sum.Add(int64(d))
}

func (h *histogram) snapshot() Histogram {
	s := Histogram{Counts: make([]uint64, len(h.counts)), Count: h.count.Load(), Sum: time.Duration(h.sum.Load())}
	for i := range h.counts {
		s.Counts[i] = h.counts[i].Load()
	}
	return s
}
