package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/config"
)

// A -config that names a named pipe is refused at start and on SIGHUP:
// reading it would block until something writes to it, and a reload stuck
// so would hold up the signal loop, SIGTERM included.
func TestConfigFileMustBeRegular(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fifo := filepath.Join(dir, "pipe.yaml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skip(err)
	}
	code, _, stderr := runCmd(t, []string{"serve", "-config", fifo, "-admin", "off"})
	if code != 1 || !strings.Contains(stderr, "not a regular file") {
		t.Errorf("serve -config FIFO: exit %d, %q", code, stderr)
	}

	conf := writeFile(t, filepath.Join(dir, "tlsfarm.yaml"), "listeners:\n  - address: 127.0.0.1:0\n", 0o644)
	p := serveProc(t, []string{"-config", conf})
	if err := os.Remove(conf); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(conf, 0o600); err != nil {
		t.Fatal(err)
	}
	p.cmd.Process.Signal(syscall.SIGHUP)
	rejected := p.waitLog("reload rejected; the running configuration is unchanged", 5*time.Second)
	if !strings.Contains(rejected["err"].(string), "not a regular file") {
		t.Errorf("rejection says %v", rejected["err"])
	}
	p.stop()
}

// A listener added to (or removed from) the file needs a restart, as its
// address does: the reload still applies the settings that reload, such
// as a renewed certificate on the listeners that run, and names the
// listeners as needing a restart.
func TestReloadWithAnotherListenerAppliesTheRest(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	oldCert, oldKey, _ := writeCert(t, dir, "old", "localhost")
	newCert, newKey, neu := writeCert(t, dir, "new", "localhost")
	conf := filepath.Join(dir, "tlsfarm.yaml")
	listener := "  - address: %s\n    certificates:\n      - cert: %s\n        key: %s\n"
	writeFile(t, conf, "listeners:\n"+fmt.Sprintf(listener, "127.0.0.1:0", oldCert, oldKey), 0o644)
	p := serveProc(t, []string{"-config", conf})

	writeFile(t, conf, "listeners:\n"+fmt.Sprintf(listener, "127.0.0.1:0", newCert, newKey)+fmt.Sprintf(listener, "127.0.0.2:0", newCert, newKey), 0o644)
	p.cmd.Process.Signal(syscall.SIGHUP)
	partial := p.waitLog("reload applied, except settings that need a restart: they keep their running values until tlsfarm restarts", 5*time.Second)
	if !strings.Contains(fmt.Sprint(partial["restart_needed"]), "listeners (1 entries, now 2)") {
		t.Errorf("restart_needed = %v", partial["restart_needed"])
	}
	if _, _, cs := get(t, p.Listeners[0], clientFor("localhost", neu), "/"); !cs.PeerCertificates[0].Equal(neu) {
		t.Error("the running listener kept the old certificate")
	}
	if n := metric(t, p, `tlsfarm_reloads_total{result="rejected"}`); n != 0 {
		t.Errorf("rejected reloads = %v", n)
	}
	p.stop()
}

// debug.expose_session_id reloads, and turning it on by a reload logs the
// warning a start with it logs: the built-in upstream then hands every
// client its session ID.
func TestReloadExposingSessionIDWarns(t *testing.T) {
	t.Parallel()
	conf := writeFile(t, filepath.Join(t.TempDir(), "tlsfarm.yaml"), "listeners:\n  - address: 127.0.0.1:0\n", 0o644)
	p := serveProc(t, []string{"-config", conf})
	const warning = "debug.expose_session_id is on: the built-in upstream shows each client its session ID; never use this in production"
	writeFile(t, conf, "listeners:\n  - address: 127.0.0.1:0\ndebug:\n  expose_session_id: true\n", 0o644)
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitLog("reload applied", 5*time.Second)
	if f := getFacts(t, p.Listeners[0], &tls.Config{InsecureSkipVerify: true, ClientSessionCache: tls.NewLRUClientSessionCache(1)}); f.SessionID == "" {
		t.Fatal("the reload did not expose the session ID")
	}
	if p.countLog(warning) != 1 {
		t.Errorf("no warning when a reload exposed session IDs:\n%s", p.log())
	}
	p.stop()
}

// farm.revocation_file (and its .journal, .lifecycle, .sent and
// .sent.journal files beside it), read at start, is refused if it is not a
// regular file: a named pipe there blocked the start until something
// wrote to it.
func TestRevocationFileMustBeRegular(t *testing.T) {
	t.Parallel()
	secret, _, _, _ := farmFiles(t)
	dir := t.TempDir()
	for name, suffix := range map[string]string{"revocations": "", "lifecycle": ".lifecycle", "sent": ".sent", "journal": ".sent.journal", "revjournal": ".journal"} {
		file := filepath.Join(dir, name)
		fifo := file + suffix
		if err := syscall.Mkfifo(fifo, 0o600); err != nil {
			t.Skip(err)
		}
		code, _, stderr := runCmd(t, []string{"serve", "-listen", "127.0.0.1:0", "-admin", "off",
			"-farm", "redis://127.0.0.1:1", "-farm-secret", secret, "-farm-name", "r3-revfile-" + name, "-revocation-file", file})
		if code != 1 || !strings.Contains(stderr, "farm.revocation_file") || !strings.Contains(stderr, "not a regular file") {
			t.Errorf("%s: exit %d, %q", name, code, stderr)
		}
	}
}

// A certificate that has expired, or is not valid yet, is refused with an
// error that names it and says so: a reload keeps the running certificate
// (a renewal script that installed the wrong file would otherwise have
// every verifying client fail), and check, like a start, exits 1. A key
// that does not match its certificate is refused the same way.
func TestReloadRefusesExpiredCertificate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	goodCert, goodKey, good := writeCert(t, dir, "good", "localhost")
	now := time.Now()
	oldCert, oldKey, _ := writeCertValid(t, dir, "expired", now.Add(-48*time.Hour), now.Add(-time.Hour), "localhost")
	earlyCert, earlyKey, _ := writeCertValid(t, dir, "early", now.Add(24*time.Hour), now.Add(48*time.Hour), "localhost")
	conf := filepath.Join(dir, "tlsfarm.yaml")
	write := func(cert, key string) {
		writeFile(t, conf, fmt.Sprintf("listeners:\n  - address: 127.0.0.1:0\n    certificates:\n      - cert: %s\n        key: %s\n", cert, key), 0o644)
	}
	write(goodCert, goodKey)
	p := serveProc(t, []string{"-config", conf})
	addr := p.Listeners[0]
	open, err := tls.Dial("tcp", addr, clientFor("localhost", good))
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()

	const rejected = "reload rejected; the running configuration is unchanged"
	for i, c := range []struct{ cert, key, want string }{
		{oldCert, oldKey, "expired"},
		{earlyCert, earlyKey, "not valid before"},
		{goodCert, oldKey, "does not match"},
	} {
		write(c.cert, c.key)
		p.cmd.Process.Signal(syscall.SIGHUP)
		waitUntil(t, 10*time.Second, func() bool { return p.countLog(rejected) == i+1 || p.countLog("reload applied") > 0 },
			"no reload line for %s:\n%s", c.cert, p.log())
		if p.countLog("reload applied") > 0 {
			t.Fatalf("the reload with %s and %s was applied", c.cert, c.key)
		}
		var why string
		p.mu.Lock()
		for _, l := range p.lines {
			if l["msg"] == rejected {
				why = fmt.Sprint(l["err"])
			}
		}
		p.mu.Unlock()
		if !strings.Contains(why, c.want) || !strings.Contains(why, "listeners[0].certificates[0]") {
			t.Errorf("reload with %s: the rejection says %q, want it to name the certificate and say %q", c.cert, why, c.want)
		}
		if _, _, cs := get(t, addr, clientFor("localhost", good), "/"); !cs.PeerCertificates[0].Equal(good) {
			t.Errorf("after the rejected reload with %s, a new client got another certificate", c.cert)
		}
		if n := metric(t, p, `tlsfarm_reloads_total{result="rejected"}`); n != float64(i+1) {
			t.Errorf("rejected reloads = %v, want %d", n, i+1)
		}
	}
	if _, _, cs := request(t, open, "/"); !cs.PeerCertificates[0].Equal(good) {
		t.Error("the connection opened before the reloads changed")
	}

	code, _, stderr := runCmd(t, []string{"check", "-reload", "-listen", "127.0.0.1:0", "-admin", "off", "-cert", oldCert, "-key", oldKey})
	if code != 1 || !strings.Contains(stderr, "expired") || !strings.Contains(stderr, oldCert) {
		t.Errorf("check with an expired certificate: exit %d, %q", code, stderr)
	}
	p.stop()
}

// A reload matches the file's listeners to the running ones by address,
// not by their place in the file: removing the first listener from the
// file must not give the second one's certificate and upstream to the
// first one's socket (it keeps its settings until the restart), and listing
// the same listeners in another order changes nothing.
func TestReloadMatchesListenersByAddress(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	aCert, aKey, a := writeCert(t, dir, "a", "localhost")
	a2Cert, a2Key, a2 := writeCert(t, dir, "a2", "localhost")
	bCert, bKey, b := writeCert(t, dir, "b", "localhost")
	conf := filepath.Join(dir, "tlsfarm.yaml")
	listener := func(addr, cert, key string) string {
		return fmt.Sprintf("  - address: %s\n    certificates:\n      - cert: %s\n        key: %s\n", addr, cert, key)
	}
	la, lb := listener("127.0.0.1:0", aCert, aKey), listener("127.0.0.2:0", bCert, bKey)
	writeFile(t, conf, "listeners:\n"+la+lb, 0o644)
	p := serveProc(t, []string{"-config", conf})
	served := func(i int) string {
		_, _, cs := get(t, p.Listeners[i], clientFor("localhost", a, a2, b), "/")
		for name, c := range map[string]*x509.Certificate{"a": a, "a2": a2, "b": b} {
			if cs.PeerCertificates[0].Equal(c) {
				return name
			}
		}
		return "another"
	}
	if s0, s1 := served(0), served(1); s0 != "a" || s1 != "b" {
		t.Fatalf("at start the listeners serve %s and %s", s0, s1)
	}

	const partial = "reload applied, except settings that need a restart: they keep their running values until tlsfarm restarts"
	writeFile(t, conf, "listeners:\n"+lb, 0o644)
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitUntil(t, 10*time.Second, func() bool { return p.countLog(partial)+p.countLog("reload applied") == 1 }, "no reload line:\n%s", p.log())
	if s0, s1 := served(0), served(1); s0 != "a" || s1 != "b" {
		t.Errorf("after removing the first listener from the file, the listeners serve %s and %s, want a and b", s0, s1)
	}
	if p.countLog(partial) != 1 {
		t.Fatal("removing a listener was not reported as needing a restart")
	}
	if r := fmt.Sprint(p.waitLog(partial, time.Second)["restart_needed"]); r != "listeners (2 entries, now 1: 127.0.0.1:0 kept until the restart)" {
		t.Errorf("restart_needed = %q", r)
	}

	writeFile(t, conf, "listeners:\n"+lb+listener("127.0.0.1:0", a2Cert, a2Key), 0o644)
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitUntil(t, 10*time.Second, func() bool { return p.countLog(partial)+p.countLog("reload applied") == 2 }, "no reload line:\n%s", p.log())
	if s0, s1 := served(0), served(1); s0 != "a2" || s1 != "b" {
		t.Errorf("after listing the listeners in another order, they serve %s and %s, want a2 and b", s0, s1)
	}
	if p.countLog("reload applied") != 1 {
		t.Errorf("reordering the listeners was reported as needing a restart:\n%s", p.log())
	}
	p.stop()
}

func TestPairListeners(t *testing.T) {
	ls := func(addrs ...string) []config.Listener {
		var out []config.Listener
		for _, a := range addrs {
			out = append(out, config.Listener{Address: a})
		}
		return out
	}
	for _, tt := range []struct {
		running, next []string
		pair, added   []int
	}{
		{[]string{"a"}, []string{"a2"}, []int{0}, nil},
		{[]string{"a", "b"}, []string{"b"}, []int{-1, 0}, nil},
		{[]string{"a", "b"}, []string{"b", "a"}, []int{1, 0}, nil},
		{[]string{"a"}, []string{"a", "c"}, []int{0}, []int{1}},
		{[]string{"a", "b"}, []string{"c", "b"}, []int{0, 1}, nil},
		{[]string{"x", "x"}, []string{"x"}, []int{0, -1}, nil},
	} {
		pair, added := pairListeners(ls(tt.running...), ls(tt.next...))
		if !slices.Equal(pair, tt.pair) || !slices.Equal(added, tt.added) {
			t.Errorf("%v -> %v: pair %v added %v, want %v %v", tt.running, tt.next, pair, added, tt.pair, tt.added)
		}
	}
}
