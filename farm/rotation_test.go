package farm_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/internal/logtest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
	"github.com/tlsfarm/tlsfarm/ticket"
)

// agreed waits until every member applies the same key set, of at least
// epoch min, and returns it.
func agreed(t *testing.T, ms []*farmtest.Member, minEpoch uint64) ticket.State {
	t.Helper()
	var st ticket.State
	farmtest.Eventually(t, 15*time.Second, "all nodes on one key set", func() bool {
		st = ms[0].Ring.State()
		if st.Epoch < minEpoch {
			return false
		}
		for _, m := range ms[1:] {
			o := m.Ring.State()
			if o.Epoch != st.Epoch || o.Current != st.Current {
				return false
			}
		}
		return true
	})
	return st
}

// TestStatelessTicketResumesAcrossNodes: with farm-wide ticket keys, a
// ticket issued by one node resumes on every other, for Go's client and for
// openssl, TLS 1.2 and 1.3; no session is replicated.
func TestStatelessTicketResumesAcrossNodes(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	ms, _ := farmtest.Start(t, 3, &farmtest.Options{NewTransport: redisTransport(url), SessionMode: session.Stateless, CloseServer: true,
		Rotation: &farm.RotationConfig{Interval: time.Hour}})
	agreed(t, ms, 1)
	for _, tv := range versions {
		frozen := &tlstest.FrozenCache{}
		tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tv.v, frozen))
		for _, m := range ms[1:] {
			if !tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tv.v, frozen)).DidResume {
				t.Fatalf("%s: %s did not resume a ticket from n1", tv.name, m.Name)
			}
		}
	}
	for _, flag := range []string{"-tls1_2", "-tls1_3"} {
		sess := tlstest.SessionFile(t)
		tlstest.OpenSSL(t, ms[0].Server.Addr, flag, "-servername", "localhost", "-sess_out", sess)
		for _, m := range ms[1:] {
			out := tlstest.OpenSSL(t, m.Server.Addr, flag, "-servername", "localhost", "-sess_in", sess)
			if !strings.Contains(out, "Reused, ") {
				t.Fatalf("openssl %s: %s did not reuse n1's session:\n%s", flag, m.Name, out)
			}
		}
	}
	for _, m := range ms {
		if st := m.Node.Metrics(); farmtest.Counter(st, "tlsfarm_farm_published_total", "kind", "session") != 0 {
			t.Fatalf("%s published %d sessions in stateless mode", m.Name, farmtest.Counter(st, "tlsfarm_farm_published_total", "kind", "session"))
		}
	}
}

// keyLog collects log output and checks it for key material.
type keyLog struct{ logtest.Buffer }

// leaks reports whether any key of the states appears in the log, as hex
// (either case) or base64, whole or as its first 8 bytes.
func (k *keyLog) leaks(states []ticket.State) string {
	text := k.String()
	for _, st := range states {
		for _, key := range st.Keys() {
			b := key[:]
			for _, form := range []string{
				hex.EncodeToString(b[:8]), strings.ToUpper(hex.EncodeToString(b[:8])),
				base64.StdEncoding.EncodeToString(b)[:10], base64.RawURLEncoding.EncodeToString(b)[:10],
			} {
				if strings.Contains(text, form) {
					return form
				}
			}
		}
	}
	return ""
}

// TestRotationNeverBreaksResumption rotates every 3 s under continuous
// load: no resumption fails at any boundary, and a frozen ticket resumes
// through Keep rotations and is refused after Keep+1. Logs never show a key.
// 3 s is still twelve of the nodes' polls (Interval/12 by default), each
// node learns a key a whole Interval before any node encrypts with it, and
// each check of the frozen ticket (one handshake after the farm agreed on
// the epoch) has the rest of the Interval before the next rotation.
func TestRotationNeverBreaksResumption(t *testing.T) {
	t.Parallel()
	const keep = 2
	url := redistest.URL(t)
	logs := &keyLog{}
	ms, _ := farmtest.Start(t, 3, &farmtest.Options{NewTransport: redisTransport(url), SessionMode: session.Stateless,
		Logger:   slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Rotation: &farm.RotationConfig{Interval: 3 * time.Second, Keep: keep}})
	first := agreed(t, ms, 1)
	states := []ticket.State{first}

	// Continuous, bounded load: a client that takes each new ticket and
	// picks a random node, 50 connections a second.
	stop := make(chan struct{})
	var failures, resumed int
	var loadErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ccfg := farmtest.Client(tls.VersionTLS13, &tlstest.SharedCache{})
		tlstest.MustDial(t, ms[0].Server.Addr, ccfg)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			cs, err := tlstest.Dial(ms[rand.N(len(ms))].Server.Addr, ccfg)
			switch {
			case err != nil:
				loadErr = err
				failures++
			case !cs.DidResume:
				failures++
			default:
				resumed++
			}
		}
	}()

	frozen := &tlstest.FrozenCache{}
	tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, frozen))
	for r := 1; r <= keep+1; r++ {
		st := agreed(t, ms, first.Epoch+uint64(r))
		states = append(states, st)
		m := ms[rand.N(len(ms))]
		got := tlstest.MustDial(t, m.Server.Addr, farmtest.Client(tls.VersionTLS13, frozen)).DidResume
		t.Logf("rotation %d (epoch %d): frozen ticket resumes on %s: %t", r, st.Epoch, m.Name, got)
		if want := r <= keep; got != want {
			t.Fatalf("after %d rotations the frozen ticket resumed = %t, want %t", r, got, want)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("continuous load: %d resumed, %d not (last error %v)", resumed, failures, loadErr)
	if failures > 0 {
		t.Fatalf("%d connections failed to resume across rotations", failures)
	}
	rotations := uint64(0)
	for _, m := range ms {
		rotations += farmtest.Counter(m.Rotator.Metrics(), "tlsfarm_ticket_rotations_total")
	}
	if rotations != keep+1 {
		t.Fatalf("%d rotations performed in the farm, want %d", rotations, keep+1)
	}
	if leak := logs.leaks(states); leak != "" {
		t.Fatalf("key material %q appears in the logs", leak)
	}
	if !strings.Contains(logs.String(), "ticket keys rotated") {
		t.Fatal("the logs were not captured")
	}
}

// TestLeaseHolderDies crashes the node holding the rotation lease: another
// takes the lease within LeaseTTL plus one poll (the first step a live node
// begins once the crashed holder's lease has expired takes it, or another
// node's step did) and rotates when due, and no epoch ever has two
// different key sets. The takeover is counted in steps, not time: a step
// that runs late on a loaded machine (a 2 s delay planted before each
// step) takes the lease late, but still takes it.
func TestLeaseHolderDies(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	const leaseTTL = time.Second
	ms, _ := farmtest.Start(t, 3, &farmtest.Options{NewTransport: redisTransport(url), SessionMode: session.Stateless,
		Rotation: &farm.RotationConfig{Interval: 5 * time.Second, LeaseTTL: leaseTTL}})
	first := agreed(t, ms, 1)

	// Watch every node's key set: one epoch, one key.
	seen := map[uint64]ticket.Key{}
	var conflict string
	var mu sync.Mutex
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			for _, m := range ms {
				st := m.Ring.State()
				mu.Lock()
				if k, ok := seen[st.Epoch]; ok && k != st.Current {
					conflict = fmt.Sprintf("two key sets at epoch %d: %v and %v", st.Epoch, k, st.Current)
				}
				seen[st.Epoch] = st.Current
				mu.Unlock()
			}
		}
	}()
	defer close(stop)

	var holder *farmtest.Member
	farmtest.Eventually(t, 5*time.Second, "a lease holder", func() bool {
		for _, m := range ms {
			if farmtest.Counter(m.Rotator.Metrics(), "tlsfarm_ticket_rotation_lease_holder") == 1 {
				holder = m
				return true
			}
		}
		return false
	})
	var live []*farmtest.Member
	for _, m := range ms {
		if m != holder {
			live = append(live, m)
		}
	}
	acquired := func() (n uint64) {
		for _, m := range live {
			n += farmtest.Counter(m.Rotator.Metrics(), "tlsfarm_ticket_rotation_leases_acquired_total")
		}
		return n
	}
	before := acquired()
	// taken: a live node took the lease since the crash, or holds it.
	taken := func() bool {
		if acquired() > before {
			return true
		}
		for _, m := range live {
			if farmtest.Counter(m.Rotator.Metrics(), "tlsfarm_ticket_rotation_lease_holder") == 1 {
				return true
			}
		}
		return false
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	raw := redis.NewClient(opt)
	defer raw.Close()
	leaseKey := redisOf(ms[0]).Key("ticket-keys-lease")
	holder.Crash()
	crashed := time.Now()
	// Once the crashed holder's lease has left the store (expired, or
	// taken by then), every step a live node begins must find the lease
	// held by a live node when it ends.
	farmtest.Eventually(t, 30*time.Second, "the crashed holder's lease to expire", func() bool {
		v, err := raw.Get(context.Background(), leaseKey).Result()
		if err != nil && err != redis.Nil {
			t.Fatal(err)
		}
		return !strings.HasPrefix(v, holder.Name+"/")
	})
	begun := make([]uint64, len(live))
	for i, m := range live {
		begun[i], _ = m.Rotator.Steps()
	}
	// settle waits until every step of the live nodes begun so far has
	// ended: a node's lease taken in a step in flight is counted then.
	settle := func() {
		now := make([]uint64, len(live))
		for i, m := range live {
			now[i], _ = m.Rotator.Steps()
		}
		farmtest.Eventually(t, 30*time.Second, "the live nodes' steps in flight end", func() bool {
			for i, m := range live {
				if _, ended := m.Rotator.Steps(); ended < now[i] {
					return false
				}
			}
			return true
		})
	}
	farmtest.Eventually(t, 30*time.Second, "another lease holder", func() bool {
		if taken() {
			return true
		}
		for i, m := range live {
			if _, ended := m.Rotator.Steps(); ended > begun[i] {
				// A step begun after the lease expired has
				// ended: it took the lease, or another node did.
				settle()
				if taken() {
					return true
				}
				t.Fatalf("%s ended a step begun after the crashed holder's lease expired, and no live node took the lease: %+v",
					m.Name, m.Rotator.Metrics())
			}
		}
		return false
	})
	t.Logf("%s crashed holding the lease; another node took it after %v", holder.Name, time.Since(crashed))
	agreed(t, live, first.Epoch+1)
	rotated := uint64(0)
	for _, m := range live {
		rotated += farmtest.Counter(m.Rotator.Metrics(), "tlsfarm_ticket_rotations_total")
	}
	if rotated == 0 {
		t.Fatalf("no live node rotated: %+v, %+v", live[0].Rotator.Metrics(), live[1].Rotator.Metrics())
	}
	mu.Lock()
	defer mu.Unlock()
	if conflict != "" {
		t.Fatal(conflict)
	}
}

// TestKeyAnnouncementsReplayedAndForged replays an older announcement, which
// every node ignores, and publishes a forged one, which every node rejects;
// the node that sent the announcement drops both as its own before opening
// them. Tallies are off: the bus then carries only key announcements, so
// every count below is exact.
func TestKeyAnnouncementsReplayedAndForged(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	ms, _ := farmtest.Start(t, 3, &farmtest.Options{NewTransport: redisTransport(url), SessionMode: session.Stateless,
		Rotation: &farm.RotationConfig{Interval: 3 * time.Second},
		Tweak:    func(c *farm.Config) { c.TallyInterval = -1 }})
	opt, _ := redis.ParseURL(url)
	raw := redis.NewClient(opt)
	defer raw.Close()
	ctx := context.Background()
	ps := raw.Subscribe(ctx, redisOf(ms[0]).Channel())
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	first := agreed(t, ms, 1)
	// Capture the announcement of a later rotation (the first key
	// announcement heard), then wait for one more.
	var old []byte
	for old == nil {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		msg, err := ps.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if m := []byte(msg.Payload); len(m) > farm.EnvSenderAt+8 && m[farm.EnvTypeAt] == farm.EnvTypeKeys {
			old = m
		}
	}
	sender := binary.BigEndian.Uint64(old[farm.EnvSenderAt:])
	now := agreed(t, ms, first.Epoch+2)

	own := func(m *farmtest.Member) uint64 {
		return farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_received_total", "kind", "own")
	}
	ignored := func(m *farmtest.Member) uint64 {
		return farmtest.Counter(m.Rotator.Metrics(), "tlsfarm_ticket_key_sets_ignored_total")
	}
	rejected := func(m *farmtest.Member) uint64 {
		return farmtest.Counter(m.Node.Metrics(), "tlsfarm_farm_rejected_total", "reason", "seal")
	}
	type counts struct{ own, ignored, rejected uint64 }
	before := make([]counts, len(ms))
	for i, m := range ms {
		before[i] = counts{own(m), ignored(m), rejected(m)}
	}
	raw.Publish(ctx, redisOf(ms[0]).Channel(), old)
	forged := bytes.Clone(old)
	forged[len(forged)-1] ^= 1 // in the authentication tag
	raw.Publish(ctx, redisOf(ms[0]).Channel(), forged)
	senders := 0
	for i, m := range ms {
		b := before[i]
		if m.Node.Instance() == sender {
			senders++
			// A rotation in the meantime adds its own announcement.
			farmtest.Eventually(t, 5*time.Second, m.Name+" (the sender) dropped the replay and the forgery as its own", func() bool {
				return own(m) >= b.own+2
			})
			if ignored(m) != b.ignored || rejected(m) != b.rejected {
				t.Errorf("%s (the sender) opened its own messages: ignored %d→%d, rejected %d→%d", m.Name, b.ignored, ignored(m), b.rejected, rejected(m))
			}
		} else {
			farmtest.Eventually(t, 5*time.Second, m.Name+" ignored the replay and rejected the forgery", func() bool {
				return ignored(m) == b.ignored+1 && rejected(m) == b.rejected+1
			})
		}
		if st := m.Ring.State(); st.Epoch < now.Epoch {
			t.Fatalf("%s rolled back to epoch %d", m.Name, st.Epoch)
		}
	}
	if senders != 1 {
		t.Fatalf("%d nodes sent the captured announcement, want 1", senders)
	}
	time.Sleep(100 * time.Millisecond)
	for i, m := range ms {
		if m.Node.Instance() != sender && (ignored(m) != before[i].ignored+1 || rejected(m) != before[i].rejected+1) {
			t.Errorf("%s: ignored %d more, rejected %d more; want 1 and 1", m.Name, ignored(m)-before[i].ignored, rejected(m)-before[i].rejected)
		}
	}
}

// TestRotationSurvivesStoreOutage keeps Redis down for longer than one
// interval: nodes keep serving with their keys, and rotation resumes after.
func TestRotationSurvivesStoreOutage(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	const interval = 2 * time.Second
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{NewTransport: redisTransport(srv.URL()), SessionMode: session.Stateless,
		Rotation: &farm.RotationConfig{Interval: interval}})
	first := agreed(t, ms, 1)
	lru := farmtest.Client(tls.VersionTLS13, &tlstest.SharedCache{})
	tlstest.MustDial(t, ms[0].Server.Addr, lru)

	srv.Kill()
	downUntil := time.Now().Add(interval + time.Second)
	for time.Now().Before(downUntil) {
		if !tlstest.MustDial(t, ms[rand.N(2)].Server.Addr, lru).DidResume {
			t.Fatal("resumption failed while the store was down")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st := ms[0].Ring.State(); st.Epoch != first.Epoch {
		t.Fatalf("epoch moved to %d with the store down", st.Epoch)
	}
	srv.Restart()
	// The store came back empty (no persistence): the lease holder seeds it
	// again from its keys, so tickets stay valid, and rotation goes on.
	agreed(t, ms, first.Epoch+2)
	if !tlstest.MustDial(t, ms[1].Server.Addr, lru).DidResume {
		t.Fatal("resumption failed after the store came back")
	}
}

// TestStoredKeySetReplayDoesNotRollBack: someone who can write the store
// but lacks the farm secret puts back a key set captured epochs ago. The
// nodes, whose sets are newer, must not bring its keys back: not to
// encrypt, not even to decrypt (they rotated out, and were wiped).
func TestStoredKeySetReplayDoesNotRollBack(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	ms, _ := farmtest.Start(t, 2, &farmtest.Options{NewTransport: redisTransport(url), SessionMode: session.Stateless,
		Rotation: &farm.RotationConfig{Interval: time.Second, Keep: 1}})
	opt, _ := redis.ParseURL(url)
	raw := redis.NewClient(opt)
	defer raw.Close()
	ctx := context.Background()
	key := redisOf(ms[0]).Key("ticket-keys")

	first := agreed(t, ms, 1)
	old, err := raw.Get(ctx, key).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	// The stored set may already be one rotation past first: wait until
	// every key that old may hold has left the farm's set.
	now := agreed(t, ms, first.Epoch+4)
	gone := map[ticket.Key]bool{first.Current: true, first.Next: true}
	for _, k := range first.Previous {
		gone[k] = true
	}
	for _, k := range now.Keys() {
		delete(gone, k)
	}
	if len(gone) == 0 {
		t.Fatal("no key of the first set has left the farm's set")
	}
	if err := raw.Set(ctx, key, old, 0).Err(); err != nil {
		t.Fatal(err)
	}
	neverTakesGone(t, ms, gone, 4*time.Second)
	agreed(t, ms, now.Epoch+1)
}
