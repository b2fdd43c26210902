package proxy

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestEarlyDataRefusedAfterStoreLoss: a 0-RTT flight accepted on n2 is
// recorded, the farm's Redis restarts empty, and the flight replayed to n1
// has its early data refused: the ticket was issued before the store's
// strike register began again.
func TestEarlyDataRefusedAfterStoreLoss(t *testing.T) {
	for _, mode := range []session.Mode{session.Stateful, session.Stateless} {
		t.Run(mode.String(), func(t *testing.T) {
			rs := redistest.Start(t)
			nodes := startH3Farm(t, h3FarmOptions{n: 2, mode: mode, earlyData: true, redisURL: rs.URL(),
				strikeSkew: 100 * time.Millisecond})
			n1, n2 := nodes[0], nodes[1]
			// The nodes write the register's 256 markers as they join. A
			// ticket's issue time has a resolution of one second: wait
			// until one issued now counts as issued after that, plus the
			// skew allowance.
			rc := redis.NewClient(&redis.Options{Addr: rs.Addr()})
			defer rc.Close()
			eventually(t, "the strike register's markers written", func() bool {
				keys, _ := rc.Keys(context.Background(), "tlsfarm:*:{once:??}").Result()
				return len(keys) == 256
			})
			primed := time.Now()
			for !time.Now().Truncate(time.Second).After(primed.Add(200 * time.Millisecond)) {
				time.Sleep(20 * time.Millisecond)
			}
			cache := newPinnedCache()
			getSession(t, n1, cache)
			to2 := newRelay(t, n2.addr, 0)
			r := newH3Client(t, cache).do(t, to2.addr(), http.MethodGet, "/", true)
			if !r.used0RTT || !r.resumed || r.status != http.StatusOK {
				t.Fatalf("n2: early data with n1's session: used 0-RTT %v, resumed %v, status %d", r.used0RTT, r.resumed, r.status)
			}

			rs.Kill()
			rs.Restart()
			// n1's connections to the store are made again before the
			// replay, so that what refuses it is not a broken connection.
			eventually(t, "n1 reaches the restarted store", func() bool {
				_, err := n1.node.Strike(context.Background(), []byte("probe"), time.Now().Add(time.Hour), time.Minute)
				return err == nil
			})
			before := n1.s.QUICStats()
			to2.replay(n1.addr)
			defer func() {
				if t.Failed() {
					t.Logf("n1 %+v\nn2 %+v", n1.s.QUICStats(), n2.s.QUICStats())
				}
			}()
			eventually(t, "the replay after the store restarted empty is refused", func() bool {
				st := n1.s.QUICStats()
				return st.EarlyDataRejected["store_lost"] == before.EarlyDataRejected["store_lost"]+1 ||
					st.EarlyDataAccepted != before.EarlyDataAccepted
			})
			if got := n1.s.QUICStats().EarlyDataAccepted; got != before.EarlyDataAccepted {
				t.Fatalf("n1 accepted the replayed early data after the store restarted empty (%d accepted)", got)
			}
		})
	}
}
