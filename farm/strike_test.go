package farm_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// TestStrikeOnceAcrossFarm: many nodes strike the same identities at once;
// each identity is fresh for exactly one call in the farm, and again once
// its record has expired.
func TestStrikeOnceAcrossFarm(t *testing.T) {
	t.Parallel()
	ms, _ := farmtest.Start(t, 3, &farmtest.Options{NewTransport: redisTransport(redistest.URL(t)),
		Tweak: func(c *farm.Config) {
			// Every strike must get its answer: no deadline or breaker
			// on a loaded machine.
			c.LookupTimeout, c.BreakerThreshold = 5*time.Second, 1000
		}})
	waitStrikesAnswered(t, ms[0].Node)
	const ids, tries = 10, 3
	var fresh [ids]atomic.Int32
	var wg sync.WaitGroup
	for i := range ids {
		for k := range tries * len(ms) {
			wg.Go(func() {
				ok, err := ms[k%len(ms)].Node.Strike(context.Background(), []byte(fmt.Sprintf("ticket-%d", i)), issuedLater, time.Minute)
				if err != nil {
					t.Error(err)
				}
				if ok {
					fresh[i].Add(1)
				}
			})
		}
	}
	wg.Wait()
	for i := range ids {
		if n := fresh[i].Load(); n != 1 {
			t.Errorf("identity %d was fresh %d times, want 1", i, n)
		}
	}

	// A TTL of 1 s, not 50 ms: at three farm tests at a time under -race
	// the second strike came more than 50 ms after the first (a CI run:
	// "second strike within the TTL was fresh").
	const ttl = time.Second
	start := time.Now()
	ok, err := ms[0].Node.Strike(context.Background(), []byte("short-lived"), issuedLater, ttl)
	if !ok || err != nil {
		t.Fatalf("first strike: %v, %v", ok, err)
	}
	ok, _ = ms[1].Node.Strike(context.Background(), []byte("short-lived"), issuedLater, ttl)
	if took := time.Since(start); ok && took < ttl {
		t.Fatalf("second strike, %v after the first, within the TTL was fresh", took)
	} else if ok {
		t.Skipf("the two strikes took %v, past the TTL: the machine is too slow for this check", took)
	}
	farmtest.Eventually(t, 5*time.Second, "the strike record expires", func() bool {
		ok, _ := ms[2].Node.Strike(context.Background(), []byte("short-lived"), issuedLater, ttl)
		return ok
	})
}

// TestStrikeKeyHidesIdentity: what the store holds names neither the
// identity nor depends on the farm secret.
func TestStrikeKeyHidesIdentity(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	name := redistest.Farm(t)
	var nodes []*farm.Node
	for i, s := range []farm.Secret{farm.NewSecret(1), farm.NewSecret(2)} { // a farm changing its secret
		m := farmtest.Join(t, fmt.Sprint("n", i), name, farmtest.Options{NewTransport: redisTransport(url), Secret: s,
			Tweak: func(c *farm.Config) { c.LookupTimeout = 5 * time.Second }}) // an answer, not a deadline, is under test
		nodes = append(nodes, m.Node)
	}
	waitStrikesAnswered(t, nodes[0])
	identity := []byte("a-very-recognisable-ticket")
	if ok, err := nodes[0].Strike(context.Background(), identity, issuedLater, time.Minute); !ok || err != nil {
		t.Fatalf("strike: %v, %v", ok, err)
	}
	if ok, err := nodes[1].Strike(context.Background(), identity, issuedLater, time.Minute); ok || err != nil {
		t.Fatalf("a node with the farm's other secret: fresh %v, %v; want a replay", ok, err)
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rc := redis.NewClient(opt)
	defer rc.Close()
	keys, err := redistest.Keys(context.Background(), rc, "*"+name+"*")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, k := range keys {
		if strings.Contains(k, "{once:") {
			found = true
		}
		if strings.Contains(k, string(identity)) || strings.Contains(k, fmt.Sprintf("%x", identity)) {
			t.Errorf("store key %q shows the identity", k)
		}
	}
	if !found {
		t.Errorf("no strike record among %q", keys)
	}
}

func TestStrikeWithoutStoreRefuses(t *testing.T) {
	ms, _ := farmtest.Start(t, 1, &farmtest.Options{NewTransport: func(t testing.TB, farmName string) (transport.Bus, transport.Store) {
		bus, _ := redisTransport(redistest.URL(t))(t, farmName)
		return bus, nil
	}})
	ok, err := ms[0].Node.Strike(context.Background(), []byte("x"), issuedLater, time.Minute)
	if ok || !errors.Is(err, farm.ErrStoreUnavailable) {
		t.Fatalf("no store: fresh %v, err %v; want ErrStoreUnavailable", ok, err)
	}
}

func TestDeriveQUICKeys(t *testing.T) {
	s1, s2 := farm.NewSecret(1), farm.NewSecret(2)
	a, err := farm.DeriveQUICKeys("web", []farm.Secret{s1, s2})
	if err != nil {
		t.Fatal(err)
	}
	same, _ := farm.DeriveQUICKeys("web", []farm.Secret{s1})
	otherFarm, _ := farm.DeriveQUICKeys("api", []farm.Secret{s1})
	otherSecret, _ := farm.DeriveQUICKeys("web", []farm.Secret{s2, s1})
	switch {
	case a != same:
		t.Error("the same farm and current secret derive different keys")
	case a.TokenKey == a.StatelessResetKey:
		t.Error("the token and reset keys are the same")
	case a.TokenKey == otherFarm.TokenKey || a.StatelessResetKey == otherFarm.StatelessResetKey:
		t.Error("another farm name derives the same keys")
	case a.TokenKey == otherSecret.TokenKey:
		t.Error("another current secret derives the same keys")
	}
	if s := fmt.Sprintf("%v %+v %#v", a, a, a); strings.Contains(s, fmt.Sprintf("%x", a.TokenKey[:4])) || !strings.Contains(s, "redacted") {
		t.Errorf("keys printed: %s", s)
	}
	if _, err := farm.DeriveQUICKeys("web", nil); err == nil {
		t.Error("no secret: no error")
	}
}

// waitStrikesAnswered waits until node's strikes are answered: until the
// farm's strike register is primed (primeStrikes, a goroutine of its own
// that a loaded machine may run late), a new farm's register is not known
// to be whole, and every strike is refused (ErrStoreLost). It strikes
// identities of its own, issued later than any ticket under test.
func waitStrikesAnswered(t *testing.T, node *farm.Node) {
	t.Helper()
	i := 0
	farmtest.Eventually(t, 10*time.Second, "the strike register primed (a strike answered)", func() bool {
		i++
		_, err := node.Strike(context.Background(), fmt.Appendf(nil, "priming-probe-%d", i), issuedLater, time.Minute)
		return err == nil
	})
}
