package farm

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/session"
)

// ErrNoStore is returned by the operations that need the farm's store of
// session records when the node has none.
var ErrNoStore = errors.New("farm: the node has no store")

// ErrNoConsume is returned by the exactly-once operations when the node's
// transport.RecordStore is not a transport.RecordTaker.
var ErrNoConsume = errors.New("farm: the record store cannot consume a record atomically")

// onceKeyPrefix prefixes the keys ConsumeToken sets.
const onceKeyPrefix = "once:"

// itemOp says what a queued item asks of the publisher.
type itemOp uint8

const (
	opNew     itemOp = iota // publish and store a new session (or a revocation, if rev is set)
	opRetire                // a session was retired here: delete it from the store, tell peers
	opCut                   // a session was resumed: cut it to its grace in the store and on peers
	opRestore               // a single-use claim was released: put the session back in the store
	opDropped               // a new session left out: it cannot be encoded within the limit (storeItems), or was retired or its chain revoked since it was queued (refreshLater)
)

// lifeCounters count the farm's part in single use, the grace cut and
// bounded children (see Node.Metrics).
type lifeCounters struct {
	consumed, consumeRefused, consumeErrors, restored atomic.Uint64
	retiresSent, retiresReceived, cutsSent, cutsRecv  atomic.Uint64
	childLinksDropped                                 atomic.Uint64
}

// recuts remembers, in store-only mode, parents known to have been resumed
// within their grace already: cut by this node, cut by a peer (a cut
// message), or loaded from the store already cut. Resuming one of them
// again must replace the child the earlier resumption made (see
// childKeeper); a first resumption only records its child, in the batch.
// Entries lapse with the grace period; the map is bounded. Past the
// bound (maxRecuts parents cut within one grace period: 65536 in 30 s, a
// farm resuming some 2200 sessions a second) it forgets them all, and
// until the last one forgotten would have lapsed (lost), any parent may
// have been resumed before: its new child is swapped, never put over one
// that would then not be retired.
type recuts struct {
	mu   sync.Mutex
	m    map[session.ID]time.Time
	lost time.Time
}

const maxRecuts = 1 << 16

// noteRecut records that id was resumed (cut to end at until).
func (n *Node) noteRecut(id session.ID, until time.Time) {
	if n.cfg.Mode != StoreOnly {
		return
	}
	r := &n.recut
	now := n.cfg.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = make(map[session.ID]time.Time)
	}
	if len(r.m) >= maxRecuts {
		for k, u := range r.m {
			if !u.After(now) {
				delete(r.m, k)
			}
		}
		if len(r.m) >= maxRecuts {
			for _, u := range r.m {
				if u.After(r.lost) {
					r.lost = u
				}
			}
			clear(r.m)
		}
	}
	r.m[id] = until
}

// noteLoaded records id if its record, just loaded, ends within the grace
// period (plus a second): someone resumed it already.
func (n *Node) noteLoaded(id session.ID, expires time.Time) {
	grace := n.cfg.Cache.Config().ResumeGrace
	if grace > 0 && expires.Sub(n.cfg.Now()) <= grace+time.Second {
		n.noteRecut(id, expires)
	}
}

func (n *Node) wasRecut(id session.ID) bool {
	r := &n.recut
	r.mu.Lock()
	defer r.mu.Unlock()
	now := n.cfg.Now()
	if u, ok := r.m[id]; ok {
		return u.After(now)
	}
	return r.lost.After(now)
}

// Consume is the farm's exactly-once primitive: it atomically removes the
// session id from the farm's store and reports true to exactly one caller
// in the whole farm — whichever node, however many call at once. Every
// other caller, and every later one, gets false. The session is then
// retired here and the retirement is published, so that no node resumes it
// from a copy of its own.
//
// The store is the authority: a session that is not (or no longer) in the
// store cannot be consumed (a value at its key that does not open as its
// sealed record counts as none), and an error means the store could not answer,
// in which case the caller must act as if it got false (a full handshake,
// 1-RTT instead of 0-RTT). Without a store it returns ErrNoStore: no
// farm-wide answer is possible.
//
// Single-use caches (session.Config.SingleUse) use the same operation
// through the node (session.Cache.Join), before a handshake may resume the session.
func (n *Node) Consume(ctx context.Context, id session.ID) (bool, error) {
	if n.cfg.Records == nil {
		return false, ErrNoStore
	}
	ok, err := n.consumeStore(ctx, id)
	if err != nil || !ok {
		return false, err
	}
	// The peer that issued the session may not have reached this node
	// yet: its copy, when it comes, must not be inserted.
	n.retired.add(id, n.cfg.Now())
	if !n.cfg.Cache.Retire(id, session.OriginAPI) {
		// Not cached here: publish the retirement ourselves (the REMOVE
		// event would have).
		n.enqueue(item{id: id, op: opRetire, taken: true})
	}
	return true, nil
}

// ConsumeToken is Consume for something that is not a stored session, such
// as a stateless ticket or a 0-RTT ClientHello: it reports true to exactly
// one caller in the farm for each token, until ttl has passed (after which
// the token may be used again; make ttl at least the token's lifetime). The
// store keeps only a hash of the token. Without a store it returns
// ErrNoStore. The promise lasts as long as the store keeps its data: a
// store that restarts empty, or a Redis Cluster shard that does, forgets
// the tokens it held, and they are accepted once more. For a token with an
// issue time, Strike is safe there: it refuses the tokens issued before
// the register it records them in began.
func (n *Node) ConsumeToken(ctx context.Context, token []byte, ttl time.Duration) (bool, error) {
	if n.cfg.Records == nil {
		return false, ErrNoStore
	}
	taker, ok := n.cfg.Records.(transport.RecordTaker)
	if !ok {
		return false, ErrNoConsume
	}
	key := onceKeyPrefix + hex.EncodeToString(n.tokenHash(token))
	return taker.AddRecord(ctx, transport.Item{Key: key, Value: []byte{1}, TTL: max(ttl, time.Millisecond)})
}

// tokenHash is what the store keeps of a token ConsumeToken or Strike
// records: SHA-256 over the farm's name and the token.
func (n *Node) tokenHash(token []byte) []byte {
	h := sha256.New()
	h.Write([]byte("tlsfarm consume-token\x00"))
	h.Write([]byte(n.cfg.Farm))
	h.Write([]byte{0})
	h.Write(token)
	return h.Sum(nil)
}

// consumeStore atomically takes the stored session id out of the store,
// and reports whether this call did.
func (n *Node) consumeStore(ctx context.Context, id session.ID) (bool, error) {
	return n.takeStore(ctx, id, true)
}

// takeStore is consumeStore, counting a refusal only if final is set.
func (n *Node) takeStore(ctx context.Context, id session.ID, final bool) (bool, error) {
	taker, ok := n.cfg.Records.(transport.RecordTaker)
	if !ok {
		n.life.consumeErrors.Add(1)
		return false, ErrNoConsume
	}
	v, err := taker.TakeRecord(ctx, sessionKey(id))
	switch {
	case errors.Is(err, transport.ErrNotFound):
		if final {
			n.life.consumeRefused.Add(1)
		}
		return false, nil
	case err != nil:
		n.life.consumeErrors.Add(1)
		return false, err
	}
	if !n.opensAsRecord(v, id) {
		// Not the farm's record of id (someone who can write to the
		// store put it there): taking it consumes nothing.
		if final {
			n.life.consumeRefused.Add(1)
		}
		return false, nil
	}
	n.life.consumed.Add(1)
	return true, nil
}

// opensAsRecord reports whether v, a value taken from the store, opens as
// the farm's stored record of id. What it decrypts (a session's state) is
// cleared at once.
func (n *Node) opensAsRecord(v []byte, id session.ID) bool {
	_, body, err := n.keys.open(v, n.cfg.Farm, valRecord, id[:], n.cfg.Now(), 0, n.cfg.MaxSkew)
	clear(body)
	return err == nil
}

// cachePeer is the farm as the node's cache sees it (session.Farm): the
// store and the pending sessions to load from, and single use through the
// store.
type cachePeer struct{ n *Node }

func (p cachePeer) Load(ctx context.Context, id session.ID) (*session.Record, error) {
	n := p.n
	now := n.cfg.Now()
	if retired, until, ok := n.heldLife(id, now); ok && (retired || !until.After(now)) {
		// Retired (or cut and over) here; the farm may not know yet.
		return nil, nil
	}
	if n.retired.holds(id, now) {
		// Retired lately, here or by a peer that told this node: the
		// store's record may still be there, its deletion on its way
		// (the retirer's store path is slower than its bus, or this
		// node's own write is queued). Only the IDs remembered count:
		// past its bound the memory answers "maybe" for every ID,
		// which would fail every lookup of the farm for up to MaxAge.
		return nil, nil
	}
	rec, stored, err := n.load(ctx, id)
	now = n.cfg.Now()
	if rec != nil {
		if n.retired.holds(id, now) {
			// Retired while the record was fetched (heard meanwhile,
			// as a cut may be, below): as above.
			return nil, err
		}
		if end, ok := n.resumedEnd(id, now); ok && rec.Expires.After(end) {
			// Resumed lately, here or on a peer that told this node
			// (its child, or its cut): the store's record may be whole
			// yet, the cut's write on its way. It ends with the cut
			// (or, the cut over, resumes no more). As with the IDs
			// retired, only the IDs remembered count.
			if !end.After(now) {
				return nil, err
			}
			cp := *rec
			cp.Expires = end
			rec = &cp
		}
	}
	return n.gateLoaded(ctx, id, n.holdBack(id, rec, now), stored), err
}

func (p cachePeer) Claim(ctx context.Context, id session.ID) (bool, error) {
	n := p.n
	if n.cfg.Records == nil {
		return true, nil // no store to claim from: this cache's claim is all there is
	}
	// A claim that times out after the store took the session costs the
	// client its resumption: give it the longer of the two deadlines.
	ctx, cancel := context.WithTimeout(ctx, max(n.cfg.LookupTimeout, n.cfg.WriteThroughTimeout))
	defer cancel()
	return n.claimYoung(ctx, id)
}

func (p cachePeer) Release(id session.ID, r session.Record) {
	if p.n.cfg.Records != nil {
		p.n.enqueue(item{id: id, rec: r, op: opRestore})
	}
}

// restore puts back a session whose claim was released, unless the key
// has been written meanwhile, or the session was retired meanwhile: the
// claim took it out of the store, so a retirement that crossed it (a
// peer's consume whose HandshakeComplete came after its own claim was
// released, or this node's) deleted nothing there, and putting it back
// would let any node that loads it resume it again. Such a session is no
// longer in this node's cache (a peer's retirement removed it) or is
// remembered as retired here.
func (n *Node) restore(ctx context.Context, hdr header, id session.ID, rec session.Record) error {
	ttl := rec.Expires.Sub(hdr.time)
	taker, ok := n.cfg.Records.(transport.RecordTaker)
	if ttl <= 0 || !ok {
		return nil
	}
	if _, held := n.cfg.Cache.Cut(id, rec.Expires); !held || n.retired.has(id, hdr.time) {
		return nil
	}
	body, err := encodeRecord(&rec)
	if err != nil {
		return nil
	}
	hdr.typ = valRecord
	sealed := n.keys.seal(nil, hdr, body, id[:])
	added, err := taker.AddRecord(ctx, transport.Item{Key: sessionKey(id), Value: sealed, TTL: ttl})
	if err != nil {
		return err
	}
	if added && n.written != nil {
		// A peer's retirement that crossed the claim and reaches this
		// node only now deletes it again (see recutLate).
		n.written.add(id, n.cfg.Now())
	}
	n.life.restored.Add(1)
	return nil
}

// A cut is a session cut to end at until (a zero until: retired).
type cut struct {
	id    session.ID
	until time.Time
}

const cutLen = session.IDLen + 8

// appendCuts encodes cuts; a retirement is a cut to time zero (encoded 0).
func appendCuts(b []byte, cs []cut) []byte {
	for _, c := range cs {
		b = append(b, c.id[:]...)
		var u uint64
		if !c.until.IsZero() {
			u = uint64(c.until.UnixNano())
		}
		b = binary.BigEndian.AppendUint64(b, u)
	}
	return b
}

func parseCuts(body []byte) ([]cut, error) {
	if len(body) == 0 || len(body)%cutLen != 0 {
		return nil, errors.New("cut body has a bad length")
	}
	out := make([]cut, 0, len(body)/cutLen)
	for ; len(body) > 0; body = body[cutLen:] {
		c := cut{id: session.ID(body[:session.IDLen])}
		if u := int64(binary.BigEndian.Uint64(body[session.IDLen:])); u != 0 {
			c.until = time.Unix(0, u)
		}
		out = append(out, c)
	}
	return out, nil
}

// receiveCuts applies cuts and retirements from a peer.
func (n *Node) receiveCuts(body []byte, sent time.Time) {
	cs, err := parseCuts(body)
	if err != nil {
		n.ctr.rejected[rejectBody].Add(1)
		return
	}
	old := n.cfg.Now().Sub(sent) > n.cfg.MaxAge
	for _, c := range cs {
		if n.pend != nil {
			// A copy held as received would resume at its full life: a
			// lookup loads the store's, cut, or finds it gone.
			n.pend.drop(c.id)
		}
		if c.until.IsZero() {
			n.life.retiresReceived.Add(1)
			held := n.retireFromPeer(c.id, sent, n.cfg.Now())
			n.recutLate(c.id, time.Time{}, time.Time{}, old && held)
			continue
		}
		n.life.cutsRecv.Add(1)
		_, held := n.cfg.Cache.Cut(c.id, c.until)
		n.noteRecut(c.id, c.until)
		n.noteResumed(c.id, c.until, n.cfg.Now())
		n.recutLate(c.id, c.until, time.Time{}, old && held)
	}
}

// retireFromPeer retires id, as a peer's message sealed at sent asks, and
// remembers it among the IDs retired lately, which refuse a peer's
// message that still carries it. Such a message is taken for MaxAge, from
// a clock within MaxSkew of the retirer's, so a retirement older than
// MaxAge plus MaxSkew (kept by the bus, or replayed: retirements are taken
// up to the cache's Lifetime) is remembered only if it removed a session
// here: replayed in bulk, retirements of sessions long gone would fill the
// bounded memory, which past its bound refuses every peer's copy for a
// while (see idMemory). It reports whether the cache held the session.
func (n *Node) retireFromPeer(id session.ID, sent, now time.Time) bool {
	if now.Sub(sent) <= n.cfg.MaxAge+n.cfg.MaxSkew {
		n.retired.add(id, now)
		return n.cfg.Cache.Retire(id, session.OriginPeer)
	}
	if n.cfg.Cache.Retire(id, session.OriginPeer) {
		n.retired.add(id, now)
		return true
	}
	return false
}

// lifecycleEvent queues what a cache event asks of the farm beyond new
// sessions and revocations: the grace cut of a resumed session, and the
// retirement of a consumed or replaced one.
func (n *Node) lifecycleEvent(ev session.Event) {
	switch {
	case ev.Kind == session.EventNew && ev.Origin == session.OriginHandshake:
		cc := n.cfg.Cache.Config()
		if p := ev.Record.Parent; p != (session.ID{}) && cc.ResumeGrace > 0 && !cc.SingleUse {
			// A single-use parent is consumed, not cut: rewriting it
			// would bring it back.
			now := n.cfg.Now()
			cut := item{id: p, op: opCut, until: now.Add(cc.ResumeGrace), child: ev.ID}
			n.noteResumed(p, cut.until, now)
			n.enqueue(cut)
			if n.mayBeCarried(p, now) {
				cut.expires = n.lifeExpiry(p)
				n.holdLife([]item{cut}, now)
			}
		}
	case ev.Kind == session.EventRemove && ev.Reason == session.Retired &&
		(ev.Origin == session.OriginHandshake || ev.Origin == session.OriginAPI):
		n.retired.add(ev.ID, n.cfg.Now())
		// Consumed (Consume, or a single-use resumption, whose claim took
		// the record): the store's record is gone already.
		taken := ev.Origin == session.OriginAPI || n.cfg.Cache.Config().SingleUse
		n.enqueue(item{id: ev.ID, op: opRetire, expires: ev.Record.Expires, taken: taken})
	}
}

// childKeyPrefix prefixes the record that names a parent's live child
// (store-only mode).
const childKeyPrefix = "c:"

// swapChild records child as the live child of parent in the store, for
// ttl, and returns the child it replaces, if any.
func (n *Node) swapChild(ctx context.Context, parent, child session.ID, ttl time.Duration) (session.ID, bool) {
	taker, ok := n.cfg.Records.(transport.RecordTaker)
	if !ok || ttl <= 0 || child == (session.ID{}) {
		return session.ID{}, false
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	link := n.childLink(header{time: n.cfg.Now(), sender: n.instance, farm: n.cfg.Farm}, parent, child, ttl)
	var old []byte
	var err error
	if sw, ok := n.cfg.Records.(transport.RecordSwapper); ok {
		// One round trip, and atomic: of two nodes that swap at once,
		// the second learns of the first's child.
		old, err = sw.SwapRecord(ctx, link)
	} else {
		old, err = taker.TakeRecord(ctx, link.Key)
		if err := n.cfg.Records.PutRecords(ctx, link); err != nil {
			return session.ID{}, false
		}
	}
	if err != nil {
		return session.ID{}, false
	}
	// Only a link a node of the farm sealed for this parent names a
	// session to retire: anyone who can write the store could put any
	// session's ID there.
	_, body, err := n.keys.open(old, n.cfg.Farm, valChild, parent[:], n.cfg.Now(), 0, n.cfg.MaxSkew)
	if err != nil || len(body) != session.IDLen || session.ID(body) == child {
		return session.ID{}, false
	}
	return session.ID(body), true
}

// childLink returns the store item that names child as parent's live
// child, for ttl: sealed, bound to the parent.
func (n *Node) childLink(hdr header, parent, child session.ID, ttl time.Duration) transport.Item {
	hdr.typ = valChild
	return transport.Item{Key: childKeyPrefix + hex.EncodeToString(parent[:]), Value: n.keys.seal(nil, hdr, child[:], parent[:]), TTL: ttl}
}

// childKeeper records, in store-only mode, each resumed parent's live child
// in the store, and retires the child it replaces (a parent resumed on
// several nodes yields one live child). It runs off the publisher's path:
// under a burst it falls behind, and drops links past its queue (counted),
// never slowing the sharing of sessions.
func (n *Node) childKeeper(ctx context.Context) {
	defer n.wg.Done()
	if n.cfg.Mode != StoreOnly || n.cfg.Records == nil {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case it := <-n.kids:
			if old, ok := n.swapChild(ctx, it.id, it.child, time.Until(it.until)); ok {
				n.enqueue(item{id: old, op: opRetire})
			}
		}
	}
}

// hasOp reports whether batch holds an item of kind op.
func hasOp(batch []item, op itemOp) bool {
	for i := range batch {
		if batch[i].op == op {
			return true
		}
	}
	return false
}

// cutMessages appends to msgs the cut messages of batch: retirements (both
// modes) and grace cuts (store-only: broadcast peers cut a parent when they
// insert its child).
func (n *Node) cutMessages(hdr header, batch []item, limit int, msgs [][]byte) [][]byte {
	hdr.typ = msgCut
	var body []byte
	for i := range batch {
		it := &batch[i]
		var c cut
		switch {
		case it.op == opRetire:
			c = cut{id: it.id}
		case it.op == opCut && (n.cfg.Mode == StoreOnly || it.restored):
			c = cut{id: it.id, until: it.until}
		default:
			continue
		}
		if len(body)+cutLen > limit {
			msgs = append(msgs, n.keys.seal(nil, hdr, body, nil))
			body = body[:0]
		}
		body = appendCuts(body, []cut{c})
	}
	if len(body) > 0 {
		msgs = append(msgs, n.keys.seal(nil, hdr, body, nil))
	}
	return msgs
}

// countCutsSent counts the retirements and cuts of a batch whose messages
// were published.
func (n *Node) countCutsSent(batch []item) {
	for i := range batch {
		switch it := &batch[i]; {
		case it.op == opRetire:
			n.life.retiresSent.Add(1)
		case it.op == opCut && (n.cfg.Mode == StoreOnly || it.restored):
			n.life.cutsSent.Add(1)
		}
	}
}

// lifecycleStoreItems adds the store's part of a retirement or a cut to
// puts and dels: a retired session's record goes; a resumed parent's
// record, if still there, is rewritten with its cut lifetime (so that a
// node that loads it later gets the cut too), and in store-only mode its live child is
// recorded — in this batch on a first resumption, off this path (swapped,
// retiring the one it replaces) when the parent was resumed before.
func (n *Node) lifecycleStoreItems(hdr header, it *item, now time.Time, puts []transport.Item, dels []string) ([]transport.Item, []string) {
	switch it.op {
	case opRetire:
		puts, dels = n.retireItems(it, now, puts, dels)
	case opCut:
		if n.cfg.Mode == StoreOnly {
			again := n.wasRecut(it.id)
			n.noteRecut(it.id, it.until)
			if again && it.child != (session.ID{}) {
				select {
				case n.kids <- *it:
				default:
					n.life.childLinksDropped.Add(1)
				}
			} else if ttl := it.until.Sub(now); ttl > 0 && it.child != (session.ID{}) {
				puts = append(puts, n.childLink(hdr, it.id, it.child, ttl))
			}
		}
		if !it.until.After(now) {
			// Written late (kept after a failed write): the grace is
			// over, and nothing of the record may resume: a
			// retirement.
			puts, dels = n.retireItems(it, now, puts, dels)
			break
		}
		rec, ok := n.cfg.Cache.Cut(it.id, it.until)
		if ok {
			it.rec = rec // carried, should this write fail and the cache let it go
		} else if rec = it.rec; rec.Expires.IsZero() {
			// Nothing known of the record (a cut read back from
			// Config.RevocationFile's lifecycle file, or one the cache let
			// go before its first write): the store's may be whole, so it
			// goes, a little before its grace ends.
			dels = append(dels, sessionKey(it.id))
			break
		} else if rec.Expires.After(it.until) {
			rec.Expires = it.until
		}
		if ttl := rec.Expires.Sub(now); ttl > 0 {
			if body, err := encodeRecord(&rec); err == nil {
				hdr.typ = valRecord
				// Only over a record that is there and ends later: a
				// cut shortens what the store holds and never brings
				// back a record that a peer's retirement or revocation
				// deleted — one that crossed this write, or, for a cut
				// written late or re-sent (resendHeld), one made while
				// this node was cut off — nor lengthens one that a
				// peer cut sooner without this node hearing of it.
				// Where the store lost the record with its data, the
				// write-back puts it back, cut. Life keeps the cut,
				// whether or not it finds the record, for as long
				// as a late write or a write-back of the session
				// could bring it back whole.
				puts = append(puts, transport.Item{Key: sessionKey(it.id), Value: n.keys.seal(nil, hdr, body, it.id[:]), TTL: ttl, IfPresent: true, Life: n.lifeExpiry(it.id).Sub(now)})
			}
		}
	}
	return puts, dels
}

// retireItems adds the store's part of the retirement of it.id to puts
// and dels: its record goes, with a retirement mark (transport.Item.Retire)
// for as long as the record could have lasted, which a late write of the
// session honours by writing nothing. A peer that retires a session it
// got from the bus (a replaced child, a cut to the past) may find no
// record there yet: the session's writer, whose first write failed,
// writes it again later, read whole before it heard of the retirement
// perhaps, and would otherwise put it back until it deleted it again
// (recutWritten, one round trip later). Where the store can tell, only a
// retirement that finds no record pays for the mark. A session this node
// took from the store (it.taken) got its mark from the take
// (transport.RecordTaker): its retirement is Taken, which a store whose
// deletion leaves the mark be (Redis) writes as a plain deletion, and
// one whose deletion would replace the mark (NATS) as a retirement.
func (n *Node) retireItems(it *item, now time.Time, puts []transport.Item, dels []string) ([]transport.Item, []string) {
	exp := it.expires
	if exp.IsZero() {
		exp = n.lifeExpiry(it.id)
	}
	if ttl := exp.Sub(now); ttl > 0 {
		return append(puts, transport.Item{Key: sessionKey(it.id), TTL: ttl, Retire: true, Taken: it.taken}), dels
	}
	return puts, append(dels, sessionKey(it.id))
}

// recordPuts counts the records among puts: what a write of puts wrote,
// its retirements (transport.Item.Retire) left out.
func recordPuts(puts []transport.Item) int {
	k := 0
	for i := range puts {
		if !puts[i].Retire {
			k++
		}
	}
	return k
}

// restoreAll puts back the sessions of the batch's released claims.
func (n *Node) restoreAll(ctx context.Context, hdr header, batch []item) error {
	var first error
	for i := range batch {
		if it := &batch[i]; it.op == opRestore {
			if err := n.restore(ctx, hdr, it.id, it.rec); err != nil && first == nil {
				first = err
			}
		}
	}
	return first
}

// storeOutcome records the outcome of a store write begun when the store
// probe's begunCount was began (see setStoreOutcome): on failure the new
// sessions of the batch are kept for when the store returns, and the node
// falls back to farm tickets (see updateFallback) until a write succeeds.
func (n *Node) storeOutcome(batch []item, err error, began uint64) {
	if err != nil {
		n.keepForLater(batch)
	}
	n.setStoreOutcome(err, began)
}

// keepForLater puts the batch's new sessions in the backlog, oldest first
// so that the backlog hands the newest back first.
func (n *Node) keepForLater(batch []item) {
	var kept []item
	for _, it := range batch {
		if it.op == opNew && it.rev == nil {
			it.later = true
			kept = append(kept, it)
		}
	}
	slices.SortFunc(kept, func(a, b item) int { return a.rec.Expires.Compare(b.rec.Expires) })
	if len(kept) > 0 {
		n.owedIDRead()
	}
	for _, it := range kept {
		n.backlog.push(it)
	}
}

// storeQueue is the queue whose batches write to the store (the only one,
// when bus and store share a path or there is no store).
func (n *Node) storeQueue() *queue {
	if n.sq != nil {
		return n.sq
	}
	return n.q
}

// keepLifecycle keeps, in l, the retirements and grace cuts of a batch
// that did not reach the farm, for the same path to write and publish once
// the transport works again: otherwise the store would keep a retired
// session, or a resumed parent at its full lifetime, and a node without a
// copy (a new one, or one that evicted it) would load it and resume it. A
// cut is kept only where it has a part: the store's, or the bus's in
// store-only mode. Each item is kept until its record would have expired
// anyway (lifeExpiry); l drops, and counts, what does not fit.
func (n *Node) keepLifecycle(l *laterLife, batch []item) {
	cutPart := n.cfg.Records != nil || n.cfg.Mode == StoreOnly
	var kept []item
	for _, it := range batch {
		if it.rev != nil || !(it.op == opRetire || it.op == opCut && cutPart) {
			continue
		}
		if it.expires.IsZero() {
			it.expires = n.lifeExpiry(it.id)
		}
		kept = append(kept, it)
	}
	if len(kept) > 0 {
		now := n.cfg.Now()
		l.push(kept, now)
		n.holdLife(kept, now)
	}
}

// keepChildCuts keeps, for the bus's path, the grace cut of the parent of
// each session of batch, a batch whose publish failed, that was issued by
// resuming one, in broadcast mode with a store. There peers cut a parent
// when its child arrives (see cutMessages); with a store the child is not
// published again (peers load it from the store), so that the cut would
// reach the store only, and peers, the parent's issuer among them, would
// resume their copies past the grace. The cut is kept as one read back
// from the lifecycle file is (restored), which is published in broadcast
// mode too: once the bus works, as a cut message, with its store part
// written again (storeAgain). Its end is the child's issue time plus the
// grace, as a peer that receives the child cuts it to. It runs before
// keepLifecycle keeps the batch's own cut of the parent (a combined path),
// which then, ending no sooner, leaves this one in place.
func (n *Node) keepChildCuts(batch []item) {
	cc := n.cfg.Cache.Config()
	if n.cfg.Mode != Broadcast || n.cfg.Records == nil || cc.ResumeGrace <= 0 || cc.SingleUse {
		return
	}
	var cuts []item
	for i := range batch {
		it := &batch[i]
		if it.op != opNew || it.rev != nil || it.rec.Parent == (session.ID{}) {
			continue
		}
		at := n.cfg.Now()
		if t, ok := n.cfg.Cache.IssuedAt(it.id); ok && t.Before(at) {
			at = t
		}
		cuts = append(cuts, item{id: it.rec.Parent, op: opCut, until: at.Add(cc.ResumeGrace), restored: true})
	}
	if len(cuts) > 0 {
		n.keepLifecycle(n.lifeq, cuts)
	}
}

// storeAgain queues, on the store's own path, the store's part of the
// retirements and cuts in its, which the bus's path has just published
// from its lifecycle backlog (the bus failed when they were made). Their
// store part ran when they were made, and may have found nothing: a
// peer's write of the session (a new session the bus brought here before
// the store had it, or one written again after a write that timed out
// but landed) can reach the store after it. That writer deletes or cuts
// its record again when it hears the restriction while it remembers the
// write (MaxAge plus MaxSkew), or when the message is older than MaxAge
// (see recutLate); a restriction published late is sealed when it is
// sent, so the writer may have forgotten its write and still take the
// message as new (a bus that keeps the node's queue through the outage,
// as RabbitMQ does, asks for no re-send). Written again now, after any
// write the writer may have forgotten, the restriction holds in the
// store whatever the writer remembers. A re-send (resendHeld) does the
// same through both backlogs. Only what waited out a failure of the bus
// pays for it: one more delete, or shortening cut, each.
func (n *Node) storeAgain(its []item) {
	if n.cfg.Records == nil {
		return
	}
	again := make([]item, 0, len(its))
	for _, it := range its {
		if it.op == opRetire || it.op == opCut {
			it.child = session.ID{} // recorded with the first write
			again = append(again, it)
		}
	}
	if again = n.lifesq.room(again); len(again) > 0 {
		n.lifesq.push(again, n.cfg.Now())
		n.sq.wake()
	}
}

// lifeExpiry bounds when the session id's record leaves the store, and
// peers' copies their caches: its issue time (read from the ID) plus the
// cache's Lifetime, and a second for the ID's precision.
func (n *Node) lifeExpiry(id session.ID) time.Time {
	life := n.cfg.Cache.Config().Lifetime + time.Second
	if at, ok := n.cfg.Cache.IssuedAt(id); ok {
		return at.Add(life)
	}
	return n.cfg.Now().Add(life)
}

// refreshLater prepares the new sessions of batch, those that come back
// from the backlog and those that waited in the queue: one retired here
// since is left out (writing it would bring it back), and so is one of a
// chain revoked since (see session.Cache.Revoked), and one still cached
// is written as the cache now holds it (cut to its grace, if it was
// resumed meanwhile), so that a cut already written is not undone, with
// the link to its parent it was queued with. A session waits in the store's
// queue while the bus has already brought it to peers (broadcast mode,
// the store on a path of its own, writing slowly): a peer that resumed it
// meanwhile cut it (or retired it) here and in the store, where its cut
// found no record to shorten.
func (n *Node) refreshLater(batch []item) {
	now := n.cfg.Now()
	for i := range batch {
		it := &batch[i]
		if it.op != opNew || it.rev != nil {
			continue
		}
		if n.retired.has(it.id, now) {
			it.op = opDropped
			continue
		}
		// Cutting to its own expiry changes nothing: it reads the record.
		// The cache does not keep a session's parent: keep the link the
		// item has, which carries the parent's grace cut to the peers
		// (in broadcast mode, only the child does; see receiveOldSessions).
		rec, ok := n.cfg.Cache.Cut(it.id, it.rec.Expires)
		switch {
		case ok:
			rec.Parent = it.rec.Parent
			it.rec = rec
		case n.wasResumed(it.id, now):
			// Resumed lately (here, or by a peer whose child or cut
			// message came here) and no longer cached: its cut may be
			// over, and the record the item carries is whole. Written
			// now, after the cut's message came (re-sent to this node
			// back from a gap, say), it would bring the session back
			// for its whole life; the write that this node remembers
			// (recutLate) is only one that went before.
			it.op = opDropped
		case n.cfg.Cache.Revoked(it.rec.Chain):
			// Its chain was revoked since it was queued (Cut counts a
			// session under revocation as gone): written now, it would
			// stay in the store after the revocation deleted what it
			// knew of the chain, for any node that has not read the
			// tombstone, and go to peers. Checked only for a session
			// the cache no longer holds: one it holds is not revoked.
			it.op = opDropped
		}
	}
}

// recutWritten follows a successful store write of batch, for the new
// sessions a peer may have had before the write landed: in broadcast
// mode, every one if first is set (the bus may have brought them to
// peers first: the store on a path of its own, a Redis Cluster whose
// shards take the write and the publish at once, or a combined batch
// written and published concurrently), and anywhere, those written again
// after a failed write (the first write may have landed all the same). A
// peer that resumed or consumed one meanwhile cut it (or retired it) here
// and in the store, where its cut, written only over a record that is
// there, or its take, left nothing, and the write then put the session
// back. Each such session that this node has since heard was retired or
// cut is deleted, or cut, in the store again, queued behind the write on
// the same path; and it is remembered, so that a restriction heard from
// now on is too (recutLate).
//
// read is the node's readMark taken before refreshLater read the batch:
// if the cache has restricted no session, and the node has noted no
// resumption, since then (by the time the writes are remembered), every
// session of the batch is as refreshLater read it, and only the
// retirements heard meanwhile are looked up (a peer's retirement of a
// session the cache does not hold changes neither).
func (n *Node) recutWritten(batch []item, first bool, read readMark) {
	if n.written == nil {
		return
	}
	all := first && n.cfg.Mode == Broadcast
	now := n.cfg.Now()
	// Remembered first: a restriction heard from now on is written again
	// by recutLate, one heard before by the loop below (both, at worst).
	n.written.addNew(batch, !all, now)
	unchanged := read.ok && n.readMark() == read
	q := n.storeQueue()
	for i := range batch {
		it := &batch[i]
		if it.op != opNew || it.rev != nil || !all && !it.later {
			continue
		}
		if n.retired.has(it.id, now) {
			q.push(item{id: it.id, op: opRetire})
			continue
		}
		if unchanged {
			continue
		}
		rec, ok := n.cfg.Cache.Cut(it.id, it.rec.Expires)
		switch {
		case ok && rec.Expires.Before(it.rec.Expires):
			q.push(item{id: it.id, op: opCut, until: rec.Expires, rec: rec})
		case !ok && n.wasResumed(it.id, now):
			// Resumed lately and gone from the cache (a cut to the
			// past heard between refreshLater's check and the
			// remembering above): the record just written is whole,
			// and no cut of it is known here to write. It goes, as
			// refreshLater drops such a write.
			q.push(item{id: it.id, op: opRetire})
		}
	}
}

// A readMark is what the node's cache and its memory of resumptions have
// been through when it is taken (see recutWritten): equal marks say that
// no session was cut, replaced or removed and no resumption noted in
// between. The zero mark matches none.
type readMark struct {
	cache, resumed uint64
	ok             bool
}

// readMark returns the node's readMark now.
func (n *Node) readMark() readMark {
	return readMark{cache: n.cfg.Cache.Restrictions(), resumed: n.resumedNotes.Load(), ok: true}
}

// newWritten returns the memory of the sessions a node wrote lately (see
// recutLate), each for ttl (MaxAge plus MaxSkew): one per session it
// issued, however many it issues (see idMemory).
func newWritten(ttl time.Duration) *idMemory[struct{}] { return newIDMemory(maxWritten, ttl) }

// recutLate follows a peer's restriction of the session id — a cut to
// until, or a retirement (a zero until) — heard after this node wrote id
// to the store in one of the ways a peer's write may precede: a new
// session in broadcast mode, on the store's own path or on a Redis
// Cluster (peers may have it from the bus first: see recutWritten; also
// one written again after a failed write, whose first write may have
// landed all the same, and been consumed), or a
// released single-use claim put back (a retirement that crossed the
// claim deleted nothing). The peer's own write may have reached the
// store before this node's: finding no record, it changed nothing, and
// the store then held the session, past its grace or after its
// retirement, for any node without a copy to load and resume (the peer
// itself, once its cut copy lapsed). recutWritten covers a restriction
// heard while a new session's write was in flight, restore one heard
// before the put-back; this covers one whose message came after (a slow
// bus path). The cut or deletion is written again, queued on the store's
// path, as the cache now has it. resumed, when not zero, is when the peer
// resumed the session (its child's issue time, on the peer's clock): a
// resumption later than the write's return by more than MaxSkew cut a
// record that was there, and costs nothing more.
//
// old says the message was sealed more than MaxAge ago (a bus that kept
// it through an outage of this node's subscription, which lost nothing
// and so is no gap, or a subscriber that lagged that far), and this node
// held the session when it came: the write it may have crossed can be
// one this node no longer remembers, since it remembers a write for
// MaxAge plus MaxSkew, and a restriction that came first was made no
// later than MaxSkew after the write. Such a restriction is written again
// whatever this node remembers: a cut only shortens a record that is
// there, and a deletion of a retired session is right anywhere. Only late
// messages pay for it, and of those only the ones of sessions this node
// held (as the writer does: it issued the session, or wrote it from its
// cache), so that old restrictions replayed in bulk, of sessions long
// gone, do not fill the store's queue.
func (n *Node) recutLate(id session.ID, until, resumed time.Time, old bool) {
	if n.written == nil {
		return
	}
	now := n.cfg.Now()
	at, ok := n.written.since(id, now)
	if !old && (!ok || !resumed.IsZero() && resumed.After(at.Add(n.cfg.MaxSkew))) {
		return
	}
	q := n.storeQueue()
	if until.IsZero() || n.retired.has(id, now) {
		q.push(item{id: id, op: opRetire})
		return
	}
	q.push(item{id: id, op: opCut, until: until})
}

// recutChild is recutLate for the parent of a peer's session id (which
// expires at expires), received at now: the child's arrival cut the
// parent to its grace from the child's issue.
func (n *Node) recutChild(id, parent session.ID, expires, now time.Time) {
	if n.written == nil {
		return
	}
	grace := n.cfg.Cache.Config().ResumeGrace
	if grace <= 0 {
		return // resumed sessions keep their full Lifetime
	}
	at := n.childIssued(id, expires, now)
	n.recutLate(parent, at.Add(grace), at, false)
}
