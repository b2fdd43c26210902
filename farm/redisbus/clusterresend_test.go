package redisbus_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// clusterWrites are the writes TestClusterWriteCutInFlightNotSentAgain
// cuts off, each of records at keys (n of them), with whether it
// publishes too.
var clusterWrites = []struct {
	name    string
	n       int
	publish bool
	write   func(ctx context.Context, tr *redisbus.Transport, keys []string) error
}{
	{"set", 1, false, func(ctx context.Context, tr *redisbus.Transport, keys []string) error {
		return tr.PutRecords(ctx, transport.Item{Key: keys[0], Value: []byte("1"), TTL: time.Hour})
	}},
	{"write-back", 1, false, func(ctx context.Context, tr *redisbus.Transport, keys []string) error {
		return tr.PutRecords(ctx, transport.Item{Key: keys[0], Value: []byte("1"), TTL: time.Hour, NoLonger: true})
	}},
	{"add", 1, false, func(ctx context.Context, tr *redisbus.Transport, keys []string) error {
		ok, err := tr.AddRecord(ctx, transport.Item{Key: keys[0], Value: []byte("1"), TTL: time.Hour})
		if err == nil && !ok {
			err = errors.New("AddRecord: not added")
		}
		return err
	}},
	{"pipeline", 2, false, func(ctx context.Context, tr *redisbus.Transport, keys []string) error {
		return tr.PutRecords(ctx, transport.Item{Key: keys[0], Value: []byte("1"), TTL: time.Hour},
			transport.Item{Key: keys[1], Value: []byte("2"), TTL: time.Hour})
	}},
	{"put-and-publish", 1, true, func(ctx context.Context, tr *redisbus.Transport, keys []string) error {
		return tr.PutAndPublish(ctx, []transport.Item{{Key: keys[0], Value: []byte("1"), TTL: time.Hour}}, nil, [][]byte{[]byte("m")})
	}},
}

// sameSlotKey returns a key of the form prefix-N in the slot of key's
// record (a record's key is its own hash tag).
func sameSlotKey(prefix, key string) string {
	for i := 0; ; i++ {
		if k := fmt.Sprintf("%s-%d", prefix, i); redistest.Slot(k) == redistest.Slot(key) {
			return k
		}
	}
}

// TestClusterWriteCutInFlightNotSentAgain is TestWriteCutInFlightNotSentAgain
// on a Redis Cluster, whose client sends a command again after a network
// error (on the same node, then on the slot's master anew) for as many
// tries as it follows MOVED and ASK: the transport's writes go out at most
// once, each a command that says it must not be retried. The client
// reaches each node through a proxy that the node announces, which holds
// the write and then cuts it off. The same writes still follow MOVED
// (a slot moved since the client read the cluster's map), which is not a
// failure: the node that answers it ran nothing.
func TestClusterWriteCutInFlightNotSentAgain(t *testing.T) {
	t.Parallel()
	proxies := map[string]*nettest.Proxy{}
	c := redistest.StartClusterVia(t, 3, 0, 2*time.Second, func(addr string) string {
		px := nettest.NewProxy(t, addr)
		proxies[addr] = px
		return px.Addr
	})
	// No periodic read of the cluster's map: what a frozen proxy holds
	// is the write, and a slot moved below stays unknown to the client.
	url := c.URL("reload=1h")
	for _, w := range clusterWrites {
		t.Run(w.name, func(t *testing.T) {
			farm := redistest.Farm(t)
			tr := open(t, url, farm)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var cut, warm []string
			for i := range w.n {
				k := fmt.Sprintf("cut-%c", 'a'+i)
				cut = append(cut, k)
				warm = append(warm, sameSlotKey("warm", k))
			}
			// The connections the write takes are in the pool, as a
			// node's are: what the proxies hold is the write, not the
			// setup of new connections.
			if err := w.write(ctx, tr, warm); err != nil {
				t.Fatal(err)
			}
			// Each master the write goes to holds a part of it.
			slots := []int{}
			for _, k := range cut {
				slots = append(slots, redistest.Slot(k))
			}
			if w.publish {
				slots = append(slots, redistest.Slot(tr.Channel()))
			}
			masters := map[*redistest.Server]bool{}
			for _, s := range slots {
				masters[c.MasterOf(s)] = true
			}
			for _, px := range proxies {
				px.Freeze()
			}
			done := make(chan error, 1)
			go func() { done <- w.write(ctx, tr, cut) }()
			farmtest.Eventually(t, 10*time.Second, "the write held in the proxies", func() bool {
				held := 0
				for _, px := range proxies {
					held += min(px.Holding(), 1)
				}
				return held >= len(masters)
			})
			for _, px := range proxies {
				px.Cut()
			}
			for _, px := range proxies {
				px.Restore()
			}
			err := <-done
			if err == nil {
				t.Error("the write cut in flight succeeded: it was sent again on a new connection")
			}
			peer := open(t, url, farm)
			for _, key := range cut {
				if _, gerr := peer.GetRecord(ctx, key); !errors.Is(gerr, transport.ErrNotFound) {
					t.Errorf("record %q written (GetRecord: %v; the write returned %v): the write cut in flight was sent again", key, gerr, err)
				}
			}
			// The transport works again, on new connections.
			var after []string
			for i := range w.n {
				after = append(after, fmt.Sprintf("after-%c", 'a'+i))
			}
			if err := w.write(ctx, tr, after); err != nil {
				t.Fatalf("the write after the cut: %v", err)
			}
		})
	}
	// A take and a pipeline of deletes, of records migrated while their
	// slots migrate, follow ASK to where they are.
	t.Run("ask", func(t *testing.T) {
		farm := redistest.Farm(t)
		tr := open(t, url, farm)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		keys := []string{"ask-take", "ask-del", "del"}
		for _, k := range keys {
			if err := tr.PutRecords(ctx, transport.Item{Key: k, Value: []byte(k), TTL: time.Hour}); err != nil {
				t.Fatal(err)
			}
		}
		to := map[string]*redistest.Server{}
		for _, k := range keys[:2] {
			to[k] = migrateRecord(t, c, tr.RecordKey(k))
		}
		if v, err := tr.TakeRecord(ctx, "ask-take"); err != nil || string(v) != "ask-take" {
			t.Errorf("take of a record migrated, its slot migrating = %q, %v; want the record", v, err)
		}
		if err := tr.DeleteRecords(ctx, "ask-del", "del"); err != nil {
			t.Errorf("deletes, one of a record migrated, its slot migrating: %v", err)
		}
		for _, k := range keys[:2] {
			// The slot is importing there: ASKING first.
			var exists *redis.IntCmd
			_, err := c.Client(to[k]).Pipelined(ctx, func(p redis.Pipeliner) error {
				p.Do(ctx, "asking")
				exists = p.Exists(ctx, tr.RecordKey(k))
				return nil
			})
			if n := exists.Val(); err != nil || n != 0 {
				t.Errorf("record %q still on the master it migrated to (EXISTS: %d, %v)", k, n, err)
			}
		}
		if _, err := tr.GetRecord(ctx, "del"); !errors.Is(err, transport.ErrNotFound) {
			t.Errorf("record %q not deleted: %v", "del", err)
		}
	})
	// Each write, to a slot moved to another master since the client
	// read the map, follows MOVED there.
	t.Run("moved", func(t *testing.T) {
		farm := redistest.Farm(t)
		tr := open(t, url, farm)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := tr.PutRecords(ctx, transport.Item{Key: "warm", Value: []byte("1"), TTL: time.Hour}); err != nil {
			t.Fatal(err)
		}
		peer := open(t, url, farm)
		for i, w := range clusterWrites {
			var keys []string
			for j := range w.n {
				keys = append(keys, fmt.Sprintf("moved-%d-%d", i, j))
			}
			var to []*redistest.Server
			for _, k := range keys {
				_, m := moveSlot(t, c, redistest.Slot(k))
				to = append(to, m)
			}
			if err := w.write(ctx, tr, keys); err != nil {
				t.Errorf("%s to a moved slot: %v", w.name, err)
				continue
			}
			for j, k := range keys {
				if n, err := c.Client(to[j]).Exists(ctx, tr.RecordKey(k)).Result(); err != nil || n != 1 {
					t.Errorf("%s: record %q not on the master its slot moved to (EXISTS: %d, %v)", w.name, k, n, err)
				}
				if _, err := peer.GetRecord(ctx, k); err != nil {
					t.Errorf("%s: record %q: %v", w.name, k, err)
				}
			}
		}
	})
}

// migrateRecord sets the slot of the record at key migrating from its
// master to another, importing there, and migrates the record to it:
// its master answers ASK for it from then on. It returns the other.
func migrateRecord(t *testing.T, c *redistest.Cluster, key string) *redistest.Server {
	t.Helper()
	slot := redistest.Slot(key)
	from, to := slotAndOtherMaster(t, c, slot)
	clusterDo(t, c, to, "cluster", "setslot", slot, "importing", clusterNodeID(t, c, from))
	clusterDo(t, c, from, "cluster", "setslot", slot, "migrating", clusterNodeID(t, c, to))
	clusterDo(t, c, from, "migrate", "127.0.0.1", to.Port, key, 0, 5000)
	return to
}
