package redisbus_test

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// TestClusterSetAddSlotMigrating: on a Redis Cluster whose farm slot (the
// slot of the farm's revocation sets and their versions) is being
// migrated, SetAdd writes a revocation: to a set whose keys are split
// between the two nodes (the set moved, its version not yet), and to a
// new set, of which neither key is on either node (none yet on the
// importing side). Each is then a member, the set's version is new, and
// the version lasts as long as the set. The server refuses the script,
// which spans the set and its version, while the slot is split
// (TRYAGAIN); a revocation that cannot be written while the farm's slot
// is resharded is a promise delayed until the reshard ends.
func TestClusterSetAddSlotMigrating(t *testing.T) {
	t.Parallel()
	testSetAddSlotMigrating(t, 0)
}

// TestClusterSetAddSlotMigratingWait is TestClusterSetAddSlotMigrating
// with WaitReplicas: each step of the split add is acknowledged by a
// replica of the node that ran it.
func TestClusterSetAddSlotMigratingWait(t *testing.T) {
	t.Parallel()
	testSetAddSlotMigrating(t, 1)
}

func testSetAddSlotMigrating(t *testing.T, replicas int) {
	c, tr := openCluster(t, replicas)
	tr.WaitReplicas = replicas
	ctx := context.Background()
	later := time.Now().Add(time.Hour)
	if err := tr.SetAdd(ctx, "split", []byte("old"), later); err != nil {
		t.Fatal(err)
	}
	old, err := tr.SetVersion(ctx, "split")
	if err != nil || old == nil {
		t.Fatalf("version before: %x, %v", old, err)
	}
	src, dst := migrateSlot(t, c, tr.Key("split"))
	moveKey(t, c, src, dst, tr.Key("split")) // the set moved, its version not

	for _, set := range []string{"split", "new"} {
		until := later.Add(time.Hour) // outlives the set's older member
		if err := tr.SetAdd(ctx, set, []byte("revoked"), until); err != nil {
			t.Errorf("%s: SetAdd to the migrating farm slot: %v", set, err)
			continue
		}
		ms, err := tr.SetMembers(ctx, set)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, m := range ms {
			found = found || string(m) == "revoked"
		}
		if !found {
			t.Errorf("%s: the set holds %q, not the revocation", set, ms)
		}
		v, err := tr.SetVersion(ctx, set)
		if err != nil || v == nil || bytes.Equal(v, old) {
			t.Errorf("%s: the version is %x (%v), want a new one", set, v, err)
		}
		setTTL := askingPTTL(t, c, src, dst, tr.Key(set))
		verTTL := askingPTTL(t, c, src, dst, tr.Key(set)+":version")
		if setTTL < time.Hour.Milliseconds() || verTTL < setTTL-1000 {
			t.Errorf("%s: the set lasts %d ms and its version %d ms; want both the latest member's, about 2 h", set, setTTL, verTTL)
		}
	}
}

// TestClusterStrikeSlotMigrating pins what StrikeRecord does while the
// slot of a strike group is being migrated, and its keys (the group's
// marker and the strike) are split between two nodes, or all missing on
// the source: the server refuses the script (TRYAGAIN), and the strike
// is refused, an error with fresh false, so the farm refuses the ticket's
// early data and the client resumes in 1-RTT. There is deliberately no
// stepwise fallback: the marker's check and the strike's SET NX must be
// one atomic step on one server that is known to hold the group's script
// (see StrikeRecord), which no sequence of one-key commands gives. A
// ticket struck before the slot moved is never fresh again.
func TestClusterStrikeSlotMigrating(t *testing.T) {
	t.Parallel()
	c, tr := openCluster(t, 0)
	ctx := context.Background()
	since := time.Now().Add(time.Minute) // issued after the register began
	it := func(k string) transport.Item { return transport.Item{Key: k, Value: []byte{1}, TTL: time.Hour} }
	groups := []string{"once:aa", "once:bb"}
	if err := tr.RenewRegister(ctx, groups, time.Hour); err != nil {
		t.Fatal(err)
	}
	for _, g := range groups {
		if ok, err := tr.StrikeRecord(ctx, g, it("used"), since, time.Hour); !ok || err != nil {
			t.Fatalf("%s: first strike before the migration: %v, %v", g, ok, err)
		}
	}
	// once:aa: the slot migrating, no key moved (the marker and the used
	// strike on the source). once:bb: the marker moved, the used strike
	// not (its slot split).
	migrateSlot(t, c, tr.RecordKey(groups[0]))
	srcB, dstB := migrateSlot(t, c, tr.RecordKey(groups[1]))
	moveKey(t, c, srcB, dstB, tr.RecordKey(groups[1]))

	// Redis answers TRYAGAIN before it looks for the script: the target,
	// which holds no script of once:bb's, answers a script by a hash it
	// has never seen with TRYAGAIN, not NOSCRIPT. So a TRYAGAIN says
	// nothing of whether the node that would hold the strike still has
	// the group's script, the evidence that its register was not lost.
	var sha *redis.Cmd
	_, _ = c.Client(dstB).Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Do(ctx, "ASKING")
		sha = p.EvalSha(ctx, strings.Repeat("0", 40), []string{tr.RecordKey(groups[1]), tr.RecordKey(groups[1]) + ":unseen"})
		return nil
	})
	if !redis.HasErrorPrefix(sha.Err(), "TRYAGAIN") {
		t.Errorf("the importing node answers a script it does not hold, over a split slot, with %v; want TRYAGAIN", sha.Err())
	}

	for i, g := range groups {
		// A new ticket: its strike is missing on both nodes.
		for try := 0; try < 3; try++ {
			ok, err := tr.StrikeRecord(ctx, g, it("new"+strconv.Itoa(try)), since, time.Hour)
			if ok || err == nil {
				t.Errorf("%s: a strike in a split slot: fresh %v, %v; want refused with an error", g, ok, err)
			}
			if try == 0 {
				t.Logf("%s: a new ticket refused with %v", g, err)
			}
		}
		// The ticket used before the migration: never fresh.
		ok, err := tr.StrikeRecord(ctx, g, it("used"), since, time.Hour)
		if ok {
			t.Errorf("%s: a ticket struck before the migration is fresh again (%v)", g, err)
		}
		t.Logf("case %d %s: replay answered fresh %v, %v", i, g, ok, err)
	}
}
