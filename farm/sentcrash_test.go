package farm_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// The environment TestSentSurvivesKill and TestRevocationsSurviveKill run
// their crashing node with (crashEnv, crashChildJoin).
const (
	crashEnvFarm   = "TLSFARM_SENTCRASH_FARM"
	crashEnvURL    = "TLSFARM_SENTCRASH_URL"
	crashEnvFile   = "TLSFARM_SENTCRASH_FILE"
	crashEnvSecret = "TLSFARM_SENTCRASH_SECRET"
	crashEnvIDs    = "TLSFARM_SENTCRASH_IDS"
	crashGrace     = 30 * time.Second
)

// crashOptions are the options of the test farms of TestSentSurvivesKill
// and TestRevocationsSurviveKill.
func crashOptions(nt func(testing.TB, string) (transport.Bus, transport.Store), secret farm.Secret, file string) farmtest.Options {
	return farmtest.Options{Mode: farm.Broadcast, WriteThrough: true, Secret: secret, NewTransport: nt,
		TweakCache: func(c *session.Config) { c.ResumeGrace = crashGrace },
		Tweak: func(c *farm.Config) {
			c.RevocationFile = file
			c.OpTimeout = 300 * time.Millisecond
			c.BreakerCooldown = 500 * time.Millisecond
			c.HealInterval = 250 * time.Millisecond
		}}
}

// TestSentSurvivesKill: a node (n1, in a process of its own) issues two
// sessions, which n2 receives; n2 then goes deaf to the bus (cut off, as
// a peer can be). n1 grace-cuts one (a resumption) and retires the other,
// both written to the store and published, and is killed with SIGKILL
// two seconds later: no Close. The store restarts empty; a new n1 starts
// on the same RevocationFile; n2 hears again, finds the store's
// generation changed and writes back what it holds (both sessions whole).
// The new n1 must re-send the retirement and the cut from its sent file
// (and journal): in the end the store holds neither session whole, and
// n2 no longer holds the retired one. Before keepSent woke lifeSaver, the
// sent file was written only by Close and with the lifecycle file: the
// killed node left none, and both sessions came back whole.
func TestSentSurvivesKill(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t) // no persistence: a restart is empty
	farmName := farmtest.FarmName(t)
	secret := farm.NewSecret(1)
	dir := t.TempDir()
	file, idsFile := filepath.Join(dir, "revocations"), filepath.Join(dir, "ids")
	n2 := farmtest.Join(t, "n2", farmName, crashOptions(deafGateTransport(srv.URL()), secret, ""))
	g := n2.Store.(*deafGate)
	farmtest.WaitConnected(t, n2)
	farmtest.WaitRevocationsKnown(t, n2)

	c := startChild(t, "TestSentCrashChild", crashEnv(farmName, srv.URL(), file, secret, idsFile)...)
	c.await("issued")
	ids := readIDs(t, idsFile, 2)
	cut, retired := ids[0], ids[1]
	// whole reports whether n2 holds id past any cut n1 made before
	// made.
	var made time.Time
	whole := func(id session.ID) bool {
		rec, ok := lookup(n2.Cache, id)
		return ok && rec.Expires.After(made.Add(crashGrace+time.Second))
	}
	made = time.Now()
	farmtest.Eventually(t, 10*time.Second, "n2 holds both sessions whole", func() bool {
		return whole(cut) && whole(retired)
	})
	g.deaf.Store(true)
	c.tell("go")
	c.await("made")
	made = time.Now()
	// Within lifeSaveEvery (a second), and some slack for a loaded
	// machine, what n1 made is on disk.
	time.Sleep(2 * time.Second)
	c.kill()
	if !whole(cut) || !whole(retired) {
		t.Fatal("n2 no longer holds both sessions whole: the test proves nothing")
	}
	if _, err := os.Stat(file + ".lifecycle"); err == nil {
		t.Fatal("n1 left a lifecycle file: its writes failed, and the test proves nothing about the sent file")
	}

	g.gated.Store(true) // n2 writes back once the new n1 is up
	srv.Kill()
	srv.Restart()
	n1 := farmtest.Join(t, "n1", farmName, crashOptions(redisTransport(srv.URL()), secret, file))
	farmtest.WaitConnected(t, n1, n2)
	g.deaf.Store(false)
	g.gated.Store(false)
	const wb = "tlsfarm_farm_written_back_total"
	farmtest.Eventually(t, 10*time.Second, "n2 wrote back what it holds", func() bool {
		return farmtest.Counter(n2.Node.Metrics(), wb) > 0
	})
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rc.Close()
	// stored returns how long the store keeps id, or -1 if it does not.
	stored := func(id session.ID) time.Duration {
		ttl, err := rc.PTTL(context.Background(), g.RecordKey("s:"+hex.EncodeToString(id[:]))).Result()
		if err != nil {
			t.Errorf("reading the store: %v", err)
		}
		return ttl
	}
	var what string
	deadline := time.Now().Add(10 * time.Second)
	for {
		what = ""
		if stored(retired) >= 0 {
			what += " the retired session in the store;"
		}
		if stored(cut) > crashGrace+time.Second {
			what += " the cut session whole in the store;"
		}
		if _, ok := lookup(n2.Cache, retired); ok {
			what += " the retired session on n2;"
		}
		if whole(cut) {
			what += " the cut session whole on n2;"
		}
		if what == "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if what != "" {
		t.Fatalf("10s after n2's write-back, still:%s the new n1 did not re-send what the killed one made", what)
	}
}

// TestSentCrashChild is n1 of TestSentSurvivesKill, in a process of its
// own: it issues two sessions (their IDs to the file it is given), says
// "issued", waits for a line, resumes the first (a grace cut) and retires
// the second, waits until the store shows both, says "made", and waits to
// be killed.
func TestSentCrashChild(t *testing.T) {
	if os.Getenv(crashEnvFarm) == "" {
		t.Skip("n1 of TestSentSurvivesKill, run by it")
	}
	m := crashChildJoin(t)
	ids, cs := farmtest.Issue(t, m, 2)
	for _, id := range ids {
		waitStored(t, m, id)
	}
	writeIDs(t, os.Getenv(crashEnvIDs), ids)
	fmt.Println("issued")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	if !tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, cs[0])).DidResume {
		t.Fatal("the first session did not resume")
	}
	if !m.Cache.Retire(ids[1], session.OriginAPI) {
		t.Fatal("the second session was not retired")
	}
	rc := redis.NewClient(&redis.Options{Addr: strings.TrimSuffix(strings.TrimPrefix(os.Getenv(crashEnvURL), "redis://"), "/0")})
	defer rc.Close()
	tr := m.Store.(*redisbus.Transport)
	ttl := func(id session.ID) time.Duration {
		d, _ := rc.PTTL(context.Background(), tr.RecordKey("s:"+hex.EncodeToString(id[:]))).Result()
		return d
	}
	farmtest.Eventually(t, 10*time.Second, "the store shows the cut and the retirement", func() bool {
		return ttl(ids[1]) < 0 && ttl(ids[0]) <= crashGrace+time.Second
	})
	fmt.Println("made")
	select {}
}
