package farm_test

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// TestRecordsAndCoordFromSeparateValues: a node given its session records
// and its coordination by two different values (not Config.Store) shares
// sessions in store-only mode and keeps revocations in the coordinator, so
// that a late joiner learns them.
func TestRecordsAndCoordFromSeparateValues(t *testing.T) {
	url := redistest.URL(t)
	split := func(cfg *farm.Config) {
		records, err := redisbus.Open(url, cfg.Farm)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { records.Close() })
		cfg.Records, cfg.Coord, cfg.Store = records, cfg.Store, nil
	}
	o := farmtest.Options{NewTransport: redisTransport(url), Mode: farm.StoreOnly, WriteThrough: true, Tweak: split}
	ms, name := farmtest.Start(t, 2, &o)
	ids := farmtest.NewSessions(ms[0].Cache)
	frozen := &tlstest.FrozenCache{}
	tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, frozen))
	// n2 looks the session up in the store: write-through waits for a
	// young session only within n2's LookupTimeout, and n1's write may
	// take longer (a slow store path).
	waitStored(t, ms[0], ids()[0])
	if !tlstest.MustDial(t, ms[1].Server.Addr, farmtest.Client(tls.VersionTLS13, frozen)).DidResume {
		t.Fatal("n2 did not resume n1's session from the record store")
	}
	if ok, err := ms[0].Node.Revoke(context.Background(), ids()[0]); err != nil || !ok {
		t.Fatalf("Revoke = %t, %v", ok, err)
	}
	tombstones := redisOf(ms[0]).Key("revoked")
	waitOneTombstone(t, ms[0])
	late := farmtest.Join(t, "late", name, o)
	farmtest.WaitConnected(t, late)
	if tlstest.MustDial(t, late.Server.Addr, farmtest.Client(tls.VersionTLS13, frozen)).DidResume {
		t.Fatalf("revoked session resumed on a late joiner (tombstones at %s)", tombstones)
	}
}

// TestConfigNeedsCoordWithRecords: Records without Coord is refused (the
// revocations would have nowhere to live); Coord alone is fine.
func TestConfigNeedsCoordWithRecords(t *testing.T) {
	url := redistest.URL(t)
	tr, err := redisbus.Open(url, redistest.Farm(t))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for _, tc := range []struct {
		name    string
		records transport.RecordStore
		coord   transport.Coordinator
		mode    farm.Mode
		wantErr string
	}{
		{"records alone", tr, nil, farm.Broadcast, "Coord"},
		{"coord alone, store-only", nil, tr, farm.StoreOnly, "store-only"},
		{"coord alone, broadcast", nil, tr, farm.Broadcast, ""},
		{"both", tr, tr, farm.StoreOnly, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cache, err := session.New(nil)
			if err != nil {
				t.Fatal(err)
			}
			defer cache.Close()
			n, err := farm.Join(context.Background(), farm.Config{
				Farm: "f", Secrets: []farm.Secret{farm.NewSecret(1)}, Cache: cache, Bus: tr,
				Records: tc.records, Coord: tc.coord, Mode: tc.mode,
			})
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				n.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Join = %v, want an error about %q", err, tc.wantErr)
			}
		})
	}
}

// TestCoordOnlyKeepsRevocations: a broadcast farm given a Coordinator but no
// RecordStore keeps its revocations there as tombstones (for nodes that
// join later) and writes no session records.
func TestCoordOnlyKeepsRevocations(t *testing.T) {
	url := redistest.URL(t)
	coordOnly := func(cfg *farm.Config) { cfg.Coord, cfg.Store = cfg.Store, nil }
	o := farmtest.Options{NewTransport: redisTransport(url), Tweak: coordOnly}
	ms, _ := farmtest.Start(t, 2, &o)
	ids := farmtest.NewSessions(ms[0].Cache)
	tlstest.MustDial(t, ms[0].Server.Addr, farmtest.Client(tls.VersionTLS13, &tlstest.FrozenCache{}))
	if ok, err := ms[0].Node.Revoke(context.Background(), ids()[0]); err != nil || !ok {
		t.Fatalf("Revoke = %t, %v", ok, err)
	}
	waitOneTombstone(t, ms[0])
	if st := ms[0].Node.Metrics(); farmtest.Counter(st, "tlsfarm_farm_store_writes_total") != 0 {
		t.Fatalf("%d session records written without a RecordStore", farmtest.Counter(st, "tlsfarm_farm_store_writes_total"))
	}
}

// waitOneTombstone waits until m's revoker is idle with a tombstone in
// the coordinator's set, and fails the test unless the set holds exactly
// one: m made one revocation. What a revocation queues, it queues before
// Revoke returns, so that once none is pending nothing more is written.
// It used to be two, each a member sealed anew, in most runs: the REMOVE
// hook's revocation, applied while Remove still scanned the cache, was
// queued again (see TestOneRevocationOneTombstone). A failure says what
// the node went through.
func waitOneTombstone(t *testing.T, m *farmtest.Member) {
	t.Helper()
	var got [][]byte
	var err error
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		idle := m.Node.PendingRevocations() == 0
		got, err = redisOf(m).SetMembers(context.Background(), "revoked")
		if err == nil && idle && len(got) >= 1 {
			break
		}
		if time.Now().After(deadline) {
			st := m.Node.Metrics()
			t.Fatalf("no tombstone in the coordinator after 15s, or revocations still pending (last read: %d members, %v); store write errors %d, publish errors %d, pending revocations %d",
				len(got), err, farmtest.Counter(st, "tlsfarm_farm_store_write_errors_total"),
				farmtest.Counter(st, "tlsfarm_farm_publish_errors_total"), m.Node.PendingRevocations())
		}
	}
	if len(got) != 1 {
		st := m.Node.Metrics()
		t.Fatalf("%d tombstones in the coordinator for one revocation, want 1; revocations applied %d, store write errors %d, publish errors %d",
			len(got), m.Node.RevocationsApplied(), farmtest.Counter(st, "tlsfarm_farm_store_write_errors_total"),
			farmtest.Counter(st, "tlsfarm_farm_publish_errors_total"))
	}
}
