package redisbus_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// TestSetMembersPaged: with pages of 3 members, SetMembers returns what one
// read did: every member whose time has not passed, of at most
// transport.MaxSetMemberSize bytes, across pages and whatever the lapsed
// members among them; and the conformance test's sets pass with pages of 2.
func TestSetMembersPaged(t *testing.T) {
	url := redistest.URL(t)
	redisbus.SetSetPage(t, 3)
	tr := open(t, url, farmtest.FarmName(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	now, err := tr.Time(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for i := range 10 {
		m := fmt.Sprintf("live%02d", i)
		want[m] = true
		if err := tr.SetAdd(ctx, "tomb", []byte(m), now.Add(time.Duration(i+1)*time.Minute)); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if err := tr.SetAdd(ctx, "tomb", fmt.Appendf(nil, "lapsed%d", i), now.Add(-time.Duration(i+1)*time.Second)); err != nil {
				t.Fatal(err)
			}
		}
	}
	big := []byte(strings.Repeat("b", transport.MaxSetMemberSize+1))
	if err := tr.SetAdd(ctx, "tomb", big, now.Add(5*time.Minute+time.Second)); err != nil {
		t.Fatal(err)
	}
	got, err := tr.SetMembers(ctx, "tomb")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, m := range got {
		names[string(m)] = true
	}
	if len(got) != len(want) || len(names) != len(want) {
		t.Fatalf("SetMembers = %d members (%d distinct), want the %d live ones: %q", len(got), len(names), len(want), got)
	}
	for m := range want {
		if !names[m] {
			t.Fatalf("SetMembers left out %s: %q", m, got)
		}
	}
	redisbus.SetSetPage(t, 2)
	farmtest.TestStore(t, func(t *testing.T, name string) transport.Store { return open(t, url, name) })
}

// TestSetMembersDoesNotHoldRedis: reading a set of
// transport.MaxSetMembers members (the farm's revocations at their bound,
// 150 bytes each) holds a private Redis only briefly at a time, so that
// other clients' commands run between its pages; and the read returns
// every member. One script read them all before, in some 60-250 ms on a
// 2-core VM; a page takes about 1 ms, and 10-20 ms with the VM at load 12.
//
// How long a command held the server is wall time, which a descheduled
// redis-server stretches however little the command does (with a CPU hog
// beside it, a page showed in a 50 ms slow log in 2 or 3 runs of 8), so
// the test counts instead what the read cost the server, by its own
// command statistics (INFO commandstats, reset before the read): the
// scripts it ran (EVAL and EVALSHA), and the members each of them read on
// average, at most maxPerScript. One script for the whole set, as
// before (or pages of MaxSetMembers: redisbus.SetSetPage), fails it.
func TestSetMembersDoesNotHoldRedis(t *testing.T) {
	t.Parallel()
	// A page of 1,000 members takes about 1 ms of the server's time;
	// twice that still lets other clients in every few milliseconds.
	const maxPerScript = 2000
	srv := redistest.Start(t)
	name := farmtest.FarmName(t)
	tr := open(t, srv.URL(), name)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	fillSet(t, ctx, c, tr.Key("tomb"), transport.MaxSetMembers, 150)
	if err := c.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	got, err := tr.SetMembers(ctx, "tomb")
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if len(got) != transport.MaxSetMembers {
		t.Fatalf("SetMembers = %d members, want %d", len(got), transport.MaxSetMembers)
	}
	stats := commandStats(t, ctx, c)
	scripts := stats["eval"].calls + stats["evalsha"].calls
	if scripts == 0 {
		t.Fatalf("the read ran no script on the server: %v", stats)
	}
	// The members a script read on average: a page, for a read a page
	// at a time; all of them for one script.
	if per := len(got) / int(scripts); per > maxPerScript {
		t.Errorf("the read took %d scripts, %d members each on average (want at most %d): a command held Redis for much of the read", scripts, per, maxPerScript)
	}
	t.Logf("read %d members in %v: %d scripts on the server, %d µs of its time in all (wall: a loaded machine stretches it)",
		len(got), took, scripts, stats["eval"].usec+stats["evalsha"].usec)
}

// A cmdStat is one command's line of INFO commandstats.
type cmdStat struct{ calls, usec int64 }

// commandStats returns the server's INFO commandstats, by command name.
func commandStats(t *testing.T, ctx context.Context, c *redis.Client) map[string]cmdStat {
	t.Helper()
	info, err := c.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]cmdStat{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		name, found := strings.CutPrefix(name, "cmdstat_")
		if !ok || !found {
			continue
		}
		var st cmdStat
		for _, f := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "calls":
				st.calls, _ = strconv.ParseInt(v, 10, 64)
			case "usec":
				st.usec, _ = strconv.ParseInt(v, 10, 64)
			}
		}
		out[name] = st
	}
	return out
}

// fillSet adds n random members of size bytes to the sorted set key, each
// lapsing in an hour or so, pipelined, and gives the set a TTL, as
// SetAdd would.
func fillSet(t testing.TB, ctx context.Context, c *redis.Client, key string, n, size int) {
	t.Helper()
	until := time.Now().Add(time.Hour).UnixMilli()
	for done := 0; done < n; {
		p := c.Pipeline()
		for range min(1000, n-done) {
			m := make([]byte, size)
			rand.Read(m)
			p.ZAdd(ctx, key, redis.Z{Score: float64(until + int64(done)), Member: m})
			done++
		}
		if _, err := p.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.PExpireAt(ctx, key, time.UnixMilli(until+int64(n))).Err(); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkSetAdd: a revocation's store write, with the set's version in
// the same script.
func BenchmarkSetAdd(b *testing.B) {
	farmtest.BenchmarkSetAdd(b, func(b *testing.B) transport.Coordinator {
		url := redistest.URL(b)
		name := farmtest.FarmName(b)
		redistest.CleanFarm(b, url, name)
		return open(b, url, name)
	})
}
