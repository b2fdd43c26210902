package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/keyexport"
	"github.com/tlsfarm/tlsfarm/session"
	"github.com/tlsfarm/tlsfarm/ticket"
)

// TestKeysMergeKeepsServersKeys: an nginx and an HAProxy, fed by one
// tlsfarm keys agent, issue tickets under the farm's key K; the farm
// rotates, so that K only decrypts; then a node that served with three
// keys of its own (more than either server's window of previous keys)
// joins and merges them into the farm's set. The merged keys must not
// push K out of the servers' fixed windows: the tickets still resume on
// both, at TLS 1.2 and 1.3, after nginx reloads the new files and HAProxy
// gets the new keys over its runtime API; and on nginx after the next
// rotation too, when K is the second previous key, behind the merged keys
// in the farm's set.
func TestKeysMergeKeepsServersKeys(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	secret, cert, key, _ := farmFiles(t)
	fa := farmArgs(url, secret, redistest.Farm(t))

	dir := privateDir(t)
	ng, reload := newNginx(t, "nginx-merge", dir, testKeep, cert, key)
	hfile := filepath.Join(privateDir(t), "tls-ticket.keys")
	hp, sock := newHAProxy(t, "haproxy-merge", hfile, cert, key)
	a := startAgent(t, "keys-merge", append(fa, "-export", "nginx:"+dir,
		"-export", "haproxy:"+hfile+",socket="+sock, "-on-change", reload)...)
	waitUntil(t, 10*time.Second, func() bool {
		_, err1 := os.Stat(filepath.Join(dir, "ticket-0.key"))
		_, err2 := os.Stat(hfile)
		return err1 == nil && err2 == nil
	}, "the agent wrote no key files")
	ng.start()
	hp.start()
	waitExported(t, a, 1, 10*time.Second)

	// Tickets under the farm's key K, the current key of epoch e.
	e := a.ring.Status().Epoch
	waitExported(t, a, e, 2*testRotation)
	k := a.ring.State().Current
	servers := map[string]string{"nginx": ng.addr(), "haproxy": hp.addr()}
	tickets := map[string]string{}
	for name, addr := range servers {
		for _, v := range []string{"1.2", "1.3"} {
			f := tempFile(t)
			mustResume(t, false, "a full handshake on "+name, addr, v, "", f)
			tickets[name+" "+v] = f
		}
	}
	if a.ring.Status().Epoch != e {
		t.Skip("the machine is too slow for a 5s rotation: a rotation passed while issuing the tickets")
	}

	// The farm rotates: K only decrypts now, the newest previous key.
	waitExported(t, a, e+1, 2*testRotation)
	time.Sleep(settle)
	for name, addr := range servers {
		for _, v := range []string{"1.2", "1.3"} {
			mustResume(t, true, name+"'s ticket after a rotation, before the merge", addr, v, tickets[name+" "+v], "")
		}
	}

	// A node that served with keys of its own at epoch 1 merges them in.
	own := ticket.State{Epoch: 1, Current: randomKey(t), Next: randomKey(t), Previous: []ticket.Key{randomKey(t), randomKey(t)}}
	mergingNode(t, fa, own)
	waitUntil(t, 2*testRotation, func() bool { return holdsKey(a.ring.State(), own.Current) }, "the merged set did not reach the agent")
	merged := a.ring.State()
	if !slices.Contains(merged.Previous, k) || len(merged.Previous) <= testKeep+1 {
		t.Fatalf("the merged set holds %d previous keys, K among them: %v; want more than %d", len(merged.Previous), slices.Contains(merged.Previous, k), testKeep+1)
	}
	waitExported(t, a, merged.Epoch, 2*testRotation)
	waitUntil(t, 2*testRotation, func() bool {
		st := a.exporter.Status()
		return st[len(st)-1].Epoch >= merged.Epoch
	}, "nginx was not reloaded after the merge")
	time.Sleep(settle)
	for _, name := range []string{"haproxy", "nginx"} {
		var refused []string
		for _, v := range []string{"1.2", "1.3"} {
			got, err := resume(t, servers[name], v, tickets[name+" "+v], "")
			if err != nil {
				t.Fatal(err)
			}
			if !got {
				refused = append(refused, v)
			}
		}
		if name == "haproxy" && a.ring.State().Current != merged.Current {
			// HAProxy holds one previous key: K goes at the next rotation,
			// which may have come before or during the check (on a loaded
			// machine the merge can land just before it).
			t.Skip("the machine is too slow for a 5s rotation: the farm rotated before the check on HAProxy")
		}
		for _, v := range refused {
			t.Errorf("%s's ticket from before the merge, after it (TLS %s): not resumed", name, v)
		}
	}

	// The next rotation: K is nginx's second previous key, still ahead of
	// the merged keys.
	waitExported(t, a, merged.Epoch+1, 2*testRotation)
	waitUntil(t, 2*testRotation, func() bool {
		st := a.exporter.Status()
		return st[len(st)-1].Epoch >= merged.Epoch+1
	}, "nginx was not reloaded after the rotation")
	time.Sleep(settle)
	if st := a.ring.State(); !slices.Contains(st.Previous, own.Current) || slices.Index(st.Previous, k) < 2 {
		t.Fatalf("after the rotation, K at %d of the ring's previous keys, merged keys held: %v; want K behind them",
			slices.Index(st.Previous, k), slices.Contains(st.Previous, own.Current))
	}
	for _, v := range []string{"1.2", "1.3"} {
		mustResume(t, true, "nginx's ticket from before the merge, a rotation after it", servers["nginx"], v, tickets["nginx "+v], "")
	}
}

// TestKeysAgentRestartedAfterMergeOrdersByUse: a tlsfarm keys agent that
// starts after a merge (restarted, or new to the farm) still exports the
// farm's previous keys ahead of the keys the merge added, because the
// stored set records which keys those are. The farm (agent a1) rotates,
// so that its key K only decrypts; a node that served with three keys of
// its own merges them in; then agent a2 starts. Before, a2 could not tell
// the merged keys from the farm's and exported the stored order, merged
// keys first: its nginx files held merged keys where K belongs, until
// they lapsed.
func TestKeysAgentRestartedAfterMergeOrdersByUse(t *testing.T) {
	t.Parallel()
	url := redistest.URL(t)
	secret, _, _, _ := farmFiles(t)
	fa := farmArgs(url, secret, redistest.Farm(t))
	a1 := startAgent(t, "keys-before", append(fa, "-export", "nginx:"+privateDir(t))...)
	e := waitExported(t, a1, 1, 10*time.Second)
	waitExported(t, a1, e+1, 2*testRotation)
	k := a1.ring.State().Previous[0]

	own := ticket.State{Epoch: 1, Current: randomKey(t), Next: randomKey(t), Previous: []ticket.Key{randomKey(t), randomKey(t)}}
	ownKeys := []ticket.Key{own.Current, own.Previous[0], own.Previous[1]}
	mergingNode(t, fa, own)
	waitUntil(t, 2*testRotation, func() bool { return holdsKey(a1.ring.State(), own.Current) }, "the merged set did not reach the agent")
	merged := a1.ring.State()
	if slices.Index(merged.Previous, k) < len(ownKeys) {
		t.Fatalf("K at %d of the merged set's previous keys, want behind the %d merged keys", slices.Index(merged.Previous, k), len(ownKeys))
	}

	dir := privateDir(t)
	a2 := startAgent(t, "keys-after", append(fa, "-export", "nginx:"+dir)...)
	waitExported(t, a2, merged.Epoch, 2*testRotation)
	isOwn := func(k ticket.Key) bool { return slices.Contains(ownKeys, k) }
	for {
		st, foreign := a2.ring.StateByUse()
		waitExported(t, a2, st.Epoch, 2*testRotation)
		b, err := os.ReadFile(filepath.Join(dir, keyexport.NginxFileName(2)))
		if err != nil {
			t.Fatal(err)
		}
		if a2.ring.Status().Epoch != st.Epoch {
			continue // rotated meanwhile: look again
		}
		held := 0
		for _, k := range st.Previous {
			if isOwn(k) {
				held++
			}
		}
		if held == 0 {
			t.Skipf("the machine is too slow for a 5s rotation: the merged keys lapsed (epoch %d) before the check", st.Epoch)
		}
		if foreign != held || isOwn(st.Previous[0]) || (st.Epoch == merged.Epoch && st.Previous[0] != k) {
			t.Fatalf("the agent started after the merge counts %d keys as merged (want %d) and puts a merged key first: %v (K first: %v)",
				foreign, held, isOwn(st.Previous[0]), st.Previous[0] == k)
		}
		if want := keyexport.NginxKey(st.Previous[0]); !bytes.Equal(b, want[:]) {
			t.Fatal("the agent started after the merge does not export the farm's newest previous key as nginx's ticket-2.key")
		}
		return
	}
}

// mergingNode joins the farm of the flags fa with a ring restored from own,
// as a node that served with keys of its own does, and runs its key
// rotation until the test ends: at its first poll it merges own's keys into
// the farm's set.
func mergingNode(t *testing.T, fa []string, own ticket.State) {
	t.Helper()
	var errs bytes.Buffer
	o, code := parseKeys(append([]string{"-node", "merger", "-export", "file:" + filepath.Join(privateDir(t), "keys.json")}, fa...),
		func(string) string { return "" }, &errs)
	if o == nil {
		t.Fatalf("flags: exit %d: %s", code, errs.String())
	}
	ring, err := ticket.NewRing(ticket.RingConfig{Keep: o.keep, Interval: o.rotation, Initial: &own})
	if err != nil {
		t.Fatal(err)
	}
	cache, err := session.New(&session.Config{Capacity: 64})
	if err != nil {
		t.Fatal(err)
	}
	bus, store, closer, err := openTransport(o.farmURL, o.farmName)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	node, err := farm.Join(ctx, farm.Config{Farm: o.farmName, NodeName: "merger", Secrets: o.secrets, Cache: cache, Bus: bus, Coord: store})
	if err != nil {
		t.Fatal(err)
	}
	rot, err := node.RotateTicketKeys(ctx, farm.RotationConfig{Ring: ring, Interval: o.rotation, Keep: o.keep})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		rot.Close()
		node.Close()
		cancel()
		closer.Close()
		cache.Close()
	})
}

func randomKey(t *testing.T) ticket.Key {
	var k ticket.Key
	if _, err := rand.Read(k[:]); err != nil {
		t.Fatal(err)
	}
	return k
}

func holdsKey(s ticket.State, k ticket.Key) bool {
	return s.Current == k || s.Next == k || slices.Contains(s.Previous, k)
}
