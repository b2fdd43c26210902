package main

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/tlsfarm/tlsfarm/internal/nettest"
	"github.com/tlsfarm/tlsfarm/internal/testenv"
)

// TestDefaultServeAnswersOverTLS runs tlsfarm serve with no flags: one node
// on 127.0.0.1:8443 with a self-signed certificate whose fingerprint it
// logs, answering with the connection's facts. If another process holds
// the default ports, the addresses come from the environment instead (still
// no flags).
func TestDefaultServeAnswersOverTLS(t *testing.T) {
	t.Parallel()
	var env []string
	addr := "127.0.0.1:8443"
	if testenv.Reachable("127.0.0.1:8443") || testenv.Reachable("127.0.0.1:9443") {
		t.Log("the default ports are taken; moving the listeners with TLSFARM_LISTEN and TLSFARM_ADMIN_ADDRESS")
		env = []string{"TLSFARM_LISTEN=127.0.0.1:0", "TLSFARM_ADMIN_ADDRESS=127.0.0.1:0"}
		addr = ""
	}
	p := launchPlain(t, env)
	var logged string
	waitUntil(t, 15*time.Second, func() bool {
		m := regexp.MustCompile(`msg="tlsfarm ready".* listeners=\[([^\]]+)\]`).FindStringSubmatch(p.log())
		if m == nil {
			return false
		}
		if addr == "" {
			addr = m[1]
		}
		f := regexp.MustCompile(`sha256=([0-9A-F:]{95})`).FindStringSubmatch(p.log())
		if f != nil {
			logged = f[1]
		}
		return true
	}, "tlsfarm serve did not become ready:\n%s", p.log())
	if addr != "127.0.0.1:8443" && env == nil {
		t.Errorf("listening on %s, want 127.0.0.1:8443", addr)
	}

	cfg := &tls.Config{InsecureSkipVerify: true, ClientSessionCache: tls.NewLRUClientSessionCache(4), ServerName: "localhost"}
	_, body, cs := get(t, addr, cfg, "/")
	sum := sha256.Sum256(cs.PeerCertificates[0].Raw)
	if fp := strings.ToUpper(strings.ReplaceAll(fmt.Sprintf("% x", sum), " ", ":")); fp != logged {
		t.Errorf("served certificate %s, logged fingerprint %q", fp, logged)
	}
	if err := cs.PeerCertificates[0].VerifyHostname("localhost"); err != nil {
		t.Errorf("self-signed certificate: %v", err)
	}
	for _, want := range []string{`"tls_version": "TLS 1.3"`, `"resumed": false`, `"cipher_suite": "TLS_`, `"server_name": "localhost"`, `"node": "`} {
		if !strings.Contains(body, want) {
			t.Errorf("facts lack %s: %s", want, body)
		}
	}
	if f := getFacts(t, addr, cfg); !f.Resumed {
		t.Errorf("second connection did not resume: %+v", f)
	}
	p.stop()
}

// launchPlain starts tlsfarm serve with no arguments at all.
func launchPlain(t *testing.T, env []string) *proc {
	t.Helper()
	p := &proc{t: t, done: make(chan struct{})}
	p.cmd = exec.Command(binary, "serve")
	p.cmd.Env = environ(env...)
	out, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := out.Read(b)
			p.mu.Lock()
			p.raw.Write(b[:n])
			p.mu.Unlock()
			if err != nil {
				break
			}
		}
		p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

func TestTwoServerNamesGetTheirCertificates(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	aCert, aKey, a := writeCert(t, dir, "a", "a.example")
	bCert, bKey, b := writeCert(t, dir, "b", "b.example", "*.b.example")
	conf := writeFile(t, filepath.Join(dir, "tlsfarm.yaml"), fmt.Sprintf(`
listeners:
  - address: 127.0.0.1:0
    certificates:
      - cert: %s
        key: %s
      - names: [b.example, "*.b.example"]
        cert: %s
        key: %s
`, aCert, aKey, bCert, bKey), 0o644)
	p := serveProc(t, []string{"-config", conf})
	for name, want := range map[string]string{"a.example": a.Subject.CommonName, "b.example": b.Subject.CommonName, "www.b.example": b.Subject.CommonName, "unknown.example": a.Subject.CommonName} {
		cfg := clientFor(name, a, b)
		cfg.InsecureSkipVerify = name == "unknown.example" // served the default certificate, for another name
		_, _, cs := get(t, p.Listeners[0], cfg, "/")
		if got := cs.PeerCertificates[0].Subject.CommonName; got != want {
			t.Errorf("server name %s: got the certificate of %s, want %s", name, got, want)
		}
	}
}

func TestReverseProxyPassesResumedHeader(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var seen []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("X-TLS-Resumed")+" "+r.Header.Get("X-Forwarded-For")+" "+r.Header.Get("X-Forwarded-Proto"))
		mu.Unlock()
		io.WriteString(w, "hello from upstream")
	}))
	defer up.Close()
	dir := t.TempDir()
	cert, key, c := writeCert(t, dir, "c", "localhost")
	p := serveProc(t, []string{"-cert", cert, "-key", key, "-upstream", up.URL})
	cfg := clientFor("localhost", c)
	for range 2 {
		if _, body, _ := get(t, p.Listeners[0], cfg, "/"); body != "hello from upstream" {
			t.Fatalf("body %q", body)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"0 127.0.0.1 https", "1 127.0.0.1 https"}; strings.Join(seen, "|") != strings.Join(want, "|") {
		t.Errorf("upstream saw %q, want %q", seen, want)
	}
}

func TestTCPPassthroughEchoes(t *testing.T) {
	t.Parallel()
	echo := nettest.Echo(t)
	dir := t.TempDir()
	cert, key, c := writeCert(t, dir, "c", "localhost")
	p := serveProc(t, []string{"-cert", cert, "-key", key, "-upstream", "tcp://" + echo})
	conn, err := tls.Dial("tcp", p.Listeners[0], clientFor("localhost", c))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	msg := strings.Repeat("ping ", 10000)
	go func() { io.WriteString(conn, msg); conn.CloseWrite() }()
	back, err := io.ReadAll(conn)
	if err != nil || string(back) != msg {
		t.Fatalf("echoed %d of %d bytes (%v)", len(back), len(msg), err)
	}
	if conn.ConnectionState().NegotiatedProtocol != "" {
		t.Errorf("ALPN %q negotiated for a tcp upstream", conn.ConnectionState().NegotiatedProtocol)
	}
}

// TestReloadSwapsCertificateAndSessionsResume changes the certificate under a
// running daemon with SIGHUP: new clients get the new certificate, and a
// session issued before the reload still resumes. Then a broken
// configuration is rejected while the daemon keeps serving, and a change to
// a restart-only setting is named.
func TestReloadSwapsCertificateAndSessionsResume(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	oldCert, oldKey, old := writeCert(t, dir, "old", "localhost")
	newCert, newKey, neu := writeCert(t, dir, "new", "localhost")
	conf := filepath.Join(dir, "tlsfarm.yaml")
	write := func(cert, key, extra string) {
		writeFile(t, conf, fmt.Sprintf("listeners:\n  - address: 127.0.0.1:0\n    certificates:\n      - cert: %s\n        key: %s\n%s", cert, key, extra), 0o644)
	}
	write(oldCert, oldKey, "")
	p := serveProc(t, []string{"-config", conf})
	addr := p.Listeners[0]
	client := clientFor("localhost", old, neu)
	if f := getFacts(t, addr, client); f.Resumed {
		t.Fatal("first connection resumed")
	}

	write(newCert, newKey, "")
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitLog("reload applied", 10*time.Second)
	_, _, cs := get(t, addr, clientFor("localhost", neu), "/")
	if !cs.PeerCertificates[0].Equal(neu) {
		t.Error("a new client got the old certificate after the reload")
	}
	if f := getFacts(t, addr, client); !f.Resumed {
		t.Error("the session issued before the reload did not resume")
	}

	writeFile(t, conf, "listeners: [\n", 0o644)
	p.cmd.Process.Signal(syscall.SIGHUP)
	rejected := p.waitLog("reload rejected; the running configuration is unchanged", 10*time.Second)
	if !strings.Contains(fmt.Sprint(rejected["err"]), "malformed YAML") {
		t.Errorf("rejection says %v", rejected["err"])
	}
	if f := getFacts(t, addr, client); !f.Resumed {
		t.Error("the daemon stopped resuming after a rejected reload")
	}

	write(newCert, newKey, "cache:\n  size: 5\n")
	p.cmd.Process.Signal(syscall.SIGHUP)
	partial := p.waitLog("reload applied, except settings that need a restart: they keep their running values until tlsfarm restarts", 10*time.Second)
	if partial["restart_needed"] != "cache.size" {
		t.Errorf("restart_needed = %v", partial["restart_needed"])
	}
	if n := metric(t, p, `tlsfarm_reloads_total{result="rejected"}`); n != 1 {
		t.Errorf("rejected reloads = %v", n)
	}
	p.stop()
}

func TestMetricsCountFullThenResumed(t *testing.T) {
	t.Parallel()
	p := serveProc(t, nil)
	cfg := &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	full := `tlsfarm_handshakes_total{kind="full",version="TLS 1.3"}`
	resumed := `tlsfarm_handshakes_total{kind="resumed",version="TLS 1.3"}`
	getFacts(t, p.Listeners[0], cfg)
	if f, r := metric(t, p, full), metric(t, p, resumed); f != 1 || r != -1 {
		t.Errorf("after a full handshake: full %v, resumed %v", f, r)
	}
	getFacts(t, p.Listeners[0], cfg)
	if f, r := metric(t, p, full), metric(t, p, resumed); f != 1 || r != 1 {
		t.Errorf("after a resumed handshake: full %v, resumed %v", f, r)
	}
	if n := metric(t, p, "tlsfarm_cache_sessions"); n < 1 {
		t.Errorf("tlsfarm_cache_sessions = %v", n)
	}
}

func TestDeleteSessionStopsResumption(t *testing.T) {
	t.Parallel()
	const token = "delete-test-token-0123456789"
	p := serveProc(t, []string{"-debug-expose-session-id"}, "TLSFARM_ADMIN_TOKEN="+token)
	cfg := &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	f := getFacts(t, p.Listeners[0], cfg)
	if f.SessionID == "" {
		t.Fatal("no session ID in the facts with debug.expose_session_id on")
	}
	if code, _ := adminDo(t, p, "DELETE", "/sessions/"+f.SessionID, ""); code != http.StatusUnauthorized {
		t.Errorf("DELETE without the token: %d", code)
	}
	if code, body := adminDo(t, p, "DELETE", "/sessions/"+f.SessionID, token); code != http.StatusOK {
		t.Fatalf("DELETE: %d %s", code, body)
	}
	if f := getFacts(t, p.Listeners[0], cfg); f.Resumed {
		t.Error("the revoked session resumed")
	}
	if code, _ := adminDo(t, p, "DELETE", "/sessions/"+f.SessionID, token); code != http.StatusNotFound {
		t.Errorf("second DELETE: %d, want 404", code)
	}
}

func TestSessionIDHiddenByDefault(t *testing.T) {
	t.Parallel()
	p := serveProc(t, nil)
	_, body, _ := get(t, p.Listeners[0], &tls.Config{InsecureSkipVerify: true}, "/")
	if strings.Contains(body, "session_id") {
		t.Errorf("facts show the session ID: %s", body)
	}
}

func TestProxyProtocolV2GivesClientAddressUpstream(t *testing.T) {
	t.Parallel()
	xff := make(chan string, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		xff <- r.Header.Get("X-Forwarded-For")
	}))
	defer up.Close()
	p := serveProc(t, []string{"-upstream", up.URL, "-proxy-protocol", "-proxy-protocol-trusted", "127.0.0.1/32"})
	raw, err := net.Dial("tcp", p.Listeners[0])
	if err != nil {
		t.Fatal(err)
	}
	h := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP("198.51.100.23"), Port: 50123}, raw.RemoteAddr())
	if _, err := h.WriteTo(raw); err != nil {
		t.Fatal(err)
	}
	request(t, tls.Client(raw, &tls.Config{InsecureSkipVerify: true}), "/")
	if got := <-xff; got != "198.51.100.23" {
		t.Errorf("upstream saw X-Forwarded-For %q", got)
	}
}

func TestStalledHandshakeIsCut(t *testing.T) {
	t.Parallel()
	p := serveProc(t, []string{"-handshake-timeout", "500ms"})
	c, err := net.Dial("tcp", p.Listeners[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01}) // the start of a ClientHello, then silence
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	t0 := time.Now()
	_, err = io.ReadAll(c)
	if took := time.Since(t0); err != nil || took < 400*time.Millisecond || took > 5*time.Second {
		t.Errorf("connection ended after %v (%v), want about 500ms", took, err)
	}
	waitUntil(t, 5*time.Second, func() bool { return metric(t, p, `tlsfarm_handshake_failures_total{reason="timeout"}`) == 1 },
		"timeout not counted")
}

func TestKeygenWritesOwnerOnlyAndNeverOverwrites(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "farm.secret")
	if code, out, errs := runCmd(t, []string{"keygen", "-out", path}); code != 0 || !strings.Contains(out, path) {
		t.Fatalf("keygen: %d %s %s", code, out, errs)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret file: %v %v", fi.Mode(), err)
	}
	before, _ := os.ReadFile(path)
	code, _, errs := runCmd(t, []string{"keygen", "-out", path})
	after, _ := os.ReadFile(path)
	if code == 0 || !strings.Contains(errs, "refusing to overwrite") || string(before) != string(after) {
		t.Errorf("second keygen: exit %d, %q", code, errs)
	}
	if code, _, _ := runCmd(t, []string{"keygen"}); code == 0 {
		t.Error("keygen without -out succeeded")
	}
	// -h is a request for help, as for the other commands, not an error.
	if code, _, errs := runCmd(t, []string{"keygen", "-h"}); code != 0 || !strings.Contains(errs, "-out") {
		t.Errorf("keygen -h: exit %d, %q; want 0 and the flags", code, errs)
	}
}

// TestKeygenLeavesNoFileOnFailure: a keygen that cannot write the secret
// (here: a file size limit of 0, so the write fails with EFBIG) leaves no
// empty or partial secret file behind, which would be mistaken for a
// secret and make the next keygen refuse to overwrite it.
func TestKeygenLeavesNoFileOnFailure(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "farm.secret")
	cmd := exec.Command("/bin/sh", "-c", `ulimit -f 0 && exec "$0" keygen -out "$1"`, binary, path)
	cmd.Env = environ()
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Run(); err == nil {
		t.Fatalf("keygen under ulimit -f 0 succeeded; stderr %q", errb.String())
	}
	if !strings.Contains(errb.String(), "tlsfarm keygen:") {
		t.Errorf("keygen failed without saying why: %q", errb.String())
	}
	if fi, err := os.Lstat(path); err == nil {
		t.Errorf("keygen failed but left %s (%d bytes)", path, fi.Size())
	}
	if code, _, errs := runCmd(t, []string{"keygen", "-out", path}); code != 0 {
		t.Errorf("keygen after the failed one: exit %d, %q", code, errs)
	}
}

// TestProbeIsWired runs tlsfarm probe against a daemon.
func TestProbeIsWired(t *testing.T) {
	t.Parallel()
	p := serveProc(t, nil)
	code, out, errs := runCmd(t, []string{"probe", "-targets", p.Listeners[0], "-n", "6", "-insecure", "-sni", "localhost", "-json"})
	if code != 0 || !strings.Contains(out, "{") {
		t.Errorf("probe: exit %d\nstdout %s\nstderr %s", code, out, errs)
	}
	if n := metric(t, p, `tlsfarm_handshakes_total{kind="resumed",version="TLS 1.3"}`); n < 1 {
		t.Errorf("the probe resumed no session (%v); output %s", n, out)
	}
}
