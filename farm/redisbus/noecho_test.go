package redisbus_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// matches returns how many of patterns match name. path.Match reads the
// patterns as Redis does: no name here has a slash, the only byte on
// which the two differ.
func matches(t *testing.T, patterns []string, name string) int {
	t.Helper()
	n := 0
	for _, p := range patterns {
		ok, err := path.Match(p, name)
		if err != nil {
			t.Fatalf("pattern %q: %v", p, err)
		}
		if ok {
			n++
		}
	}
	return n
}

// TestExclusionPatterns: the patterns of an ID match every other ID of its
// length exactly once and its own never, nor a channel of another length
// (the marker) or of another farm, however its name is spelled.
func TestExclusionPatterns(t *testing.T) {
	const prefix = "tlsfarm:{f}:bus:"
	self := "0123456789abcdef"
	ps := redisbus.ExclusionPatterns(prefix, self)
	if len(ps) != len(self) {
		t.Fatalf("%d patterns, want %d", len(ps), len(self))
	}
	for _, tc := range []struct {
		id   string
		want int
	}{
		{self, 0},
		{"1123456789abcdef", 1}, // differs first
		{"0123456789abcdee", 1}, // differs last
		{"0123456f89abcdef", 1}, // differs in the middle
		{"fedcba9876543210", 1}, // differs everywhere
		{"0123456789abcdef0", 0},
		{"0123456789abcde", 0},
		{"v2", 0}, // the marker
		{"", 0},   // the shared channel's prefix
	} {
		if got := matches(t, ps, prefix+tc.id); got != tc.want {
			t.Errorf("%q matches %d patterns, want %d", tc.id, got, tc.want)
		}
	}
	if got := matches(t, ps, strings.TrimSuffix(prefix, ":")); got != 0 {
		t.Errorf("the shared channel matches %d patterns", got)
	}
	for range 2000 {
		var b [redisbus.IDLen / 2]byte
		rand.Read(b[:])
		id := hex.EncodeToString(b[:])
		want := 1
		if id == self {
			want = 0
		}
		if got := matches(t, ps, prefix+id); got != want {
			t.Fatalf("%q matches %d patterns, want %d", id, got, want)
		}
	}
	for _, farms := range [][2]string{{"a*", "ab"}, {"a?", "ab"}, {"a[bc]", "ab"}, {`a\`, "a"}, {"a]", "a"}, {"a", "a:bus:x"}} {
		ps := redisbus.ExclusionPatterns("tlsfarm:{"+farms[0]+"}:bus:", self)
		if n := matches(t, ps, "tlsfarm:{"+farms[1]+"}:bus:fedcba9876543210"); n != 0 {
			t.Errorf("farm %q's patterns match farm %q's channel", farms[0], farms[1])
		}
		if n := matches(t, ps, "tlsfarm:{"+farms[0]+"}:bus:fedcba9876543210"); n != 1 {
			t.Errorf("farm %q's patterns match its peer's channel %d times, want 1", farms[0], n)
		}
	}
}

// A listener is a subscription that records what it received.
type listener struct {
	tr   *redisbus.Transport
	ups  atomic.Int32 // times Subscribe reported up
	mu   sync.Mutex
	msgs []string
	stop func()
}

// listen subscribes tr until the test ends or stop is called.
func listen(t *testing.T, tr *redisbus.Transport) *listener {
	t.Helper()
	l := &listener{tr: tr}
	l.stop = farmtest.SubscribedUntil(t, tr, func(m []byte) {
		l.mu.Lock()
		l.msgs = append(l.msgs, string(m))
		l.mu.Unlock()
	}, func() { l.ups.Add(1) })
	return l
}

func (l *listener) got() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.msgs)
}

// count returns how many times l received m.
func (l *listener) count(m string) int {
	n := 0
	for _, g := range l.got() {
		if g == m {
			n++
		}
	}
	return n
}

// waitShared waits until every transport publishes on the shared channel,
// or on its own, as shared says.
func waitShared(t *testing.T, shared bool, trs ...*redisbus.Transport) time.Duration {
	t.Helper()
	start := time.Now()
	farmtest.Eventually(t, 5*time.Second, fmt.Sprintf("every transport publishing shared=%v", shared), func() bool {
		for _, tr := range trs {
			if tr.Shared() != shared {
				return false
			}
		}
		return true
	})
	return time.Since(start)
}

// exchange has each sender publish one message tagged with tag and checks
// that each listener receives every other sender's exactly once. With
// noEcho, no listener may receive its own (senders[i] is listeners[i]'s
// transport, for i < len(listeners)). It waits a while for strays.
func exchange(t *testing.T, tag string, noEcho bool, ls ...*listener) {
	t.Helper()
	ctx := context.Background()
	for i, l := range ls {
		if err := l.tr.Publish(ctx, []byte(fmt.Sprintf("%s from %d", tag, i))); err != nil {
			t.Fatal(err)
		}
	}
	for j, l := range ls {
		farmtest.Eventually(t, 5*time.Second, fmt.Sprintf("%s: listener %d has every peer's message", tag, j), func() bool {
			for i := range ls {
				if i != j && l.count(fmt.Sprintf("%s from %d", tag, i)) == 0 {
					return false
				}
			}
			return true
		})
	}
	time.Sleep(200 * time.Millisecond) // for duplicates and echoes
	for j, l := range ls {
		for i := range ls {
			n := l.count(fmt.Sprintf("%s from %d", tag, i))
			switch {
			case i != j && n != 1:
				t.Errorf("%s: listener %d got %d's message %d times, want once", tag, j, i, n)
			case i == j && noEcho && n != 0:
				t.Errorf("%s: listener %d got its own message back %d times", tag, j, n)
			case i == j && n > 1:
				t.Errorf("%s: listener %d got its own message %d times", tag, j, n)
			}
		}
	}
}

// TestNoEcho: in a farm of three nodes of this version, each receives every
// peer's message exactly once and never its own.
func TestNoEcho(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	name := redistest.Farm(t)
	var ls []*listener
	for range 3 {
		ls = append(ls, listen(t, open(t, url, name)))
	}
	waitShared(t, false, ls[0].tr, ls[1].tr, ls[2].tr)
	exchange(t, "m", true, ls...)
	// Batches, PutAndPublish's pipeline included, go the same way.
	if err := ls[0].tr.Publish(context.Background(), []byte("b1"), []byte("b2")); err != nil {
		t.Fatal(err)
	}
	if err := ls[1].tr.PutAndPublish(context.Background(), nil, nil, [][]byte{[]byte("p1")}); err != nil {
		t.Fatal(err)
	}
	farmtest.Eventually(t, 5*time.Second, "the batches", func() bool {
		return ls[1].count("b2") == 1 && ls[2].count("b2") == 1 && ls[0].count("p1") == 1 && ls[2].count("p1") == 1
	})
	time.Sleep(200 * time.Millisecond)
	if ls[0].count("b1")+ls[0].count("b2")+ls[1].count("p1") != 0 {
		t.Error("a batch came back to its sender")
	}
}

// TestMixedVersions: a node of an old version (Echo: the shared channel
// only) joins a farm of new ones and leaves it; new nodes join while it is
// there. Every message reaches every other node, once, throughout; once
// the old node is gone, the new ones stop hearing their own.
func TestMixedVersions(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	name := redistest.Farm(t)
	a, b := listen(t, open(t, url, name)), listen(t, open(t, url, name))
	waitShared(t, false, a.tr, b.tr)
	exchange(t, "before", true, a, b)

	oldTr := open(t, url, name)
	oldTr.Echo = true
	old := listen(t, oldTr)
	// The new nodes find a silent old node at their next count.
	took := waitShared(t, true, a.tr, b.tr)
	t.Logf("the new nodes found the old one within %v", took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("the new nodes took %v to find the old one, want about VersionCheckInterval (1s)", took)
	}
	// The old node is heard at once.
	if err := old.tr.Publish(context.Background(), []byte("joined")); err != nil {
		t.Fatal(err)
	}
	farmtest.Eventually(t, 5*time.Second, "the old node's first message", func() bool { return a.count("joined") == 1 && b.count("joined") == 1 })
	exchange(t, "mixed", false, old, a, b)

	// A new node that joins now publishes where the old one hears it,
	// before it has counted and after.
	c := listen(t, open(t, url, name))
	exchange(t, "c joined", false, c, old, a, b)
	waitShared(t, true, c.tr)
	exchange(t, "c counted", false, c, old, a, b)

	old.stop()
	// The new nodes hear each other while some still publish on the
	// shared channel, and stop hearing their own once all have counted.
	exchange(t, "left", false, a, b, c)
	took = waitShared(t, false, a.tr, b.tr, c.tr)
	t.Logf("the new nodes found the old one gone within %v", took.Round(time.Millisecond))
	exchange(t, "after", true, a, b, c)
	if n := old.count("left from 0") + old.count("after from 0"); n != 0 {
		t.Errorf("the old node received %d messages after it left", n)
	}
}

// TestFarmsApart: farms whose names are prefixes of each other or hold glob
// characters do not hear each other.
func TestFarmsApart(t *testing.T) {
	url := redistest.URL(t)
	base := redistest.Farm(t)
	names := []string{base, base + "x", base + "*", base + "?", base + "[x]", base + `\`, base + "]", base + ":bus", base + "-"}
	var pairs [][2]*listener
	var all []*redisbus.Transport
	for _, n := range names {
		p := [2]*listener{listen(t, open(t, url, n)), listen(t, open(t, url, n))}
		pairs = append(pairs, p)
		all = append(all, p[0].tr, p[1].tr)
	}
	waitShared(t, false, all...)
	for i, p := range pairs {
		if err := p[0].tr.Publish(context.Background(), []byte(names[i])); err != nil {
			t.Fatal(err)
		}
	}
	for i, p := range pairs {
		farmtest.Eventually(t, 5*time.Second, "farm "+names[i]+"'s message", func() bool { return p[1].count(names[i]) == 1 })
	}
	time.Sleep(200 * time.Millisecond)
	for i, p := range pairs {
		if got := p[1].got(); len(got) != 1 {
			t.Errorf("farm %q received %q, want only its own farm's message", names[i], got)
		}
		if got := p[0].got(); len(got) != 0 {
			t.Errorf("farm %q's sender received %q", names[i], got)
		}
	}
}

// TestOldNodeHeardFirst: a message on the shared channel has the new nodes
// count at once, not at their next interval.
func TestOldNodeHeardFirst(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	name := redistest.Farm(t)
	var news []*redisbus.Transport
	var ls []*listener
	for range 2 {
		tr := open(t, url, name)
		tr.VersionCheckInterval = time.Hour // counts only when subscribed and when poked
		ls = append(ls, listen(t, tr))
		news = append(news, tr)
	}
	waitShared(t, false, news...)
	oldTr := open(t, url, name)
	oldTr.Echo = true
	old := listen(t, oldTr)
	if err := old.tr.Publish(context.Background(), []byte("hello")); err != nil {
		t.Fatal(err)
	}
	took := waitShared(t, true, news...)
	t.Logf("the new nodes found the old one %v after its first message", took.Round(time.Millisecond))
	exchange(t, "mixed", false, old, ls[0], ls[1])
}

// TestSubscribeEndsWhileCountHangs: a subscriber count in flight on a hung
// server (SIGSTOP) does not hold up the end of Subscribe: go-redis would
// have the count wait out its whole deadline, VersionCheckInterval, and
// the node's Close with it.
func TestSubscribeEndsWhileCountHangs(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	t.Cleanup(srv.Kill) // a hung server: before the transport closes
	tr := open(t, srv.URL(), redistest.Farm(t))
	const every = 2 * time.Second
	tr.VersionCheckInterval = every
	start := time.Now()
	l := listen(t, tr)
	waitShared(t, false, tr)
	time.Sleep(every / 4)
	srv.Pause()
	// The count at the next tick now waits on the hung server, for up to
	// every; end the subscription in the middle of that wait.
	time.Sleep(time.Until(start.Add(every + every/4)))
	begin := time.Now()
	l.stop()
	took := time.Since(begin)
	t.Logf("Subscribe ended %v after its context", took.Round(time.Millisecond))
	if took > every/4 {
		t.Errorf("Subscribe ended %v after its context, with a count waiting on a hung server; want at most %v", took, every/4)
	}
}

// TestResubscribe: after the server restarts, go-redis resubscribes the
// channels and the patterns, the subscription reports up again once all
// are back, and the nodes count again and hear each other, not themselves.
func TestResubscribe(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	name := redistest.Farm(t)
	a, b := listen(t, open(t, srv.URL(), name)), listen(t, open(t, srv.URL(), name))
	waitShared(t, false, a.tr, b.tr)
	exchange(t, "before", true, a, b)
	srv.Kill()
	srv.Restart()
	farmtest.Eventually(t, 10*time.Second, "both subscriptions up again", func() bool { return a.ups.Load() >= 2 && b.ups.Load() >= 2 })
	waitShared(t, false, a.tr, b.tr)
	exchange(t, "after", true, a, b)
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rc.Close()
	ctx := context.Background()
	// NUMPAT counts distinct patterns: nodes whose IDs share a prefix
	// subscribe some of the same patterns (both IDs starting with the same
	// digit, one run in 16, share the first), and those count once.
	distinct := map[string]bool{}
	for _, p := range append(a.tr.Patterns(), b.tr.Patterns()...) {
		distinct[p] = true
	}
	if n, err := rc.PubSubNumPat(ctx).Result(); err != nil || n != int64(len(distinct)) {
		t.Errorf("PUBSUB NUMPAT = %d, %v; want %d (the distinct patterns of IDs %s and %s)", n, err, len(distinct), a.tr.ID(), b.tr.ID())
	}
	ch := a.tr.Channel()
	if n, err := rc.PubSubNumSub(ctx, ch, ch+":v2").Result(); err != nil || n[ch] != 2 || n[ch+":v2"] != 2 {
		t.Errorf("PUBSUB NUMSUB = %v, %v; want 2 on each", n, err)
	}
}

// TestPatternsRefused: a node whose ACL grants the farm's channels but not
// the patterns (PSUBSCRIBE must name an allowed pattern exactly) keeps to
// the shared channel; the others count it as an old node, and nothing is
// lost.
func TestPatternsRefused(t *testing.T) {
	srv := redistest.Start(t)
	name := redistest.Farm(t)
	rc := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rc.Close()
	if err := rc.Do(context.Background(), "ACL", "SETUSER", "farm", "on", ">pw", "~*", "&tlsfarm:{"+name+"}:*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	limited := listen(t, open(t, "redis://farm:pw@"+srv.Addr()+"/0", name))
	a, b := listen(t, open(t, srv.URL(), name)), listen(t, open(t, srv.URL(), name))
	waitShared(t, true, limited.tr, a.tr, b.tr)
	exchange(t, "m", false, limited, a, b)
}

// TestSubscribeEndsWhileConnectionHangs ends a subscription while its
// connection is being made to a hung server (a frozen proxy: the dial
// succeeds, HELLO is never answered). Subscribe used to return only when
// the read timed out (3 s); now it returns at once, with or without the
// per-sender subscriptions.
func TestSubscribeEndsWhileConnectionHangs(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	hung := nettest.NewProxy(t, strings.TrimSuffix(strings.TrimPrefix(url, "redis://"), "/0"))
	hung.Freeze()
	for _, echo := range []bool{false, true} {
		t.Run(map[bool]string{false: "per-sender", true: "echo"}[echo], func(t *testing.T) {
			tr := open(t, "redis://"+hung.Addr+"/0", redistest.Farm(t))
			tr.Echo = echo
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- tr.Subscribe(ctx, func([]byte) {}, func(bool, error) {}) }()
			time.Sleep(300 * time.Millisecond) // dialled, waiting for HELLO's answer
			begin := time.Now()
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Subscribe returned %v, want context.Canceled", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Subscribe did not return within 10 s of its context's end")
			}
			took := time.Since(begin)
			t.Logf("Subscribe ended %v after its context", took.Round(time.Millisecond))
			if took > 250*time.Millisecond {
				t.Errorf("Subscribe ended %v after its context, its connection waiting on a hung server; want at most 250ms", took)
			}
		})
	}
}
