package farm_test

import (
	"context"
	"encoding/hex"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestWriteBackChunksCountTheirOwnTTLs: a write-back of more sessions than
// BatchSize to a slow store writes them in several chunks, one after the
// other. Each record written back must live no longer than its session
// (give or take its own write's way to the store, bounded by OpTimeout):
// a chunk's TTLs counted from a clock read before the earlier chunks were
// written would let its records outlive their sessions by the time those
// writes took. Here 40 sessions go in 10 chunks of 4, each taking some
// 300 ms or more through a proxy that holds every read for 75 ms, so the
// last chunks would be over by seconds.
func TestWriteBackChunksCountTheirOwnTTLs(t *testing.T) {
	t.Parallel()
	const (
		sessions  = 40
		batch     = 4
		opTimeout = time.Second
		latency   = 75 * time.Millisecond
	)
	srv := redistest.Start(t)
	p := nettest.NewProxy(t, srv.Addr())
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rc.Close()
	o := &farmtest.Options{
		Mode:         farm.StoreOnly,
		NewTransport: redisTransport("redis://" + p.Addr),
		Tweak: func(c *farm.Config) {
			c.HealInterval = 200 * time.Millisecond
			c.BatchSize = batch
			c.OpTimeout = opTimeout
		},
	}
	ms, _ := farmtest.Start(t, 1, o)
	n1 := ms[0]
	ids, _ := farmtest.Issue(t, n1, sessions)
	for _, id := range ids {
		waitStored(t, n1, id)
	}
	farmtest.Eventually(t, 5*time.Second, "n1 read the store's generation", func() bool { return n1.Node.StoreGeneration() != nil })
	expires := make(map[session.ID]time.Time, sessions)
	for id, rec := range n1.Cache.Snapshot(-1) {
		expires[id] = rec.Expires
	}
	for _, id := range ids {
		if _, ok := expires[id]; !ok {
			t.Fatalf("n1 does not hold a session it issued")
		}
	}

	tr := n1.Store.(*redisbus.Transport)
	key := func(id session.ID) string { return tr.RecordKey("s:" + hex.EncodeToString(id[:])) }
	p.SetLatency(latency)
	if err := rc.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	farmtest.Eventually(t, 60*time.Second, "n1 wrote all its sessions back", func() bool {
		return farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_written_back_total") >= sessions
	})
	p.SetLatency(0)

	worst := time.Duration(-1 << 63)
	for _, id := range ids {
		// What is left of the session when the TTL is asked for: the
		// session's end can only draw nearer while the answer comes.
		asked := time.Now()
		ttl, err := rc.PTTL(context.Background(), key(id)).Result()
		if err != nil {
			t.Fatal(err)
		}
		if ttl <= 0 {
			t.Fatalf("a session written back has no record in the store (PTTL %v)", ttl)
		}
		over := ttl - expires[id].Sub(asked)
		worst = max(worst, over)
		if over > opTimeout {
			t.Errorf("a written-back record outlives its session by %v (allowed: OpTimeout, %v)", over, opTimeout)
		}
	}
	t.Logf("records outlive their sessions by at most %v", worst)
}

// TestWriteBackAfterRestartNotHeldByPriming: a node that finds its Redis
// restarted empty primes the strike register and writes its sessions back.
// The restarted server lost the strike script, so the first group's strike
// answers NOSCRIPT and the node renews every group in one request; it must
// then not strike the other 255 groups one round trip at a time (on a slow
// store, here a proxy holding each read for 20 ms, that took over 10 s,
// and held the write-back for as long when the priming came first). The
// session must be back within the write-back's 1.5 s wait and a few round
// trips, and the server must have run only a few scripts by hash.
func TestWriteBackAfterRestartNotHeldByPriming(t *testing.T) {
	t.Parallel()
	rc := writeBackNotHeldByPriming(t, func(srv *redistest.Server, _ *redis.Client) {
		srv.Kill()
		srv.Restart()
	})
	// The priming runs beside the write-back, so the bound above holds
	// either way; what the renewal saves shows in the strikes the
	// restarted server ran: with the proxy's latency gone, 2 s is
	// ample for 255 of them to come.
	time.Sleep(2 * time.Second)
	info, err := rc.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	// Counted as run: those that found the script. The priming's first
	// pipeline, sent to a server without it, fails whole (NOSCRIPT).
	var calls, failed int64
	for line := range strings.SplitSeq(strings.TrimSpace(info), "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_evalsha:")
		if !ok {
			continue
		}
		for field := range strings.SplitSeq(rest, ",") {
			k, v, _ := strings.Cut(field, "=")
			switch k {
			case "calls":
				calls, _ = strconv.ParseInt(v, 10, 64)
			case "failed_calls":
				failed, _ = strconv.ParseInt(v, 10, 64)
			}
		}
	}
	if ran := calls - failed; ran >= 64 {
		t.Fatalf("the restarted server ran %d scripts by hash: the node struck the strike groups one by one after renewing them all", ran)
	}
	t.Logf("the restarted server ran %d scripts by hash (%d more failed)", calls-failed, failed)
}

// writeBackNotHeldByPriming has one node find its private Redis, behind a
// proxy that holds each read for 20 ms, emptied by lose, and checks that
// the node writes its session back within 7 s. It returns a client of the
// server, not through the proxy, whose latency it has taken away.
func writeBackNotHeldByPriming(t *testing.T, lose func(*redistest.Server, *redis.Client)) *redis.Client {
	const latency = 20 * time.Millisecond
	srv := redistest.Start(t)
	p := nettest.NewProxy(t, srv.Addr())
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { rc.Close() })
	o := &farmtest.Options{
		Mode:         farm.StoreOnly,
		NewTransport: redisTransport("redis://" + p.Addr),
		Tweak: func(c *farm.Config) {
			c.HealInterval = 200 * time.Millisecond
			// Each strike of the priming gets LookupTimeout: one that
			// failed would end the priming early, hiding its length.
			c.LookupTimeout = 2 * time.Second
		},
	}
	ms, _ := farmtest.Start(t, 1, o)
	n1 := ms[0]
	ids, _ := farmtest.Issue(t, n1, 1)
	waitStored(t, n1, ids[0])
	farmtest.Eventually(t, 5*time.Second, "n1 read the store's generation", func() bool { return n1.Node.StoreGeneration() != nil })
	tr := n1.Store.(*redisbus.Transport)
	key := tr.RecordKey("s:" + hex.EncodeToString(ids[0][:]))
	// The priming n1 does when it joins must be over before the loss:
	// on a loaded machine it may outlast its OpTimeout and be tried again
	// a second later, after the restart, where its one pipeline of
	// EVALSHA would count as the strikes the check after the loss looks
	// for (a CI run saw 256). It writes every group's marker in one
	// pipeline: the last group's marker ("once:ff") means all are there.
	farmtest.Eventually(t, 10*time.Second, "n1 primed the strike register", func() bool {
		n, err := rc.Exists(context.Background(), tr.RecordKey("once:ff")).Result()
		return err == nil && n == 1
	})

	p.SetLatency(latency)
	lose(srv, rc)
	restarted := time.Now()
	// Detection (a heal, a few round trips), the write-back's 1.5 s
	// wait, and a few more round trips: well under 7 s even under load;
	// 255 strikes alone take over 10 s.
	const limit = 7 * time.Second
	for {
		n, err := rc.Exists(context.Background(), key).Result()
		if err == nil && n == 1 {
			break
		}
		if time.Since(restarted) > limit {
			t.Fatalf("n1 did not write its session back within %v of the loss", limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("written back %v after the loss", time.Since(restarted).Round(time.Millisecond))
	p.SetLatency(0)
	return rc
}

// TestWriteBackAfterFlushNotHeldByPriming: as
// TestWriteBackAfterRestartNotHeldByPriming, but the store loses its data
// and keeps its scripts (FLUSHALL), so priming the strike register strikes
// each of its 256 groups in a round trip of its own (over 10 s through the
// proxy). The write-back must not wait for that.
func TestWriteBackAfterFlushNotHeldByPriming(t *testing.T) {
	t.Parallel()
	writeBackNotHeldByPriming(t, func(srv *redistest.Server, rc *redis.Client) {
		if err := rc.FlushAll(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
	})
}

// failWriteBack is a Redis transport whose next write-back write
// (Item.NoLonger) fails, once armed, as one that outlasted OpTimeout.
type failWriteBack struct {
	*redisbus.Transport
	armed  atomic.Bool
	failed atomic.Int32
}

func (f *failWriteBack) PutRecords(ctx context.Context, items ...transport.Item) error {
	if len(items) > 0 && items[0].NoLonger && f.armed.CompareAndSwap(true, false) {
		f.failed.Add(1)
		return context.DeadlineExceeded
	}
	return f.Transport.PutRecords(ctx, items...)
}

// TestWriteBackRetriedAfterFailedWrite: a node whose write-back to a store
// that lost its data fails to write must try it again, not leave its
// sessions out of the store for good (no later read of the generation
// shows the loss again).
func TestWriteBackRetriedAfterFailedWrite(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rc.Close()
	var tr *failWriteBack
	o := &farmtest.Options{
		Mode: farm.StoreOnly,
		NewTransport: func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
			inner := openRedis(t, srv.URL(), farmName)
			tr = &failWriteBack{Transport: inner}
			return tr, tr
		},
		Tweak: func(c *farm.Config) { c.HealInterval = 200 * time.Millisecond },
	}
	ms, _ := farmtest.Start(t, 1, o)
	n1 := ms[0]
	ids, _ := farmtest.Issue(t, n1, 1)
	waitStored(t, n1, ids[0])
	farmtest.Eventually(t, 5*time.Second, "n1 read the store's generation", func() bool { return n1.Node.StoreGeneration() != nil })
	tr.armed.Store(true)
	if err := rc.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	farmtest.Eventually(t, 10*time.Second, "n1's write-back failed", func() bool { return tr.failed.Load() == 1 })
	farmtest.Eventually(t, 10*time.Second, "n1 wrote its session back", func() bool { return stored(n1, ids[0]) })
}
