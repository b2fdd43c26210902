package farm

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/tlstest"
	"github.com/tlsfarm/tlsfarm/session"
)

// silentBus is a Bus that delivers nothing: benchmarks hand messages to
// Node.receive themselves.
type silentBus struct{}

func (silentBus) Publish(context.Context, ...[]byte) error { return nil }
func (silentBus) Subscribe(ctx context.Context, _ func([]byte), state func(bool, error)) error {
	state(true, nil)
	<-ctx.Done()
	return ctx.Err()
}

// realState is a real TLS 1.3 server session, serialized.
func realState(b testing.TB) []byte {
	cert, pool := tlstest.SharedCert()
	var state []byte
	srv := &tls.Config{Certificates: []tls.Certificate{cert}, WrapSession: func(_ tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		var err error
		state, err = ss.Bytes()
		return []byte("x"), err
	}}
	if _, err := tlstest.PipeHandshake(srv, tlstest.ClientConfig(pool, "localhost", tls.VersionTLS13, tls.NewLRUClientSessionCache(1)), nil); err != nil {
		b.Fatal(err)
	}
	return state
}

// receiverNode returns a node on a silent bus, and a sender node of the same
// farm whose messages it can receive. Their caches hold up to capacity
// sessions.
func receiverNode(b testing.TB, lazy bool, capacity int) (recv, send *Node) {
	return receiverNodeCarry(b, lazy, false, capacity)
}

// receiverNodeCarry is receiverNode, with Config.CarrySessions if carry.
func receiverNodeCarry(b testing.TB, lazy, carry bool, capacity int) (recv, send *Node) {
	secret := NewSecret(1)
	mk := func() *Node {
		cache, err := session.New(&session.Config{SweepInterval: -1, Capacity: capacity})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cache.Close() })
		n, err := Join(context.Background(), Config{Farm: "bench", Secrets: []Secret{secret}, Cache: cache, Bus: silentBus{},
			LazyPeers: lazy, CarrySessions: carry, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { n.Close() })
		return n
	}
	return mk(), mk()
}

// BenchmarkReceive measures what a node spends on one session a peer
// sends: from the message's bytes to the session being resumable here
// (checks, opening, decoding, insertion into the cache — or, with
// LazyPeers, keeping it pending), per session, with batches of 1 and 16
// sessions per message. Eager receiving is measured into a cache that is
// still growing (cache=growing: room for 1M sessions, so the cache's maps
// grow throughout, as in a node's first minutes) and into one that is full
// (cache=full: 65,536 sessions, so each insert evicts the least recently
// used, as in a busy node's steady state). BenchmarkTakePending measures the rest of the lazy
// path, paid only for the sessions clients present. The messages are made before the
// timer runs; cpu-µs/op is the process's CPU time per session, garbage
// collection included.
func BenchmarkReceive(b *testing.B) {
	for _, batch := range []int{1, 16} {
		benchReceive(b, "eager/cache=growing", false, 1<<20, batch)
		benchReceive(b, "eager/cache=full", false, 1<<16, batch)
		benchReceive(b, "lazy", true, 1<<20, batch)
		benchReceiveHeld(b, batch)
	}
}

// benchReceiveHeld is BenchmarkReceive's receive=held case: a carry node
// (Config.CarrySessions) receives sessions it already holds, each the
// child of a session it holds, as after it admitted their carried copies
// (inserted with OriginLoader, which cut and linked their parents) before
// their issuer's message came: the duplicate a carried farm receives for
// about every copy it admits. Like receive=eager/cache=full, the node's
// cache holds 65,536 sessions: a node receives heldChunk of them (a parent
// and a child each, made and admitted with the timer stopped; only their
// receiving is timed), then the next chunk goes to a new node. (All made
// at once, a large b.N would need a cache of 2·b.N sessions, whose lookups
// miss the CPU's caches; and past a cache's Capacity of links between
// parents and children, links still in their grace are forgotten, and
// their children's copies inserted again.)
func benchReceiveHeld(b *testing.B, batch int) {
	b.Run("receive=held/batch="+itoa(batch), func(b *testing.B) {
		state := realState(b)
		b.ReportAllocs()
		var cpu time.Duration
		sent, inserted, held := 0, uint64(0), uint64(0)
		for sent < b.N {
			b.StopTimer()
			recv, send := receiverNodeCarry(b, false, true, 2*heldChunk)
			now := time.Now()
			var msgs [][]byte
			for n := 0; n < heldChunk && sent < b.N; n += batch {
				var items []sessionItem
				for range batch {
					parent := send.cfg.Cache.NewID()
					prec := session.Record{State: state, ServerName: "localhost", Expires: now.Add(time.Hour), Chain: 7, ChainStart: now}
					if err := recv.cfg.Cache.Insert(parent, prec, session.OriginPeer); err != nil {
						b.Fatal(err)
					}
					id := send.cfg.Cache.NewID()
					rec := session.Record{State: state, ServerName: "localhost", Expires: now.Add(time.Hour), Chain: 7, ChainStart: now, Parent: parent}
					if err := recv.cfg.Cache.Insert(id, rec, session.OriginLoader); err != nil {
						b.Fatal(err)
					}
					items = append(items, sessionItem{id: id, rec: rec})
				}
				msgs = append(msgs, send.sealSessions(now, items))
				sent += batch
			}
			b.StartTimer()
			start := tlstest.ProcessCPU()
			for _, m := range msgs {
				recv.receive(m)
			}
			cpu += tlstest.ProcessCPU() - start
			b.StopTimer()
			s := recv.Metrics()
			inserted += counter(s, "tlsfarm_farm_inserted_total")
			held += counter(s, "tlsfarm_farm_received_held_total")
			if rejectedTotal(s) > 0 {
				b.Fatalf("sessions rejected: %+v", s)
			}
			recv.Close()
			send.Close()
			recv.cfg.Cache.Close()
			send.cfg.Cache.Close()
		}
		b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
		if inserted != 0 || held != uint64(sent) {
			b.Fatalf("of %d sessions sent, %d were found held and %d inserted again; want all held", sent, held, inserted)
		}
	})
}

// heldChunk is how many sessions benchReceiveHeld sends one node: its
// cache, of 2·heldChunk sessions, holds them and their parents.
const heldChunk = 1 << 15

func benchReceive(b *testing.B, name string, lazy bool, capacity, batch int) {
	{
		b.Run("receive="+name+"/batch="+itoa(batch), func(b *testing.B) {
			recv, send := receiverNode(b, lazy, capacity)
			state := realState(b)
			now := time.Now()
			var msgs [][]byte
			for i := 0; i < b.N; i += batch {
				var items []sessionItem
				for range batch {
					items = append(items, sessionItem{id: send.cfg.Cache.NewID(), rec: session.Record{
						State: state, ServerName: "localhost", Expires: now.Add(time.Hour), Chain: 7, ChainStart: now,
					}})
				}
				msgs = append(msgs, send.sealSessions(now, items))
			}
			timeReceive(b, recv, msgs)
			if s := recv.Metrics(); counter(s, "tlsfarm_farm_inserted_total")+counter(s, "tlsfarm_farm_lazy_total", "event", "kept") == 0 || rejectedTotal(s) > 0 {
				b.Fatalf("nothing received, or rejected: %+v", s)
			}
		})
	}
}

func itoa(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}

// BenchmarkSeal measures what the sender spends sealing one session: its
// store record (encoded as storeItems does, sealed with its ID as context)
// and a one-session bus message (the common batch on a lightly loaded
// node).
func BenchmarkSeal(b *testing.B) {
	_, send := receiverNode(b, false, 1<<20)
	state := realState(b)
	now := time.Now()
	id := send.cfg.Cache.NewID()
	rec := session.Record{State: state, ServerName: "localhost", Expires: now.Add(time.Hour), Chain: 7, ChainStart: now}
	hdr := header{time: now, sender: send.instance, farm: send.cfg.Farm, typ: valRecord}
	b.Run("part=record", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			body, err := encodeRecord(&rec)
			if err != nil {
				b.Fatal(err)
			}
			send.keys.seal(nil, hdr, body, id[:])
		}
	})
	b.Run("part=message", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			send.sealSessions(now, []sessionItem{{id: id, rec: rec}})
		}
	})
}

// timeReceive is the measured part of the receive benchmarks: recv takes
// msgs, one after the other, with allocations and process CPU reported.
func timeReceive(b *testing.B, recv *Node, msgs [][]byte) {
	b.ReportAllocs()
	b.ResetTimer()
	cpu := tlstest.ProcessCPU()
	for _, m := range msgs {
		recv.receive(m)
	}
	tlstest.ReportCPU(b, cpu)
	b.StopTimer()
}
