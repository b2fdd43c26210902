package farm

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/session"
)

// fileTestCache returns a cache for the file tests, closed when the test
// ends, and the clock their nodes read (see lifeNode), set to t0, now.
func fileTestCache(tb testing.TB, cfg *session.Config) (*session.Cache, *atomic.Int64, time.Time) {
	tb.Helper()
	cache, err := session.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cache.Close() })
	t0 := time.Now()
	now := new(atomic.Int64)
	now.Store(t0.UnixNano())
	return cache, now, t0
}

// lifeNode is a node with what the lifecycle file needs, its clock at
// *now, and a store path of its own if split.
func lifeNode(t testing.TB, farm, file string, cache *session.Cache, now *atomic.Int64, split bool) *Node {
	t.Helper()
	n := &Node{
		cfg: Config{Farm: farm, Cache: cache, Mode: StoreOnly, Records: nopRecords{}, RevocationFile: file,
			Now: func() time.Time { return time.Unix(0, now.Load()) }, MaxAge: time.Minute, MaxSkew: 5 * time.Second},
		keys: testKeyring(t, farm), q: newQueue(16), lifeq: newLaterLife(16), lifesq: newLaterLife(16),
		held: newLaterLife(32), retired: newIDMemory(maxRetired, time.Minute), kids: make(chan item, 4),
		log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if split {
		n.sq = newQueue(16)
	}
	n.lf.path = lifePath(&n.cfg)
	return n
}

// TestLifeFileRoundTrip: the retirements and cuts kept on one node (in
// flight included) are written sealed, mode 0600, and read back by the
// next: applied to its cache at once, refused or cut in what it loads or
// receives, kept again for both paths of a node whose store has its own,
// expired ones dropped; once replayed, the file goes.
func TestLifeFileRoundTrip(t *testing.T) {
	cache, now, t0 := fileTestCache(t, &session.Config{ResumeGrace: 30 * time.Second, Lifetime: time.Hour})
	file := filepath.Join(t.TempDir(), "revocations")
	n1 := lifeNode(t, "lf", file, cache, now, false)
	if err := cache.SetIDKeys(n1.keys.ids...); err != nil {
		t.Fatal(err)
	}
	retired, parent, child, soon, flying := cache.NewID(), cache.NewID(), cache.NewID(), cache.NewID(), cache.NewID()
	until := t0.Add(30 * time.Second)
	n1.lifeq.push([]item{
		{id: retired, op: opRetire, expires: t0.Add(time.Hour)},
		{id: parent, op: opCut, until: until, child: child, expires: t0.Add(time.Hour)},
		{id: soon, op: opRetire, expires: t0.Add(time.Minute)},
		{id: flying, op: opRetire, expires: t0.Add(time.Hour)},
	}, t0)
	n1.lifeq.pop(nil, 4, t0) // all in flight when the file is written
	n1.saveLife()
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("the revocation file itself was written: %v", err)
	}
	raw, err := os.ReadFile(file + lifeFileSuffix)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(file + lifeFileSuffix); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", st.Mode().Perm())
	}
	for _, id := range []session.ID{retired, parent, child} {
		if bytes.Contains(raw, id[:]) {
			t.Fatal("a session ID in clear in the file")
		}
	}

	// The next node: a cache holding the sessions whole (as a store or a
	// peer would), a clock two minutes on, a store path of its own.
	now.Store(t0.Add(2 * time.Minute).UnixNano())
	cache2, err := session.New(&session.Config{ResumeGrace: 30 * time.Second, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer cache2.Close()
	if err := cache2.SetIDKeys(n1.keys.ids...); err != nil {
		t.Fatal(err)
	}
	whole := session.Record{State: []byte("s"), Expires: t0.Add(time.Hour)}
	for _, id := range []session.ID{retired, parent} {
		if err := cache2.Insert(id, whole, session.OriginPeer); err != nil {
			t.Fatal(err)
		}
	}
	n2 := lifeNode(t, "lf", file, cache2, now, true)
	ks, err := n2.readLife()
	if err != nil {
		t.Fatal(err)
	}
	if len(ks) != 4 {
		t.Fatalf("read %d items, want 4", len(ks))
	}
	n2.restoreLife(ks)
	t2 := n2.cfg.Now()
	if _, ok := cache2.GetBuffer(retired, nil); ok {
		t.Fatal("the retired session is still cached after the restart")
	}
	if rec, ok := cache2.Cut(parent, t0.Add(time.Hour)); !ok || rec.Expires.After(until) {
		t.Fatalf("the parent cached until %v, want its cut %v", rec.Expires, until)
	}
	if !n2.retired.has(retired, t2) {
		t.Fatal("the retired session is not refused from peers")
	}
	if n2.holdBack(retired, &whole, t2) != nil || n2.holdBack(flying, &whole, t2) != nil {
		t.Fatal("a retired session's record from the store is let through")
	}
	if n2.holdBack(parent, &whole, t2) != nil {
		t.Fatal("the parent's record is let through after its cut")
	}
	now.Store(t0.Add(10 * time.Second).UnixNano()) // within the cut
	if rec := n2.holdBack(parent, &whole, n2.cfg.Now()); rec == nil || !rec.Expires.Equal(until) || !whole.Expires.Equal(t0.Add(time.Hour)) {
		t.Fatalf("the parent's record from the store held back as %v, want a copy cut to %v", rec, until)
	}
	now.Store(t2.UnixNano())
	// soon expired at t0+1m: dropped. The rest for both paths.
	if a, b := n2.lifeq.len(), n2.lifesq.len(); a != 3 || b != 3 {
		t.Fatalf("kept %d and %d items for the bus's and the store's paths, want 3 and 3", a, b)
	}
	if n2.held.len() != 3 {
		t.Fatalf("holding %d, want 3", n2.held.len())
	}
	var restoredCut bool
	for _, it := range n2.lifeq.snapshot() {
		if it.id == parent && it.op == opCut && it.until.Equal(until) && it.child == child && it.restored {
			restoredCut = true
		}
	}
	if !restoredCut {
		t.Fatal("the cut came back changed")
	}
	// A restored cut knows nothing of the record: the store's goes.
	hdr := header{time: t2, farm: "lf"}
	puts, dels, _ := n2.storeItems(hdr, []item{{id: flying, op: opCut, until: t2.Add(time.Second), expires: t0.Add(time.Hour)}}, t2)
	if len(dels) != 1 || len(puts) != 0 {
		t.Fatalf("a cut with no record known: puts %v dels %v, want the record deleted", puts, dels)
	}

	// Unchanged: not written again. Replayed: the file goes.
	n2.saveLife()
	st1, _ := os.Stat(file + lifeFileSuffix)
	n2.saveLife()
	if st2, _ := os.Stat(file + lifeFileSuffix); !os.SameFile(st1, st2) {
		t.Fatal("an unchanged file was written again")
	}
	n2.lifeq.pop(nil, 10, t2)
	n2.lifesq.pop(nil, 10, t2)
	n2.saveLife()
	if _, err := os.Stat(file + lifeFileSuffix); err != nil {
		t.Fatal("the file went while its items were in flight")
	}
	n2.lifeq.settle(true, t2)
	n2.lifesq.settle(false, t2) // the store's write failed: kept again
	n2.saveLife()
	if ks, err := n2.readLife(); err != nil || len(ks) != 3 {
		t.Fatalf("after the bus's replay: %d items, %v; want the store's 3", len(ks), err)
	}
	n2.lifesq.pop(nil, 10, t2)
	n2.lifesq.settle(true, t2)
	n2.saveLife()
	if _, err := os.Stat(file + lifeFileSuffix); !os.IsNotExist(err) {
		t.Fatalf("the file is still there after the replay: %v", err)
	}
}

// TestLifeFileCorrupt: a lifecycle file that is garbage, truncated,
// another farm's, the revocation file under its name, or of an unknown
// version is an error that says so, naming the file; no file is none.
func TestLifeFileCorrupt(t *testing.T) {
	cache, now, _ := fileTestCache(t, &session.Config{})
	dir := t.TempDir()
	file := filepath.Join(dir, "rev")
	n := lifeNode(t, "lf1", file, cache, now, false)
	if ks, err := n.readLife(); err != nil || ks != nil {
		t.Fatalf("no file: %v, %v", ks, err)
	}
	other := lifeNode(t, "lf2", filepath.Join(dir, "other"), cache, now, false)
	other.lifeq.push([]item{{id: lifeID(1), op: opRetire, expires: time.Unix(0, now.Load()).Add(time.Hour)}}, time.Unix(0, now.Load()))
	other.saveLife()
	foreign, err := os.ReadFile(other.lf.path)
	if err != nil {
		t.Fatal(err)
	}
	n.lifeq.push([]item{{id: lifeID(1), op: opRetire, expires: time.Unix(0, now.Load()).Add(time.Hour)}}, time.Unix(0, now.Load()))
	n.saveLife()
	own, err := os.ReadFile(n.lf.path)
	if err != nil {
		t.Fatal(err)
	}
	if ks, err := n.readLife(); err != nil || len(ks) != 1 {
		t.Fatalf("own file: %d items, %v", len(ks), err)
	}
	// The revocation file's seal, moved to the lifecycle file's name.
	n.revs.pending = []*pendingRev{{rev: revocation{chain: 1, until: time.Unix(0, now.Load()).Add(time.Hour)}}}
	n.compactRevocationsLocked()
	revFile, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	hdr := header{typ: valTombstone, time: n.cfg.Now(), farm: "lf1"}
	for name, tc := range map[string]struct {
		raw  []byte
		want string
	}{
		"garbage":         {[]byte("not a sealed file at all"), "does not open"},
		"truncated":       {own[:len(own)-3], "does not open"},
		"another farm's":  {foreign, "does not open"},
		"revocation file": {revFile, "does not open"},
		"unknown version": {n.keys.seal(nil, hdr, []byte{9}, []byte(lifeFileContext)), "malformed"},
		"bad record":      {n.keys.seal(nil, hdr, []byte{lifeFileVersion, 0, 1, 2}, []byte(lifeFileContext)), "malformed"},
	} {
		if err := os.WriteFile(n.lf.path, tc.raw, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := n.readLife()
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), n.lf.path) {
			t.Errorf("%s: %v, want an error naming the file that says %q", name, err, tc.want)
		}
	}
}

// FuzzDecodeLifeFile: decoding a lifecycle file's body never panics, and
// what decodes encodes back to what decodes the same.
func FuzzDecodeLifeFile(f *testing.F) {
	now := time.Unix(1_700_000_000, 0)
	f.Add(encodeLifeFile([]keptLife{
		{id: lifeID(1), retire: true, expires: now, bus: true},
		{id: lifeID(2), child: lifeID(3), until: now, expires: now.Add(time.Hour), store: true},
	}))
	f.Add([]byte{lifeFileVersion})
	f.Add([]byte{2, 0})
	// A sent file's body (sentfile.go), which this decoder must refuse or
	// take as it takes its own.
	f.Add(encodeSentFile([]sentItem{
		{id: lifeID(4), op: opRetire, expires: now.UnixNano()},
		{id: lifeID(5), op: opCut, until: now.UnixNano(), expires: now.Add(time.Hour).UnixNano()},
	}))
	f.Fuzz(func(t *testing.T, body []byte) {
		ks, err := decodeLifeFile(body)
		if err != nil {
			return
		}
		enc := encodeLifeFile(ks)
		ks2, err := decodeLifeFile(enc)
		if err != nil {
			t.Fatalf("re-encoded body does not decode: %v", err)
		}
		if !bytes.Equal(encodeLifeFile(ks2), enc) {
			t.Fatal("round trip changed the items")
		}
	})
}

// TestLocalFilesLargerThanAMessage: a lifecycle file holding full
// backlogs on both store paths (twice the default QueueSize of
// retirements and cuts, over 2 MB sealed) and a sent file holding more
// than a bus message may carry are read back whole. The local files are
// not bus messages: the message size limit that open enforces on what
// arrives from the bus must not make a node that kept a long outage's
// backlog fail to start.
func TestLocalFilesLargerThanAMessage(t *testing.T) {
	cache, now, t0 := fileTestCache(t, &session.Config{ResumeGrace: 30 * time.Second, Lifetime: time.Hour})
	file := filepath.Join(t.TempDir(), "revocations")
	n1 := lifeNode(t, "lf", file, cache, now, true)
	const size = defaultQueueSize
	n1.lifeq, n1.lifesq = newLaterLife(size), newLaterLife(size)
	var its []item
	for i := range size {
		id := cache.NewID()
		if i%2 == 0 {
			its = append(its, item{id: id, op: opRetire, expires: t0.Add(time.Hour)})
		} else {
			its = append(its, item{id: id, op: opCut, until: t0.Add(30 * time.Second), child: cache.NewID(), expires: t0.Add(time.Hour)})
		}
	}
	n1.lifeq.push(its, t0)
	n1.lifesq.push(its, t0)
	n1.saveLife()
	st, err := os.Stat(file + lifeFileSuffix)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() <= transport.MaxMessageSize {
		t.Fatalf("the lifecycle file is %d bytes: the test needs one larger than a message (%d)", st.Size(), transport.MaxMessageSize)
	}
	n2 := lifeNode(t, "lf", file, cache, now, true)
	ks, err := n2.readLife()
	if err != nil {
		t.Fatalf("a lifecycle file of %d bytes (full backlogs) does not read: %v", st.Size(), err)
	}
	if len(ks) != 2*size {
		t.Fatalf("read %d items, want %d", len(ks), 2*size)
	}

	// A sent file: a QueueSize of twice the default makes it 1.3 MB.
	n1.sent, n1.lf.sentPath = newSentRing(2*size), sentPath(&n1.cfg)
	for _, it := range its {
		n1.sent.push(it.id, it.op, it.until, it.expires)
		n1.sent.push(it.child, opRetire, time.Time{}, it.expires)
	}
	n1.saveSent()
	if st, err = os.Stat(n1.lf.sentPath); err != nil {
		t.Fatal(err)
	}
	if st.Size() <= transport.MaxMessageSize {
		t.Fatalf("the sent file is %d bytes: the test needs one larger than a message (%d)", st.Size(), transport.MaxMessageSize)
	}
	n3 := lifeNode(t, "lf", file, cache, now, true)
	n3.sent, n3.lf.sentPath = newSentRing(2*size), sentPath(&n3.cfg)
	n3.readSent()
	if got := len(n3.sent.live(t0)); got != 2*size {
		t.Fatalf("a sent file of %d bytes read back %d items, want %d", st.Size(), got, 2*size)
	}
}
