package farm_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/session"
)

// The child of TestConcurrentRevocationsSurviveKill revokes from
// revGroupWorkers goroutines at once, revGroupEach sessions each, one
// after the other, and each write to its journal takes revGroupSlow
// longer, so that revocations share them. Once half its RevokeSession
// calls have returned (when the test kills it), every journal write is
// held until the kill: revocations are always waiting for one then. With
// the slowdown alone, the rest took some 75 ms, and on a loaded machine
// the test read the child's lines and killed it later than that: every
// revocation had returned, and the test proved nothing.
const (
	revGroupWorkers = 64
	revGroupEach    = 3
	revGroupSlow    = 20 * time.Millisecond
)

// TestConcurrentRevocationsSurviveKill is TestRevocationsSurviveKill with
// many revocations at once: n1, in a process of its own, revokes 192
// sessions from 64 goroutines (so that they share journal writes, each
// made slower) while Redis is down, saying so for each RevokeSession that
// returns, and is killed with SIGKILL once half have, others in flight.
// Every revocation whose RevokeSession returned must survive: a new n1 on
// the same RevocationFile writes it to the store (restarted empty) and
// n2 drops the session. One that returned before its journal write ended
// would be lost.
func TestConcurrentRevocationsSurviveKill(t *testing.T) {
	t.Parallel()
	const total = revGroupWorkers * revGroupEach
	srv := redistest.Start(t) // no persistence: a restart is empty
	farmName := farmtest.FarmName(t)
	secret := farm.NewSecret(1)
	dir := t.TempDir()
	file, idsFile := filepath.Join(dir, "revocations"), filepath.Join(dir, "ids")
	n2 := farmtest.Join(t, "n2", farmName, crashOptions(redisTransport(srv.URL()), secret, ""))
	farmtest.WaitConnected(t, n2)
	farmtest.WaitRevocationsKnown(t, n2)

	c := startChild(t, "TestRevGroupCrashChild", crashEnv(farmName, srv.URL(), file, secret, idsFile)...)
	c.await("issued")
	ids := readIDs(t, idsFile, total)
	held := func(ids []session.ID) (k int) {
		for _, id := range ids {
			if _, ok := lookup(n2.Cache, id); ok {
				k++
			}
		}
		return k
	}
	farmtest.Eventually(t, 20*time.Second, "n2 holds the sessions", func() bool { return held(ids) == len(ids) })
	srv.Kill()
	c.tell("go")

	// "revoked i": RevokeSession returned for ids[i]. Kill once half have
	// said so; what it said before it died counts too.
	returned := make(map[int]bool)
	timeout := time.After(30 * time.Second)
	for len(returned) < total/2 {
		select {
		case l, ok := <-c.lines:
			if !ok {
				t.Fatalf("the child process ended after %d revocations; it said:\n%s", len(returned), strings.Join(c.said, "\n"))
			}
			if i, ok := revokedLine(l, total); ok {
				returned[i] = true
			} else {
				c.said = append(c.said, l)
			}
		case <-timeout:
			t.Fatalf("the child process reported %d revocations within 30s", len(returned))
		}
	}
	c.kill()
	for l := range c.lines {
		if i, ok := revokedLine(l, total); ok {
			returned[i] = true
		}
	}
	t.Logf("%d of %d RevokeSession calls returned before the kill", len(returned), total)
	if len(returned) == total {
		t.Fatal("every revocation returned before the kill: none was in flight, the test proves nothing")
	}
	var survive []session.ID
	for i := range returned {
		survive = append(survive, ids[i])
	}

	srv.Restart()
	farmtest.WaitConnected(t, n2)
	if k := held(survive); k != len(survive) {
		t.Fatalf("n2 holds %d of the %d revoked sessions before the new n1 starts: the test proves nothing", k, len(survive))
	}
	n1 := farmtest.Join(t, "n1", farmName, crashOptions(redisTransport(srv.URL()), secret, file))
	farmtest.WaitConnected(t, n1, n2)
	farmtest.Eventually(t, 20*time.Second, "the revocations that returned reach the store and n2", func() bool {
		return held(survive) == 0 && farmtest.Counter(n1.Node.Metrics(), "tlsfarm_farm_pending_revocations") == 0
	})
}

// revokedLine parses "revoked i", i below total.
func revokedLine(l string, total int) (int, bool) {
	s, ok := strings.CutPrefix(l, "revoked ")
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(s)
	return i, err == nil && i >= 0 && i < total
}

// TestRevGroupCrashChild is n1 of TestConcurrentRevocationsSurviveKill,
// in a process of its own: it issues the sessions (their IDs to the file
// it is given), says "issued", waits for a line (Redis is then down),
// revokes them from revGroupWorkers goroutines, each revGroupEach in
// turn, saying "revoked i" as each RevokeSession of ids[i] returns
// (pending), and waits to be killed; once half have returned, its journal
// writes wait for the kill too.
func TestRevGroupCrashChild(t *testing.T) {
	if os.Getenv(crashEnvFarm) == "" {
		t.Skip("n1 of TestConcurrentRevocationsSurviveKill, run by it")
	}
	m := crashChildJoin(t)
	ids, _ := farmtest.Issue(t, m, revGroupWorkers*revGroupEach)
	for _, id := range ids {
		waitStored(t, m, id)
	}
	writeIDs(t, os.Getenv(crashEnvIDs), ids)
	const total = revGroupWorkers * revGroupEach
	var returned atomic.Int64
	m.Node.RevocationJournalHook(func() {
		time.Sleep(revGroupSlow)
		if returned.Load() >= total/2 {
			select {} // until the kill
		}
	})
	fmt.Println("issued")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	var out sync.Mutex // one line at a time
	var wg sync.WaitGroup
	for w := range revGroupWorkers {
		wg.Go(func() {
			for j := range revGroupEach {
				i := w*revGroupEach + j
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
				st, err := m.Node.RevokeSession(ctx, ids[i])
				cancel()
				if err != nil || st != farm.RevokePending {
					panic(fmt.Sprintf("RevokeSession with Redis down = %v, %v; want pending", st, err))
				}
				returned.Add(1)
				out.Lock()
				fmt.Println("revoked", i)
				out.Unlock()
			}
		})
	}
	wg.Wait()
	fmt.Println("all revoked")
	select {}
}
