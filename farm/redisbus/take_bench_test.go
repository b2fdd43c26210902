package redisbus_test

import (
	"context"
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

// BenchmarkTakeServer measures the take of a single-use session
// (TakeRecord of a present record of about a sealed session's size) on a
// private Redis server, and reports the server's own time for it: the
// usec of the command the take ran (INFO commandstats, reset before the
// timed loop), per take, as server-us/take, and the CPU time of the
// whole server (INFO cpu: the command, and reading it and writing its
// reply), per take, as server-cpu-us/take.
func BenchmarkTakeServer(b *testing.B) {
	s := redistest.Start(b)
	tr, err := redisbus.Open(s.URL(), farmtest.FarmName(b))
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	rc := redis.NewClient(&redis.Options{Addr: s.Addr()})
	defer rc.Close()
	ctx := context.Background()
	value := make([]byte, 200)
	items := make([]transport.Item, b.N)
	for i := range items {
		items[i] = transport.Item{Key: fmt.Sprintf("take:%d:%d", b.N, i), Value: value, TTL: time.Minute}
	}
	for i := 0; i < len(items); i += 1000 {
		if err := tr.PutRecords(ctx, items[i:min(i+1000, len(items))]...); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := tr.TakeRecord(ctx, "warm"); err != transport.ErrNotFound {
		b.Fatal(err)
	}
	if err := rc.ConfigResetStat(ctx).Err(); err != nil {
		b.Fatal(err)
	}
	cpu := serverCPU(b, rc)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range items {
		if _, err := tr.TakeRecord(ctx, items[i].Key); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	cpu = serverCPU(b, rc) - cpu
	info, err := rc.Info(ctx, "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	// The usec of a script includes that of the commands it runs, which
	// INFO lists again, each under its own name (GETDEL, PTTL, SET): the
	// take's GETDEL counts only where it ran alone (takeSplit, or the
	// take before the retirement mark).
	usec := serverUsec(info, "evalsha", "eval")
	if usec == 0 {
		usec = serverUsec(info, "getdel")
	}
	b.ReportMetric(float64(usec)/float64(b.N), "server-us/take")
	b.ReportMetric(cpu.Seconds()*1e6/float64(b.N), "server-cpu-us/take")
}

// serverCPU returns the CPU time Redis has used, user and system (INFO
// cpu), from rc.
func serverCPU(b *testing.B, rc *redis.Client) time.Duration {
	info, err := rc.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		for _, f := range []string{"used_cpu_user:", "used_cpu_sys:"} {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), f); ok {
				s, err := strconv.ParseFloat(v, 64)
				if err != nil {
					b.Fatalf("INFO cpu: %q: %v", line, err)
				}
				total += s
			}
		}
	}
	return time.Duration(total * float64(time.Second))
}

// serverUsec returns the usec INFO commandstats reports for cmds, summed.
func serverUsec(info string, cmds ...string) int64 {
	var total int64
	for _, line := range strings.Split(info, "\n") {
		for _, c := range cmds {
			rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_"+c+":")
			if !ok {
				continue
			}
			for _, f := range strings.Split(rest, ",") {
				if v, ok := strings.CutPrefix(f, "usec="); ok {
					n, _ := strconv.ParseInt(v, 10, 64)
					total += n
				}
			}
		}
	}
	return total
}
