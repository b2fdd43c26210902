package natsbus_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
	"github.com/tlsfarm/tlsfarm/farm/natsbus/natsembed"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/natstest"
)

// sharedURL returns the URL of the machine's shared NATS server
// (TLSFARM_NATS_URL, default nats://127.0.0.1:4222), skipping the test if
// it does not answer.
func sharedURL(tb testing.TB) string {
	tb.Helper()
	return farmtest.ServerURL(tb, "NATS", "TLSFARM_NATS_URL", "nats://127.0.0.1:4222")
}

// embedded starts an in-process nats-server (the current release, with
// per-message TTL) for the test.
func embedded(tb testing.TB) string {
	tb.Helper()
	s, err := natsembed.Start(&natsembed.Config{Dir: tb.TempDir()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Shutdown)
	return s.URL()
}

// open opens a transport for the test, and deletes the farm's bucket (if
// the test made one) when it ends, so that tests leave no streams on a
// shared server.
func open(tb testing.TB, url, farmName string) *natsbus.Transport {
	tb.Helper()
	tr, err := natsbus.Open(url, farmName, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { tr.Close() })
	tb.Cleanup(func() { natstest.DeleteBuckets(tb, tr.Conn(), tr.Bucket(), tr.RecordBucket()) })
	return tr
}

func TestBusConformance(t *testing.T) {
	url := sharedURL(t)
	farmtest.TestBus(t, func(t *testing.T, name string) transport.Bus { return open(t, url, name) })
}

// TestStoreConformance runs the store suite on the shared server and on an
// embedded one: on this machine, one predates per-message TTL (2.9) and the
// other has it, so both ways of expiring keys are checked.
func TestStoreConformance(t *testing.T) {
	t.Parallel()
	t.Run("shared", func(t *testing.T) {
		url := sharedURL(t)
		farmtest.TestStore(t, func(t *testing.T, name string) transport.Store { return open(t, url, name) })
	})
	t.Run("embedded", func(t *testing.T) {
		url := embedded(t)
		farmtest.TestStore(t, func(t *testing.T, name string) transport.Store { return open(t, url, name) })
		tr := open(t, url, farmtest.FarmName(t))
		if ok, err := tr.NativeTTL(context.Background()); err != nil || !ok {
			t.Fatalf("NativeTTL on an embedded current server = %t, %v; want true", ok, err)
		}
	})
}

// TestServerExpiresKeys: with per-message TTL, an expired key is gone from
// the bucket itself, not only hidden.
func TestServerExpiresKeys(t *testing.T) {
	t.Parallel()
	url := embedded(t)
	tr := open(t, url, farmtest.FarmName(t))
	ctx := context.Background()
	if err := tr.PutRecords(ctx, transport.Item{Key: "s:00", Value: []byte("x"), TTL: time.Second}); err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(tr.Conn())
	kv, err := js.KeyValue(ctx, tr.Bucket())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(ctx, tr.Key("s:00")); err != nil {
		t.Fatalf("key not in the bucket after writing: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := kv.Get(ctx, tr.Key("s:00"))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server still holds a key 5s after its 1s TTL (%v)", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestExpiredKeyCanBeReplaced: SetNX and CompareAndSwap from absent succeed
// on a key whose value has expired but which the server still holds (as
// it does before 2.11).
func TestExpiredKeyCanBeReplaced(t *testing.T) {
	tr := open(t, sharedURL(t), farmtest.FarmName(t))
	ctx := context.Background()
	if ok, err := tr.SetNX(ctx, "lease", []byte("a"), 50*time.Millisecond); !ok || err != nil {
		t.Fatalf("SetNX = %t, %v", ok, err)
	}
	time.Sleep(100 * time.Millisecond)
	if ok, err := tr.SetNX(ctx, "lease", []byte("b"), time.Minute); !ok || err != nil {
		t.Fatalf("SetNX over an expired value = %t, %v", ok, err)
	}
	if ok, _ := tr.SetNX(ctx, "lease", []byte("c"), time.Minute); ok {
		t.Fatal("SetNX over a live value succeeded")
	}
	if ok, err := tr.CompareAndSwap(ctx, "lease", []byte("b"), []byte("c"), 50*time.Millisecond); !ok || err != nil {
		t.Fatalf("CompareAndSwap b->c = %t, %v", ok, err)
	}
	time.Sleep(100 * time.Millisecond)
	if ok, err := tr.CompareAndSwap(ctx, "lease", nil, []byte("d"), 0); !ok || err != nil {
		t.Fatalf("CompareAndSwap from an expired key = %t, %v", ok, err)
	}
	if v, err := tr.Get(ctx, "lease"); err != nil || string(v) != "d" {
		t.Fatalf("Get = %q, %v", v, err)
	}
}

func TestOpenURLs(t *testing.T) {
	farmtest.TestOpenURLs(t, func(url string) (io.Closer, error) { return natsbus.Open(url, "f", nil) }, map[string]string{
		"nats://127.0.0.1:4222":                                  "",
		"nats://user:pass@127.0.0.1:4222":                        "",
		"nats://token@127.0.0.1:4222":                            "",
		"nats://127.0.0.1:4222,nats://127.0.0.1:4223":            "",
		"http://127.0.0.1":                                       "scheme",
		"nats://":                                                "host",
		"nats://user:s3cret@[::1":                                "natsbus",
		"nats://user:s3cret@127.0.0.1:4222,ftp://x":              "scheme",
		"nats://127.0.0.1:4222?replicas=3":                       "",
		"nats://127.0.0.1:4222?replicas=9":                       "replicas",
		"nats://127.0.0.1:4222?colour=blue":                      "option",
		"nats://127.0.0.1:4222?pending_msgs=64&pending_bytes=-1": "",
		"nats://127.0.0.1:4222?pending_msgs=0":                   "pending_msgs",
		"nats://127.0.0.1:4222?pending_bytes=lots":               "pending_bytes",
	})
}

// TestWrongPasswordNotShown: a refused login shows up in the bus's state
// and the store's errors, without the password.
func TestWrongPasswordNotShown(t *testing.T) {
	t.Parallel()
	srv := startNATS(t, "--user", "tlsfarm", "--pass", "right-pw")
	tr, err := natsbus.Open(srv.URL("tlsfarm:s3cret-pw@"), farmtest.FarmName(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	// nats.go forgets the error while it tries again: keep it.
	var refusal error
	farmtest.Eventually(t, 5*time.Second, "the server refused the login", func() bool {
		refusal = tr.Conn().LastError()
		return refusal != nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var errs []error
	tr.Subscribe(ctx, func([]byte) {}, func(up bool, err error) {
		if up {
			t.Error("subscribed with a wrong password")
		}
		errs = append(errs, err)
	})
	errs = append(errs, tr.Publish(context.Background(), []byte("x")))
	gctx, gcancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer gcancel()
	_, err = tr.Get(gctx, "k")
	errs = append(errs, err, refusal)
	t.Logf("errors seen: %v", errs)
	refused := false
	for _, err := range errs {
		if err == nil {
			continue
		}
		if strings.Contains(err.Error(), "s3cret-pw") {
			t.Fatalf("error shows the password: %v", err)
		}
		refused = refused || strings.Contains(strings.ToLower(err.Error()), "authorization")
	}
	if !refused {
		t.Fatalf("no error says the login was refused: %v", errs)
	}

	// The right password works.
	good, err := natsbus.Open(srv.URL("tlsfarm:right-pw@"), farmtest.FarmName(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	if err := good.PutRecords(context.Background(), transport.Item{Key: "k", Value: []byte("v"), TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
}

func TestFarmNames(t *testing.T) {
	for _, tc := range []struct{ farm, subject, bucket string }{
		{"prod", "tlsfarm.prod.bus", "tlsfarm_prod"},
		{"eu-1", "tlsfarm.eu-1.bus", "tlsfarm_eu-1"},
		{"a.b", "tlsfarm.a_2eb.bus", "tlsfarm_a_2eb"},
		{"a_2eb", "tlsfarm.a_5f2eb.bus", "tlsfarm_a_5f2eb"},
		{"x *>y", "tlsfarm.x_20_2a_3ey.bus", "tlsfarm_x_20_2a_3ey"},
	} {
		tr, err := natsbus.Open("nats://127.0.0.1:1", tc.farm, nil)
		if err != nil {
			t.Fatal(err)
		}
		if tr.Subject() != tc.subject || tr.Bucket() != tc.bucket {
			t.Errorf("farm %q: subject %q bucket %q; want %q and %q", tc.farm, tr.Subject(), tr.Bucket(), tc.subject, tc.bucket)
		}
		tr.Close()
	}
	for _, bad := range []string{"", strings.Repeat("x", 65)} {
		if _, err := natsbus.Open("nats://127.0.0.1:1", bad, nil); err == nil {
			t.Errorf("farm name %q accepted", bad)
		}
	}
}

func TestKeys(t *testing.T) {
	tr, err := natsbus.Open("nats://127.0.0.1:1", "f", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	seen := map[string]string{}
	for _, tc := range []struct{ key, want string }{
		{"s:0a1b", "s.0a1b"},
		{"revoked", "revoked"},
		{"keys:lease", "keys.lease"},
		{":a", "=3Aa"},
		{"a:", "a=3A"},
		{"a::b", "a=3A=3Ab"},
		{"a.b", "a=2Eb"},
		{"a_b", "a=5Fb"},
		{"a=b", "a=3Db"},
		{"", "="},
		{"x y*>", "x=20y=2A=3E"},
	} {
		got := tr.Key(tc.key)
		if got != tc.want {
			t.Errorf("Key(%q) = %q, want %q", tc.key, got, tc.want)
		}
		if other, dup := seen[got]; dup {
			t.Errorf("keys %q and %q both map to %q", tc.key, other, got)
		}
		seen[got] = tc.key
	}
}

// TestLegacyRecordBucketAge: on a server without per-message TTL (the
// shared one here), session records live in a bucket of their own whose age
// limit is the session lifetime, not the coordination keys' 25h, and grows
// when a longer-lived record is written.
func TestLegacyRecordBucketAge(t *testing.T) {
	tr := open(t, sharedURL(t), farmtest.FarmName(t))
	ctx := context.Background()
	if native, err := tr.NativeTTL(ctx); err != nil || native {
		t.Skipf("the shared server expires keys itself (%v): nothing to check", err)
	}
	if err := tr.PutRecords(ctx, transport.Item{Key: "s:01", Value: []byte("x"), TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(tr.Conn())
	age := func(bucket string) time.Duration {
		s, err := js.Stream(ctx, "KV_"+bucket)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.Config.MaxAge
	}
	if a := age(tr.RecordBucket()); a != natsbus.DefaultLegacyRecordAge {
		t.Fatalf("record bucket age %v, want %v", a, natsbus.DefaultLegacyRecordAge)
	}
	if a := age(tr.Bucket()); a != natsbus.DefaultLegacyMaxAge {
		t.Fatalf("coordination bucket age %v, want %v", a, natsbus.DefaultLegacyMaxAge)
	}
	if _, err := tr.Get(ctx, "s:01"); !errors.Is(err, transport.ErrNotFound) {
		t.Fatalf("a record shows up among the coordination keys: %v", err)
	}
	if err := tr.PutRecords(ctx, transport.Item{Key: "s:02", Value: []byte("y"), TTL: 3*time.Hour + time.Minute}); err != nil {
		t.Fatal(err)
	}
	if a := age(tr.RecordBucket()); a != 3*time.Hour+10*time.Minute {
		t.Fatalf("record bucket age %v after a 3h01m record, want 3h10m", a)
	}
	if v, err := tr.GetRecord(ctx, "s:01"); err != nil || string(v) != "x" {
		t.Fatalf("GetRecord = %q, %v", v, err)
	}
}

// TestNoEcho: a transport Open made does not deliver the node's own
// messages back to it (the farm would drop them unopened), and still
// delivers every other node's. The server delivers in order on a
// connection, so an echo of a's message would reach a before the reply b
// sends only after it got that message.
func TestNoEcho(t *testing.T) {
	url := sharedURL(t)
	name := farmtest.FarmName(t)
	a, b := open(t, url, name), open(t, url, name)
	gotA, gotB := make(chan string, 4), make(chan string, 4)
	farmtest.Subscribed(t, a, func(m []byte) { gotA <- string(m) })
	farmtest.Subscribed(t, b, func(m []byte) { gotB <- string(m) })
	ctx := context.Background()
	if err := a.Publish(ctx, []byte("from a")); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-gotB:
		if m != "from a" {
			t.Fatalf("b got %q", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("b did not get a's message")
	}
	if err := b.Publish(ctx, []byte("from b")); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-gotA:
		if m != "from b" {
			t.Fatalf("a got %q first: its own message came back", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a did not get b's message")
	}
	select {
	case m := <-gotB:
		t.Fatalf("b got its own message back: %q", m)
	default:
	}
}

// TestForeignValueIsNotAnError: a value at a key that natsbus did not
// write (anyone with write access to the bucket can put one) reads as a
// present value, for the farm to refuse when it does not open; not as an
// error, which would name the key (for a session record, its ID) and count
// as a failing store.
func TestForeignValueIsNotAnError(t *testing.T) {
	url := embedded(t)
	tr := open(t, url, farmtest.FarmName(t))
	ctx := context.Background()
	const key = "s:0123456789abcdef"
	if err := tr.PutRecords(ctx, transport.Item{Key: key, Value: []byte("sealed"), TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(tr.Conn())
	kv, err := js.KeyValue(ctx, tr.Bucket())
	if err != nil {
		t.Fatal(err)
	}
	for _, junk := range [][]byte{[]byte("junk"), {}, {9, 0, 0}} {
		if _, err := kv.Put(ctx, tr.Key(key), junk); err != nil {
			t.Fatal(err)
		}
		v, err := tr.GetRecord(ctx, key)
		if err != nil {
			if strings.Contains(err.Error(), "0123456789abcdef") {
				t.Errorf("the error names the session key: %v", err)
			}
			t.Fatalf("GetRecord of a foreign value %q: %v", junk, err)
		}
		if string(v) != string(junk) {
			t.Fatalf("GetRecord of a foreign value = %q, want %q", v, junk)
		}
	}
	if got, err := tr.TakeRecord(ctx, key); err != nil || string(got) != "\x09\x00\x00" {
		t.Fatalf("TakeRecord of a foreign value = %q, %v", got, err)
	}
}

// TestCondWriteKnowsItsLandedWrite: a conditional write whose write
// landed but whose answer it did not get (lost with a route, or past its
// attempt: TestCondWriteAnswersAfterLostWrite) reads the key again and
// finds its own write there. It must report the write made: a take
// (TakeRecord) returns the value it took, for a record natsbus wrote (a
// retirement mark) and a foreign value (a plain purge); a swap (SetNX,
// AddRecord, CompareAndSwap) reports true. Reporting the key gone or
// taken by another would refuse the client of the node that did take it
// (a single-use session, a once-token). Here the write is published once
// by the test, as the call is about to, so the call's own is refused (the
// key's last sequence moved) and it reads its write back.
func TestCondWriteKnowsItsLandedWrite(t *testing.T) {
	url := embedded(t)
	const key = "s:0123456789abcdef"
	take := func(ctx context.Context, tr *natsbus.Transport) (string, error) {
		v, err := tr.TakeRecord(ctx, key)
		return string(v), err
	}
	made := func(ok bool, err error) (string, error) { return fmt.Sprint(ok), err }
	for _, tc := range []struct {
		name   string
		before []byte // the key's value (nil: a record natsbus wrote, "sealed")
		call   func(context.Context, *natsbus.Transport) (string, error)
		want   string
	}{
		{"take/record", nil, take, "sealed"},
		{"take/foreign", []byte("junk"), take, "junk"},
		{"SetNX", []byte{}, func(ctx context.Context, tr *natsbus.Transport) (string, error) {
			return made(tr.SetNX(ctx, key, []byte("new"), time.Minute))
		}, "true"},
		{"AddRecord", []byte{}, func(ctx context.Context, tr *natsbus.Transport) (string, error) {
			return made(tr.AddRecord(ctx, transport.Item{Key: key, Value: []byte("new"), TTL: time.Minute}))
		}, "true"},
		{"CompareAndSwap", []byte("old"), func(ctx context.Context, tr *natsbus.Transport) (string, error) {
			return made(tr.CompareAndSwap(ctx, key, []byte("old"), []byte("new"), time.Minute))
		}, "true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := open(t, url, farmtest.FarmName(t))
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			js, _ := jetstream.New(tr.Conn())
			switch {
			case tc.before == nil:
				if err := tr.PutRecords(ctx, transport.Item{Key: key, Value: []byte("sealed"), TTL: time.Minute}); err != nil {
					t.Fatal(err)
				}
			case len(tc.before) == 0: // none
			case strings.HasPrefix(tc.name, "take"):
				// Written as someone else would: not natsbus's framing.
				if err := tr.PutRecords(ctx, transport.Item{Key: key, Value: []byte("sealed"), TTL: time.Minute}); err != nil {
					t.Fatal(err)
				}
				kv, err := js.KeyValue(ctx, tr.Bucket())
				if err != nil {
					t.Fatal(err)
				}
				if _, err := kv.Put(ctx, tr.Key(key), tc.before); err != nil {
					t.Fatal(err)
				}
			default:
				if ok, err := tr.SetNX(ctx, key, tc.before, time.Minute); !ok || err != nil {
					t.Fatalf("SetNX of the old value = %t, %v", ok, err)
				}
			}
			writes := 0
			natsbus.SetBeforeCondWrite(tr, func(m *nats.Msg, opts []jetstream.PublishOpt) {
				if writes++; writes == 1 {
					if _, err := js.PublishMsg(ctx, m, opts...); err != nil {
						t.Errorf("the test's publish of the call's write: %v", err)
					}
				}
			})
			got, err := tc.call(ctx, tr)
			if err != nil || got != tc.want {
				t.Fatalf("%s = %q, %v; want %q (its write sent %d times)", tc.name, got, err, tc.want, writes)
			}
			if writes != 1 {
				t.Errorf("the call sent %d writes, want 1 (its second read finds its own)", writes)
			}
			natsbus.SetBeforeCondWrite(tr, nil)
			if strings.HasPrefix(tc.name, "take") {
				if _, err := tr.GetRecord(ctx, key); !errors.Is(err, transport.ErrNotFound) {
					t.Errorf("GetRecord after the take = %v, want %v", err, transport.ErrNotFound)
				}
			} else if ok, err := tr.SetNX(ctx, key, []byte("other"), time.Minute); ok || err != nil {
				t.Errorf("a later SetNX = %t, %v; want false: the key holds the swap's value", ok, err)
			}
		})
	}
}
