package proxy

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestEarlyDataSoonAfterRegisterBegins: a ticket issued about 400 ms after
// the farm's strike register began (every group's marker rewritten to a
// time early in a second), with MaxSkew 1 ms, carries early data on the
// other node. Its createdAt names the second the register began in, so
// with createdAt's whole seconds as its issue time it would be refused
// (reason "store_lost"); the cache's own issue time (the ID's milliseconds,
// the binding's nanoseconds) lets it pass.
func TestEarlyDataSoonAfterRegisterBegins(t *testing.T) {
	for _, mode := range []session.Mode{session.Stateful, session.Stateless} {
		t.Run(mode.String(), func(t *testing.T) {
			rs := redistest.Start(t)
			nodes := startH3Farm(t, h3FarmOptions{n: 2, mode: mode, earlyData: true, redisURL: rs.URL(),
				strikeSkew: time.Millisecond})
			n1, n2 := nodes[0], nodes[1]
			rc := redis.NewClient(&redis.Options{Addr: rs.Addr()})
			defer rc.Close()
			ctx := context.Background()
			var markers []string
			eventually(t, "the strike register's markers written", func() bool {
				markers, _ = rc.Keys(ctx, "tlsfarm:*:{once:??}").Result()
				return len(markers) == 256
			})
			// Up to three tries: a try counts only if the ticket was
			// issued in the second the register began in.
			for try := 0; ; try++ {
				// The register begins in the first 100 ms of a second.
				for time.Now().Nanosecond() > 100e6 || time.Now().Nanosecond() < 10e6 {
					time.Sleep(5 * time.Millisecond)
				}
				begun := time.Now()
				for _, k := range markers {
					if err := rc.Set(ctx, k, strconv.FormatInt(begun.UnixMilli(), 10), redis.KeepTTL).Err(); err != nil {
						t.Fatal(err)
					}
				}
				time.Sleep(time.Until(begun.Add(400 * time.Millisecond)))
				cache := newPinnedCache()
				getSession(t, n1, cache)
				if after := time.Now(); after.Unix() != begun.Unix() {
					if try == 2 {
						t.Fatalf("the ticket was not issued in the second the register began in (%v after)", after.Sub(begun))
					}
					continue
				}
				before := n2.s.QUICStats()
				// Through a relay, as every 0-RTT flight in these tests: see relay.
				r := newH3Client(t, cache).do(t, newRelay(t, n2.addr, 0).addr(), http.MethodGet, "/", true)
				st := n2.s.QUICStats()
				if !r.used0RTT || !r.resumed || r.status != http.StatusOK {
					t.Fatalf("n2: early data with a ticket issued 400 ms after the register began: used 0-RTT %v, resumed %v, status %d, store_lost refusals %d",
						r.used0RTT, r.resumed, r.status, st.EarlyDataRejected["store_lost"]-before.EarlyDataRejected["store_lost"])
				}
				return
			}
		})
	}
}
