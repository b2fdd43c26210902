package farm_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestFreshFarmAfterLongPauseTakesHoldersSet: after a pause of the whole
// farm longer than its keys live, the fresh nodes that start together all
// take the set the lease holder writes above the stale one, none serves
// with keys of its own, and nothing is merged. The farm n1, n2 rotates
// every second keeping 1 previous key, then stops; once its set is stale
// (older than (Keep+1) × Interval by its own schedule), n3, n4, n5 start
// at once with a longer schedule (polls 6 s apart, longer than the 5 s
// the harness waits for keys, as the daemon's 3 s are shorter than the
// default 10 s polls):
//
//   - lease free: whoever takes the lease first writes the new set;
//   - lease lingers: a node of the old farm that crashed a moment ago
//     still holds the lease for 1.5 s, so every fresh node reads the
//     stale set before anyone can write one.
//
// Before, a node that was not the lease holder and read the stale set
// before the holder wrote its own next looked at the store a poll later:
// it reached the end of its wait without the farm's keys (or got them by
// the announcement but was not called ready), served with keys of its own
// and merged them into the new set. With the lease lingering every node
// did, the first to take the lease included.
func TestFreshFarmAfterLongPauseTakesHoldersSet(t *testing.T) {
	t.Parallel()
	url := redistest.Start(t).URL()
	for _, lingers := range []bool{false, true} {
		t.Run(map[bool]string{false: "lease free", true: "lease lingers"}[lingers], func(t *testing.T) {
			t.Parallel()
			freshFarmAfterLongPause(t, url, lingers)
		})
	}
}

func freshFarmAfterLongPause(t *testing.T, url string, lingers bool) {
	short := farm.RotationConfig{Interval: time.Second, Keep: 1}
	o := farmtest.Options{NewTransport: redisTransport(url), SessionMode: session.Stateless, Rotation: &short}
	ms, name := farmtest.Start(t, 2, &o)
	old := agreed(t, ms, 1)
	for _, m := range ms {
		m.Rotator.Close()
	}
	stopped := ms[0].Ring.State()
	if stopped.Epoch < old.Epoch {
		t.Fatalf("epoch went back from %d to %d", old.Epoch, stopped.Epoch)
	}
	time.Sleep(time.Until(stopped.Rotated.Add(time.Duration(short.Keep+2) * short.Interval)))
	if lingers {
		opt, err := redis.ParseURL(url)
		if err != nil {
			t.Fatal(err)
		}
		raw := redis.NewClient(opt)
		defer raw.Close()
		if err := raw.Set(context.Background(), redisOf(ms[0]).Key("ticket-keys-lease"), "n1/crashed", 1500*time.Millisecond).Err(); err != nil {
			t.Fatal(err)
		}
	}

	long := farm.RotationConfig{Interval: 40 * time.Second, Keep: 1, LeaseTTL: 12 * time.Second, PollInterval: 6 * time.Second}
	o2 := o
	o2.Rotation = &long
	fresh := make([]*farmtest.Member, 3)
	took := make([]time.Duration, len(fresh))
	var wg sync.WaitGroup
	for i := range fresh {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			fresh[i] = farmtest.Join(t, fmt.Sprintf("n%d", i+3), name, o2) // waits for the farm's keys, up to 5 s
			took[i] = time.Since(start)
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("the fresh nodes started in %v", took)
	for i, m := range fresh {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		err := m.Rotator.WaitReady(ctx)
		cancel()
		if err != nil {
			t.Errorf("%s was not ready with the farm's keys after %v: %v", m.Name, took[i].Round(time.Millisecond), err)
		}
	}
	st := agreed(t, fresh, stopped.Epoch+1)
	for _, k := range stopped.Keys() {
		if k == st.Current {
			t.Fatal("the fresh nodes encrypt with a key of the stale set")
		}
	}
	// Past every node's next regular poll: a node that served with keys
	// of its own merges them then.
	time.Sleep(long.PollInterval + time.Second)
	for _, m := range fresh {
		if n := farmtest.Counter(m.Rotator.Metrics(), "tlsfarm_ticket_key_sets_merged_total"); n != 0 {
			t.Errorf("%s merged %d times", m.Name, n)
		}
		if got := m.Ring.State(); got.Epoch != st.Epoch || got.Current != st.Current {
			t.Errorf("%s moved from epoch %d to %d", m.Name, st.Epoch, got.Epoch)
		}
	}
}
