package main

import (
	"context"
	"encoding/hex"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/testenv"
)

// carryMaxSkew is farm.Config.MaxSkew as the daemon leaves it: a node
// admits a carried copy only of an ID issued at least this long after it
// began to reach the farm.
const carryMaxSkew = 5 * time.Second

// sessionTicket returns the ticket in an openssl session file, as
// `openssl sess_id -text` shows it ("TLS session ticket:" and its hex
// dump), or nil if it holds none. Nothing else of the session is kept.
func sessionTicket(t *testing.T, file string) []byte {
	t.Helper()
	path, err := exec.LookPath("openssl")
	if err != nil {
		testenv.Skip(t, "openssl is not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "sess_id", "-in", file, "-noout", "-text").Output()
	if err != nil {
		t.Fatalf("openssl sess_id -in %s -noout -text: %v", file, err)
	}
	var ticket []byte
	in := false
	for _, line := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(line) == "TLS session ticket:" {
			in = true
			continue
		}
		if !in {
			continue
		}
		// "    0010 - 01 02 03 04 05 06 07 08-09 0a 0b 0c 0d 0e 0f 10   ascii"
		_, rest, ok := strings.Cut(line, " - ")
		if !ok || !isHex(strings.TrimSpace(line[:len(line)-len(rest)-3])) {
			break
		}
		hexPart, _, _ := strings.Cut(rest, "   ")
		for _, f := range strings.Fields(strings.ReplaceAll(hexPart, "-", " ")) {
			b, err := hex.DecodeString(f)
			if err != nil || len(b) != 1 {
				t.Fatalf("openssl sess_id: unexpected ticket dump line %q", hexPart)
			}
			ticket = append(ticket, b[0])
		}
	}
	return ticket
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return s != "" && err == nil
}

// TestDaemonCarriedSessions runs two daemons with -write-through on a
// private Redis, node-1 reaching it through a proxy, with and without
// -carry-sessions, and openssl s_client (-sess_out on node-1, whose path
// to the farm is frozen just before, -sess_in on node-2 at once):
//
//   - with -carry-sessions, node-1's ticket carries the session (format 3,
//     the session ID, then the sealed session: far longer than the ID),
//     and node-2, which holds no copy (node-1's broadcast cannot leave),
//     resumes it at once from the ticket, counting it admitted;
//   - without, node-1's ticket is the bare 26-byte ID (format 1), and
//     node-2 gives a full handshake (after waiting for the young session
//     within the lookup deadline), admitting nothing; once node-1's path
//     thaws, its broadcast arrives and the same session resumes on node-2.
func TestDaemonCarriedSessions(t *testing.T) {
	t.Parallel()
	for _, carry := range []bool{true, false} {
		t.Run(map[bool]string{true: "carry", false: "bare"}[carry], func(t *testing.T) {
			t.Parallel()
			daemonCarried(t, carry)
		})
	}
}

func daemonCarried(t *testing.T, carry bool) {
	secret, cert, key, _ := farmFiles(t)
	srv := redistest.Start(t)
	px := nettest.NewProxy(t, srv.Addr())
	name := redistest.Farm(t)
	thawed := true
	t.Cleanup(func() {
		if !thawed {
			px.Thaw()
		}
	})
	start := func(node, url string) *proc {
		args := []string{"-node", node, "-cert", cert, "-key", key,
			"-farm", url, "-farm-secret", secret, "-farm-name", name,
			"-debug-expose-session-id", "-write-through"}
		if carry {
			args = append(args, "-carry-sessions")
		}
		return serveProc(t, args, "TLSFARM_ADMIN_TOKEN="+farmToken)
	}
	isOK := func(p *proc) func() bool {
		return func() bool { s, c := farmState(t, p); return c && s == "ok" }
	}
	n1 := start("node-1", "redis://"+px.Addr+"/0")
	n2 := start("node-2", srv.URL())
	for _, p := range []*proc{n1, n2} {
		waitUntil(t, 15*time.Second, isOK(p), "a node did not join the farm")
	}
	// node-2 admits a carried copy only of an ID issued at least MaxSkew
	// after it began to reach the farm (before it said "ok").
	time.Sleep(carryMaxSkew + 300*time.Millisecond)

	sess := tempFile(t)
	const attempts = 3
	for attempt := 1; ; attempt++ {
		old := metric(t, n2, `tlsfarm_farm_carried_total{result="old"}`)
		// Frozen before the handshake: node-1's broadcast and store write
		// of the new session cannot leave it, while node-1 still reaches
		// the farm for a probe's timeout or so (it carries meanwhile).
		px.Freeze()
		thawed = false
		t0 := time.Now()
		resumed, f1 := opensslFacts(t, n1, "", sess)
		issued := time.Since(t0)
		resumed2, f2 := opensslFacts(t, n2, sess, "")
		took := time.Since(t0)
		if resumed || f1.Node != "node-1" || f2.Node != "node-2" || f1.SessionID == "" {
			t.Fatalf("openssl: resumed %v on %s (want a full handshake on node-1), then on %s; session ID exposed: %v",
				resumed, f1.Node, f2.Node, f1.SessionID != "")
		}
		ticket := sessionTicket(t, sess)
		switch {
		case carry && (len(ticket) <= 1+26+32 || ticket[0] != 3):
			t.Fatalf("with -carry-sessions node-1 issued a ticket of %d bytes, format %v; want format 3, the ID then the sealed session", len(ticket), ticket[:min(1, len(ticket))])
		case !carry && (len(ticket) != 26 || ticket[0] != 1):
			t.Fatalf("without -carry-sessions node-1 issued a ticket of %d bytes, format %v; want the bare 26-byte ID, format 1", len(ticket), ticket[:min(1, len(ticket))])
		}
		id := ticket[:26]
		if carry {
			id = ticket[1:27]
		}
		if hex.EncodeToString(id) != f1.SessionID {
			t.Fatal("the session ID in openssl's ticket is not the one node-1 says it issued")
		}
		t.Logf("attempt %d: %d-byte ticket from node-1 in %v; on node-2 %v later: resumed %v",
			attempt, len(ticket), issued.Round(time.Millisecond), (took - issued).Round(time.Millisecond), resumed2)

		if !carry {
			if resumed2 {
				t.Fatal("without -carry-sessions node-2 resumed a session whose issuer's path to the farm was frozen")
			}
			if n := metric(t, n2, `tlsfarm_cache_carried_total{result="admitted"}`); n > 0 {
				t.Fatalf("without -carry-sessions node-2 admitted %v carried copies", n)
			}
			// The session itself is sound: once node-1's broadcast
			// leaves, node-2 resumes it.
			px.Thaw()
			thawed = true
			waitUntil(t, 10*time.Second, func() bool { ok, _ := opensslFacts(t, n2, sess, ""); return ok },
				"the session from node-1 did not resume on node-2 after node-1's path thawed")
			return
		}
		if resumed2 {
			for _, series := range []string{`tlsfarm_cache_carried_total{result="admitted"}`, `tlsfarm_farm_carried_total{result="admitted"}`} {
				if n := metric(t, n2, series); n < 1 {
					t.Errorf("node-2 resumed the carried session, but %s = %v", series, n)
				}
			}
			px.Thaw()
			thawed = true
			return
		}
		// Not resumed: only a machine too slow to present the ID within
		// its young window (250ms) earns another try.
		if metric(t, n2, `tlsfarm_farm_carried_total{result="old"}`) <= old || attempt == attempts {
			t.Fatalf("with -carry-sessions node-2 did not resume node-1's carried session %v after its issue (carried: admitted %v, refused %v, old %v, gap %v, cut_off %v, off %v)",
				took.Round(time.Millisecond), metric(t, n2, `tlsfarm_farm_carried_total{result="admitted"}`),
				metric(t, n2, `tlsfarm_farm_carried_total{result="refused"}`), metric(t, n2, `tlsfarm_farm_carried_total{result="old"}`),
				metric(t, n2, `tlsfarm_farm_carried_total{result="gap"}`), metric(t, n2, `tlsfarm_farm_carried_total{result="cut_off"}`),
				metric(t, n2, `tlsfarm_farm_carried_total{result="off"}`))
		}
		px.Thaw()
		thawed = true
		waitUntil(t, 15*time.Second, isOK(n1), "node-1 did not come back to the farm after the thaw")
	}
}

// TestDaemonCarryNeedsWriteThrough: serve refuses -carry-sessions (or
// TLSFARM_CARRY_SESSIONS) without write-through, in one line naming the
// setting, with exit code 1.
func TestDaemonCarryNeedsWriteThrough(t *testing.T) {
	t.Parallel()
	secret, cert, key, _ := farmFiles(t)
	// The refusal comes before any connection: a Redis that is not there
	// does (a daemon that did start would serve degraded, and not exit).
	base := []string{"serve", "-listen", "127.0.0.1:0", "-admin", "off", "-cert", cert, "-key", key,
		"-farm", "redis://127.0.0.1:1/0", "-farm-secret", secret, "-farm-name", redistest.Farm(t)}
	for _, tt := range []struct {
		name  string
		args  []string
		env   []string
		where string
	}{
		{"flag", append(base[:len(base):len(base)], "-carry-sessions"), nil, "(flag -carry-sessions)"},
		{"env", base, []string{"TLSFARM_CARRY_SESSIONS=true"}, "($TLSFARM_CARRY_SESSIONS)"},
	} {
		code, stdout, stderr := runCmd(t, tt.args, tt.env...)
		want := "tlsfarm: farm.carry_sessions " + tt.where + ": needs farm.write_through"
		if code != 1 || !strings.HasPrefix(stderr, want) || strings.Count(strings.TrimSuffix(stderr, "\n"), "\n") != 0 || stdout != "" {
			t.Errorf("%s: serve with carry sessions and no write-through: exit %d, stdout %q, stderr %q; want exit 1 and one line starting %q",
				tt.name, code, stdout, stderr, want)
		}
	}
}
