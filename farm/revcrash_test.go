package farm_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// revCrashCount is how many sessions TestRevocationsSurviveKill revokes.
const revCrashCount = 3

// TestRevocationsSurviveKill: a node (n1, in a process of its own, with a
// RevocationFile) issues sessions, which n2 receives; Redis (store and
// bus) is killed, n1 revokes them (each RevokeSession answers pending:
// applied on n1, acknowledged to the caller, queued for the farm) and is
// killed with SIGKILL at once, with no Close. Redis restarts empty and a
// new n1 starts on the same RevocationFile: it must read every
// revocation its predecessor acknowledged, write each to the store as a
// tombstone and publish it, so that n2 drops the sessions. A revocation
// that reached the disk only after RevokeSession returned (or at Close)
// would be lost here. The killed node must have appended them to the
// journal, not rewritten the file (as every revocation did before the
// journal).
func TestRevocationsSurviveKill(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t) // no persistence: a restart is empty
	farmName := farmtest.FarmName(t)
	secret := farm.NewSecret(1)
	dir := t.TempDir()
	file, idsFile := filepath.Join(dir, "revocations"), filepath.Join(dir, "ids")
	n2 := farmtest.Join(t, "n2", farmName, crashOptions(redisTransport(srv.URL()), secret, ""))
	farmtest.WaitConnected(t, n2)

	c := startChild(t, "TestRevCrashChild", crashEnv(farmName, srv.URL(), file, secret, idsFile)...)
	c.await("issued")
	ids := readIDs(t, idsFile, revCrashCount)
	held := func() (k int) {
		for _, id := range ids {
			if _, ok := lookup(n2.Cache, id); ok {
				k++
			}
		}
		return k
	}
	farmtest.Eventually(t, 10*time.Second, "n2 holds the sessions", func() bool { return held() == len(ids) })
	srv.Kill()
	c.tell("go")
	c.await("revoked")
	c.kill()
	// Appended, each before its RevokeSession returned: the file is
	// written whole only by Join, Close and compaction.
	if _, err := os.Stat(file + ".journal"); err != nil {
		t.Fatalf("no journal beside the revocations file: %v", err)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("revocations added to none pending rewrote the file whole: %v", err)
	}

	srv.Restart()
	farmtest.WaitConnected(t, n2)
	if k := held(); k != len(ids) {
		t.Fatalf("n2 holds %d of the %d sessions before the new n1 starts: the test proves nothing", k, len(ids))
	}
	n1 := farmtest.Join(t, "n1", farmName, crashOptions(redisTransport(srv.URL()), secret, file))
	farmtest.WaitConnected(t, n1, n2)
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rc.Close()
	tombstones := n1.Store.(*redisbus.Transport).Key("revoked")
	farmtest.Eventually(t, 10*time.Second, "the revocations reach the store and n2", func() bool {
		k, err := rc.ZCard(context.Background(), tombstones).Result()
		return err == nil && int(k) == len(ids) && held() == 0 &&
			farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_pending_revocations") == 0
	})
	for _, id := range ids {
		if _, ok := lookup(n1.Cache, id); ok {
			t.Fatal("the new n1 holds a revoked session")
		}
	}
}

// TestRevCrashChild is n1 of TestRevocationsSurviveKill, in a process of
// its own: it issues revCrashCount sessions (their IDs to the file it is
// given), says "issued", waits for a line (Redis is then down), revokes
// them (each must answer pending), says "revoked", and waits to be
// killed.
func TestRevCrashChild(t *testing.T) {
	if os.Getenv(crashEnvFarm) == "" {
		t.Skip("n1 of TestRevocationsSurviveKill, run by it")
	}
	m := crashChildJoin(t)
	ids, _ := farmtest.Issue(t, m, revCrashCount)
	for _, id := range ids {
		waitStored(t, m, id)
	}
	writeIDs(t, os.Getenv(crashEnvIDs), ids)
	fmt.Println("issued")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		st, err := m.Node.RevokeSession(ctx, id)
		cancel()
		if err != nil || st != farm.RevokePending {
			t.Fatalf("RevokeSession with Redis down = %v, %v; want pending", st, err)
		}
	}
	fmt.Println("revoked")
	select {}
}
