package farm_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/logtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestNewFarmFirstStartMergeIsNoWarning: two nodes of a new farm start
// while the rotation lease is held (as when a third node took it a moment
// before them), so neither finds a key set and both serve with keys of
// their own; when the lease frees (the test releases it once both have
// joined), one seeds the set and the other merges
// its keys in. That is every new farm's first start: the merge is logged
// at INFO, and no WARN is logged. Before, the merge's line was a WARN
// that read like data loss ("the store lost its key set").
func TestNewFarmFirstStartMergeIsNoWarning(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	name := farmtest.FarmName(t)
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	raw := redis.NewClient(opt)
	defer raw.Close()
	lease := openRedis(t, url, name).Key("ticket-keys-lease")
	// Held until both have joined, however long their Joins take (a
	// lease that expired on its own, 1.5 s after it was set, let the
	// first node seed the set before the second started on a loaded
	// machine: no merge then, and nothing logged).
	if err := raw.Set(context.Background(), lease, "n0/starting", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}

	logs := &logtest.Buffer{}
	o := farmtest.Options{NewTransport: redisTransport(url), SessionMode: session.Stateless, Secret: farm.NewSecret(1),
		Logger:   slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Rotation: &farm.RotationConfig{Interval: time.Minute, Keep: 1, PollInterval: 200 * time.Millisecond}}
	ms := []*farmtest.Member{farmtest.Join(t, "n1", name, o), farmtest.Join(t, "n2", name, o)}
	farmtest.WaitConnected(t, ms...)
	for _, m := range ms {
		if st := m.Ring.State(); st.Epoch != 0 {
			t.Fatalf("%s holds the farm's key set (epoch %d) while the lease is held", m.Name, st.Epoch)
		}
	}
	if err := raw.Del(context.Background(), lease).Err(); err != nil {
		t.Fatal(err)
	}
	agreed(t, ms, 1)
	farmtest.Eventually(t, 5*time.Second, "the merge logged", func() bool {
		return strings.Contains(logs.String(), "farm: took the farm's ticket key set") ||
			strings.Contains(logs.String(), "level=WARN")
	})
	for line := range strings.Lines(logs.String()) {
		if strings.Contains(line, "level=WARN") {
			t.Errorf("a new farm's first start logged a warning: %s", strings.TrimSpace(line))
		}
	}
}
