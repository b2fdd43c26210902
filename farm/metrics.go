package farm

import (
	"sync/atomic"
	"time"

	"github.com/tlsfarm/tlsfarm/metric"
)

// nodeCounters are the node's own counters; Metrics reads them.
type nodeCounters struct {
	connects, busGaps                              atomic.Uint64
	published, publishedRevocations, publishErrors atomic.Uint64
	unpublished, storeWrites, storeWriteErrors     atomic.Uint64
	youngWaits                                     [numYoungResults]atomic.Uint64
	received, self, receivedSessions, inserted     atomic.Uint64
	receivedHeld                                   atomic.Uint64
	insertRefused, receivedRevocations             atomic.Uint64
	pendingKept, pendingTaken                      atomic.Uint64
	rejected                                       [numRejections]atomic.Uint64
	lookups, storeHits, storeMisses, storeTimeouts atomic.Uint64
	storeErrors, storeRejected, lookupsSkipped     atomic.Uint64
	unencodable, negativeHits, tombstonesTruncated atomic.Uint64
	tombstoneReadFailures                          atomic.Uint64
	writtenBack, unknownRevs, oldSessions          atomic.Uint64
	gapSessions                                    atomic.Uint64
	tombstoneReads, tombstoneReadsUnchanged        atomic.Uint64
	tombstonesOpened                               atomic.Uint64
	strikes                                        [numStrikeResults]atomic.Uint64
	carried                                        [numCarryResults]atomic.Uint64
	gated                                          [numGateResults]atomic.Uint64

	publishErrLogged, storeErrLogged atomic.Bool
}

// Connected reports whether the node is subscribed to the farm's bus now and
// its transports answer their health probes (see Config.ProbeInterval).
// While it is false the node serves from its local cache and catches up
// when it reconnects.
func (n *Node) Connected() bool {
	return n.connected.Load() && n.busProbe.healthy() && n.storeProbe.healthy()
}

// Metrics returns the node's counters and gauges since Join, named as the
// admin API exports them (tlsfarm_farm_*): messages published and received,
// store writes and lookups by result, rejected messages by reason, the
// publish queue, write-through's waits, the store breaker, the transport's health, and
// the distributions of propagation lag and store latency.
func (n *Node) Metrics() []metric.Sample {
	c := &n.ctr
	var m samples
	m.gauge("tlsfarm_farm_connected", "1 while the node is subscribed to the farm's bus and its transport answers the health probe.", b2f(n.Connected()))
	m.gauges("tlsfarm_farm_healthy", "1 while the last health probe of the bus or the store was answered.", "path",
		"bus", b2f(n.busProbe.healthy()), "store", b2f(n.storeProbe.healthy()))
	var probeFailures uint64
	for _, pr := range []*probe{n.busProbe, n.storeProbe} {
		if pr != nil {
			probeFailures += pr.failures.Load()
		}
		if n.storeProbe == n.busProbe {
			break
		}
	}
	m.counter("tlsfarm_farm_probe_failures_total", "Health probes of the farm transport that failed or timed out, the probes gated hits begin while the store's probe is down included (during a refused store outage with gated traffic, up to about 50 a second per node; otherwise one a ProbeInterval a path).", probeFailures)
	m.counter("tlsfarm_farm_unencodable_total", "Sessions left out of a message or the store: too large, or a server name over 253 bytes.", c.unencodable.Load())
	m.counter("tlsfarm_farm_tombstones_truncated_total", "Reads of the store's revocations cut at the member bound.", c.tombstonesTruncated.Load())
	m.counters("tlsfarm_farm_tombstone_reads_total", "Reads of the store's revocations that succeeded: read whole, or found unchanged by the set's version (not read).", "result",
		"read", c.tombstoneReads.Load(), "unchanged", c.tombstoneReadsUnchanged.Load())
	m.counter("tlsfarm_farm_tombstone_read_failures_total", "Reads of the store's revocations (heals) that failed or did not answer in time; while the bus is up after a gap, each failure is retried with backoff (up to 2 s) and the hit gate stays on.", c.tombstoneReadFailures.Load())
	m.counter("tlsfarm_farm_tombstones_opened_total", "Members of the store's revocations the node opened: each once, not at every read.", c.tombstonesOpened.Load())
	m.counter("tlsfarm_farm_connects_total", "Times the bus subscription came up (after a gap in a subscription that stayed up: not counted).", c.connects.Load())
	m.counters("tlsfarm_farm_bus_gaps_total", "Gaps in a bus subscription that stayed up, settled as outages, by reason: dropped (the transport's client dropped messages that came faster than the node handled them, a NATS slow consumer).", "reason",
		"dropped", c.busGaps.Load())
	queued, dropped := n.q.stats()
	if n.sq != nil {
		q, d := n.sq.stats()
		queued += q
		dropped += d
	}
	m.gauge("tlsfarm_farm_queue_length", "Sessions and revocations waiting to be published.", float64(queued))
	m.counter("tlsfarm_farm_dropped_total", "Items dropped from a full publish queue.", dropped)
	m.counters("tlsfarm_farm_published_total", "Items published to the bus, by kind.", "kind",
		"session", c.published.Load(), "revocation", c.publishedRevocations.Load())
	m.counter("tlsfarm_farm_publish_errors_total", "Publish batches that failed.", c.publishErrors.Load())
	m.counter("tlsfarm_farm_unpublished_total", "Items in publish batches that failed.", c.unpublished.Load())
	m.counter("tlsfarm_farm_store_writes_total", "Sessions written to the store.", c.storeWrites.Load())
	m.counter("tlsfarm_farm_store_write_errors_total", "Store write batches that failed.", c.storeWriteErrors.Load())
	m.counters("tlsfarm_farm_young_waits_total", "Handshakes that waited for a young session this node lacked (write-through), by result: the bus brought it, a store read found it, or neither in time.", "result",
		"arrived", c.youngWaits[youngArrived].Load(), "stored", c.youngWaits[youngStored].Load(), "gave_up", c.youngWaits[youngGaveUp].Load())
	open, trips := n.brk.state(n.cfg.Now())
	m.gauge("tlsfarm_farm_breaker_open", "1 while store lookups are suspended after failures.", b2f(open))
	m.counter("tlsfarm_farm_breaker_trips_total", "Times store lookups were suspended.", trips)
	m.counters("tlsfarm_farm_received_total", "Messages from the bus, by kind.", "kind",
		"own", c.self.Load(), "session", c.receivedSessions.Load(), "revocation", c.receivedRevocations.Load())
	m.gauge("tlsfarm_farm_revoked_ids", "Sessions revoked by ID (no reachable node knew them) that this node keeps, to revoke their chains should it hold one (at most 10000).", float64(n.rids.len()))
	m.counters("tlsfarm_farm_revoked_ids_total", "Revocations by ID: recorded here (RevokeRecorded), received from the bus, and applied (this node held the session, or a lookup brought it, and revoked its chain).", "event",
		"recorded", n.rids.recorded.Load(), "received", n.rids.received.Load(), "applied", n.rids.applied.Load())
	m.gauge("tlsfarm_farm_pending_revocations", "Revocations applied here and not yet in the store and on the bus (retried).", float64(n.pendingRevocations()))
	backlog, backlogDropped := n.backlog.stats()
	m.counter("tlsfarm_farm_backlog_dropped_total", "Sessions made during an outage dropped from the full catch-up backlog.", backlogDropped)
	m.gauge("tlsfarm_farm_backlog_length", "Sessions made during an outage waiting to be written and published.", float64(backlog))
	lifeLen, lifeDropped := n.lifeq.stats()
	if n.lifesq != nil {
		l, d := n.lifesq.stats()
		lifeLen += l
		lifeDropped += d
	}
	m.gauge("tlsfarm_farm_lifecycle_backlog_length", "Retirements and grace cuts made during an outage waiting to be written and published.", float64(lifeLen))
	m.counter("tlsfarm_farm_lifecycle_backlog_dropped_total", "Retirements and grace cuts made during an outage dropped from the full backlog before their sessions expired.", lifeDropped)
	l := &n.life
	m.counters("tlsfarm_farm_consumes_total", "Atomic consumes in the store (single use, Consume), by result.", "result",
		"consumed", l.consumed.Load(), "refused", l.consumeRefused.Load(), "error", l.consumeErrors.Load(), "restored", l.restored.Load())
	m.counters("tlsfarm_farm_strikes_total", "Strikes of 0-RTT anti-replay (Strike), by result: fresh (first use: early data may be accepted), replay (used before), store_lost (the register began after the ticket was issued), error (no answer: no store, breaker open, deadline, store error).", "result",
		"fresh", c.strikes[strikeFresh].Load(), "replay", c.strikes[strikeReplay].Load(),
		"store_lost", c.strikes[strikeStoreLost].Load(), "error", c.strikes[strikeError].Load())
	m.counters("tlsfarm_farm_lifecycle_total", "Grace cuts and retirements sent to and received from peers.", "event",
		"retire_sent", l.retiresSent.Load(), "retire_received", l.retiresReceived.Load(), "cut_sent", l.cutsSent.Load(), "cut_received", l.cutsRecv.Load())
	rs := &n.rs
	m.counters("tlsfarm_farm_lifecycle_resend_total", "Requests to peers to write and publish again the retirements and grace cuts they hold (after a bus gap, or a write-back to a store that lost its data): sent, failed to send, received; and the retirements and cuts this node queued again (resent).", "event",
		"request_sent", rs.asksSent.Load(), "request_failed", rs.asksFailed.Load(), "request_received", rs.asksReceived.Load(), "resent", rs.resent.Load())
	m.counters("tlsfarm_farm_carried_total", "Carried copies of sessions this node did not hold, presented in tickets (see Config.CarrySessions), by what the node decided: admitted; refused (a peer's copy would be: retired, resumed or held back here); old (not young); gap (issued before the node's current period of reaching the farm); cut_off (the node cannot reach the farm); lagging (the node's bus delivery lags by more than Config.MaxDeliveryLag, or is not marked); off (not taken here).", "result",
		carryResults[carryAdmitted], c.carried[carryAdmitted].Load(), carryResults[carryRefused], c.carried[carryRefused].Load(),
		carryResults[carryOld], c.carried[carryOld].Load(), carryResults[carryGap], c.carried[carryGap].Load(),
		carryResults[carryCutOff], c.carried[carryCutOff].Load(), carryResults[carryLagging], c.carried[carryLagging].Load(),
		carryResults[carryOff], c.carried[carryOff].Load())
	m.counters("tlsfarm_farm_gated_hits_total", "Sessions a handshake found in the cache (or the farm found for it) while the node's bus delivery lagged by more than Config.MaxDeliveryLag (or the cache's ResumeGrace less Config.FlushWindow, if shorter) or was not marked (its subscription down), checked against the store's revocations and the session's record before they resumed, by result: confirmed (no revocation of the chain, and the record there, or lost with the store's data and left to the write-back: resumed, cut to the record's end if that is earlier); revoked (the chain is revoked: applied here, not resumed); store_error (the store's read failed or did not answer within LookupTimeout, or a mark or the record did not open: not resumed); cut_off (the node reaches neither path to the farm: its probe of the store unanswered, and one the hit began at once if none was in flight, the read finding the store's server unreachable three times, or the read unanswered while the node's writes go unanswered or its bus is down: resumed unchecked; a store that answers, if only to refuse, is store_error); retired (the store deleted the record, with its generation unchanged: retired or taken elsewhere, or a peer's session its issuer has not written yet; or holds it cut to the past: not resumed).", "result",
		gateResults[gateConfirmed], c.gated[gateConfirmed].Load(), gateResults[gateRevoked], c.gated[gateRevoked].Load(),
		gateResults[gateStoreError], c.gated[gateStoreError].Load(), gateResults[gateCutOff], c.gated[gateCutOff].Load(),
		gateResults[gateRetired], c.gated[gateRetired].Load())
	m.counter("tlsfarm_farm_inserted_total", "Peers' sessions inserted into the cache.", c.inserted.Load())
	m.counter("tlsfarm_farm_received_held_total", "Peers' sessions not inserted because the cache already held them as sent (a carried copy admitted before its issuer's message came).", c.receivedHeld.Load())
	m.counter("tlsfarm_farm_old_sessions_total", "Peers' sessions not inserted because their message was sealed more than MaxAge ago (kept by the bus through an outage); the grace cuts of their parents were applied.", c.oldSessions.Load())
	m.counter("tlsfarm_farm_gap_sessions_total", "Peers' sessions not inserted because their message was sealed before the node began to settle a bus gap and came after it (a NATS slow consumer's backlog): left to the store; the grace cuts of their parents were applied.", c.gapSessions.Load())
	m.counter("tlsfarm_farm_insert_refused_total", "Peers' sessions the cache refused (expired, revoked, retired here lately, foreign ID key).", c.insertRefused.Load())
	for i := range numRejections {
		m.add(metric.Sample{
			Name: "tlsfarm_farm_rejected_total", Help: "Messages dropped, by reason (forged, too old, another farm's...).", Kind: metric.Counter,
			Labels: []metric.Label{{Name: "reason", Value: rejectReason(i).String()}}, Value: float64(c.rejected[i].Load()),
		})
	}
	m.counters("tlsfarm_farm_store_lookups_total", "Store lookups on a cache miss, by result.", "result",
		"hit", c.storeHits.Load(), "miss", c.storeMisses.Load(), "timeout", c.storeTimeouts.Load(), "error", c.storeErrors.Load(),
		"rejected", c.storeRejected.Load(), "skipped", c.lookupsSkipped.Load(), "negative", c.negativeHits.Load())
	m.histogram("tlsfarm_farm_lag_seconds", "Time from a peer sealing a message to this node receiving it, by the two clocks.", &n.lag)

	// Diagnostics beyond what the admin API exported before these samples.
	m.counter("tlsfarm_farm_messages_received_total", "Messages from the bus, before they are authenticated.", c.received.Load())
	m.counter("tlsfarm_farm_lookups_total", "Sessions missing from the local cache that were looked up in the store.", c.lookups.Load())
	m.counters("tlsfarm_farm_lookups_abandoned_total", "Store lookups a handshake stopped waiting for, by cause (its lookup timeout passed, or it went away).", "cause",
		"deadline", n.lk.deadline.Load(), "canceled", n.lk.canceled.Load())
	m.counter("tlsfarm_farm_lookups_late_total", "Store answers that came after the lookup timeout.", n.lk.late.Load())
	m.histogram("tlsfarm_farm_lookup_seconds", "Time the store took to answer a lookup, late answers included.", &n.lk.latency)
	m.histogram("tlsfarm_farm_young_wait_seconds", "Time handshakes waited for a young session they then got (write-through).", &n.lk.youngWait)
	var held int
	var evicted uint64
	if n.pend != nil {
		held, evicted = n.pend.stats()
	}
	m.gauge("tlsfarm_farm_lazy_sessions", "Peers' sessions held as received, until a client presents one (lazy peers).", float64(held))
	m.counters("tlsfarm_farm_lazy_total", "Peers' sessions held as received (kept), decoded when a client presented them (taken), or dropped as the oldest (evicted).", "event",
		"kept", c.pendingKept.Load(), "taken", c.pendingTaken.Load(), "evicted", evicted)
	m.gauge("tlsfarm_farm_revocations_known", "1 once the node has read the farm's revocations since it joined; until then it resumes no session from the farm.", b2f(n.revsKnown.Load()))
	m.counter("tlsfarm_farm_unknown_revocations_refused_total", "Store lookups not made and peers' sessions not inserted because the node had yet to read the farm's revocations.", c.unknownRevs.Load())
	rc := &n.recon.results
	m.counters("tlsfarm_farm_reconcile_total", "Cached sessions checked against the store after a bus outage, by result: checked (read), retired (record gone), cut (record ends earlier), skipped (not stored yet by this node), rejected (record did not open); or dropped (no store, and the bus may have lost messages).", "result",
		"checked", rc[reconcileChecked].Load(), "retired", rc[reconcileRetired].Load(), "cut", rc[reconcileCut].Load(),
		"skipped", rc[reconcileSkipped].Load(), "rejected", rc[reconcileRejected].Load(), "dropped", rc[reconcileDropped].Load())
	m.counters("tlsfarm_farm_reconciles_total", "Passes over the cache after a bus outage, by result: done, failed (tried again), store_lost (given up: the store lost its data since the outage began), kept (none needed: the bus kept every message), dropped (no store, and the bus may have lost messages: the cache dropped).", "result",
		"done", n.recon.runs.Load(), "failed", n.recon.fail.Load(), "store_lost", n.recon.lost.Load(),
		"kept", n.recon.kept.Load(), "dropped", n.recon.drops.Load())
	t := &n.tly
	m.counter("tlsfarm_farm_messages_lost_total", "Peers' messages found missing by their tallies: lost by the bus while the subscription stayed up (each loss is settled as a bus gap: a reconcile, or the cache dropped).", t.lost.Load())
	m.counters("tlsfarm_farm_tallies_total", "Tallies of published messages (see Config.TallyInterval): sent, failed to send, received from peers, checked (a peer's count compared), loss (a check that found messages missing).", "event",
		"sent", t.sent.Load(), "failed", t.failed.Load(), "received", t.received.Load(), "checked", t.checked.Load(), "loss", t.losses.Load())
	m.counters("tlsfarm_farm_delivery_marks_total", "Delivery mark requests of this node's (with its answers to its peers'), on a bus of several servers (see Config.PeerMarkInterval): sent, received from peers, forgotten (a peer silent for two minutes, or 60 intervals if longer, no longer holds the mark back).", "event",
		"sent", n.pm.sent.Load(), "received", n.pm.received.Load(), "forgotten", n.pm.forgotten.Load())
	m.counter("tlsfarm_farm_written_back_total", "Sessions written back to a store that lost its data.", c.writtenBack.Load())
	now := n.cfg.Now()
	var over [3]bool
	var overs [3]uint64
	for i, w := range []*idMemory[struct{}]{n.written, n.retired} {
		if w != nil {
			over[i], overs[i] = w.overflow(now)
		}
	}
	if n.resumed != nil {
		over[2], overs[2] = n.resumed.overflow(now)
	}
	m.gauges("tlsfarm_farm_id_memory_overflowed", "1 while a memory of session IDs (written: sessions this node wrote lately; retired, resumed: IDs retired and resumed lately) is past its bound (2^20 IDs) and answers \"maybe\" for every ID it does not hold: restrictions written again, peers' copies of sessions refused (full handshakes).", "memory",
		"written", b2f(over[0]), "retired", b2f(over[1]), "resumed", b2f(over[2]))
	m.counters("tlsfarm_farm_id_memory_overflows_total", "Times a memory of session IDs went past its bound (2^20 IDs) and forgot IDs not yet lapsed, by memory (see tlsfarm_farm_id_memory_overflowed).", "memory",
		"written", overs[0], "retired", overs[1], "resumed", overs[2])
	return m
}

// samples builds a list of metric samples.
type samples []metric.Sample

func (m *samples) add(s metric.Sample) { *m = append(*m, s) }

func (m *samples) counter(name, help string, v uint64) {
	m.add(metric.Sample{Name: name, Help: help, Kind: metric.Counter, Value: float64(v)})
}

func (m *samples) gauge(name, help string, v float64) {
	m.add(metric.Sample{Name: name, Help: help, Kind: metric.Gauge, Value: v})
}

// counters adds one counter per label value; lv holds value, count pairs.
func (m *samples) counters(name, help, label string, lv ...any) {
	for i := 0; i < len(lv); i += 2 {
		m.add(metric.Sample{Name: name, Help: help, Kind: metric.Counter,
			Labels: []metric.Label{{Name: label, Value: lv[i].(string)}}, Value: float64(lv[i+1].(uint64))})
	}
}

// gauges adds one gauge per label value; lv holds value, float64 pairs.
func (m *samples) gauges(name, help, label string, lv ...any) {
	for i := 0; i < len(lv); i += 2 {
		m.add(metric.Sample{Name: name, Help: help, Kind: metric.Gauge,
			Labels: []metric.Label{{Name: label, Value: lv[i].(string)}}, Value: lv[i+1].(float64)})
	}
}

// histogram adds h's snapshot. Its count is the sum of the buckets read, not
// a counter of its own read apart: observations land between the reads, and
// a count read first could be smaller than a bucket read after it (an
// exposition whose +Inf bucket is below a finite one).
func (m *samples) histogram(name, help string, h *histogram) {
	s := metric.Sample{Name: name, Help: help, Kind: metric.Histogram,
		Value: time.Duration(h.sum.Load()).Seconds(), Buckets: make([]metric.Bucket, len(lagBuckets))}
	var cum uint64
	for i, le := range lagBuckets {
		cum += h.counts[i].Load()
		s.Buckets[i] = metric.Bucket{UpperBound: le.Seconds(), Count: cum}
	}
	s.Count = cum + h.counts[len(lagBuckets)].Load()
	m.add(s)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// lagBuckets are the upper bounds of the histograms' buckets; a last,
// unbounded bucket follows.
var lagBuckets = []time.Duration{
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 5 * time.Second,
}

// A histogram counts durations into lagBuckets.
type histogram struct {
	counts []atomic.Uint64 // len(lagBuckets)+1: counts[i] counts values <= lagBuckets[i]; the last, the rest
	sum    atomic.Int64
}

func newHistogram() histogram {
	return histogram{counts: make([]atomic.Uint64, len(lagBuckets)+1)}
}

func (h *histogram) observe(d time.Duration) {
	d = max(d, 0)
	i := 0
	for i < len(lagBuckets) && d > lagBuckets[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(int64(d))
}
