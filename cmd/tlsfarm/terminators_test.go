package main

// Helpers for the tests of tlsfarm keys against real nginx and HAProxy
// servers (Debian's nginx-light and haproxy packages), each started by the
// test on a free loopback port with its own directory, and stopped after.

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/logtest"
	"github.com/tlsfarm/tlsfarm/internal/testenv"
	"github.com/tlsfarm/tlsfarm/keyexport"
	"github.com/tlsfarm/tlsfarm/ticket"
)

// needProgram returns the path of a server program, or skips the test
// loudly (fails it under TLSFARM_REQUIRE_SERVICES=1) if it is missing.
func needProgram(t *testing.T, name, pkg string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p
		}
	}
	testenv.Skip(t, "%s is not installed (apt-get install -y %s)", name, pkg)
	return ""
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// privateDir returns a new directory of mode 0700 for key files.
func privateDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// startAgent runs tlsfarm keys in the test's process with the given flags
// (the admin listener on a free port unless args give one), and stops it
// when the test ends. Its log is shown if the test fails.
func startAgent(t *testing.T, name string, args ...string) *keysAgent {
	t.Helper()
	if !strings.Contains(strings.Join(args, " "), "-admin ") {
		args = append(args, "-admin", "127.0.0.1:0")
	}
	var errs bytes.Buffer
	o, code := parseKeys(append([]string{"-node", name}, args...), func(string) string { return "" }, &errs)
	if o == nil {
		t.Fatalf("tlsfarm keys %s: exit %d: %s", strings.Join(args, " "), code, errs.String())
	}
	logs := &logtest.Buffer{}
	a, err := startKeys(o, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatalf("tlsfarm keys: %v", err)
	}
	t.Cleanup(func() {
		a.stop()
		if t.Failed() {
			t.Logf("tlsfarm keys %s log:\n%s", name, logs.String())
		}
	})
	return a
}

// waitExported waits until every target of a (its on-change command
// aside) has exported a key set of at least the given epoch, and returns
// the lowest epoch they hold.
func waitExported(t *testing.T, a *keysAgent, epoch uint64, timeout time.Duration) uint64 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := a.exporter.Status()
		low := st[0].Epoch
		for _, s := range st {
			if s.Target != keyexport.OnChangeTarget {
				low = min(low, s.Epoch)
			}
		}
		if low >= epoch {
			return low
		}
		if time.Now().After(deadline) {
			t.Fatalf("targets not at epoch %d within %v: %+v", epoch, timeout, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A server is an nginx or HAProxy started by a test.
type server struct {
	t    *testing.T
	name string
	dir  string
	port int
	args []string // the command line that starts it

	// setPort rewrites the server's configuration for another port, when
	// its first start found its port taken.
	setPort func(port int)
	started bool // it has started once: a restart keeps its port

	mu   sync.Mutex
	cmd  *exec.Cmd
	out  *logtest.Buffer
	done chan struct{}
}

func (s *server) addr() string { return fmt.Sprintf("127.0.0.1:%d", s.port) }

// start runs the server in the foreground, as a child of the test, and
// waits until it answers as itself. If something took the server's port
// before it could listen on it, the first start moves the server to
// another port (rewriting its configuration); a restart waits for the
// port, for at most testenv.StartTimeout.
func (s *server) start() {
	s.t.Helper()
	deadline := time.Now().Add(testenv.StartTimeout)
	for attempt := 1; ; attempt++ {
		err := s.launch(deadline)
		if err == nil {
			s.started = true
			return
		}
		switch {
		case !errors.Is(err, testenv.ErrPortTaken):
		case !s.started && attempt < 8:
			s.t.Logf("%s: port %d was taken before it could listen on it; trying another", s.name, s.port)
			s.port = freePort(s.t)
			s.setPort(s.port)
			continue
		case s.started && time.Now().Before(deadline):
			time.Sleep(100 * time.Millisecond)
			continue
		}
		s.t.Fatalf("%s: %v", s.name, err)
	}
}

// launch starts the server's process once and waits until it answers, or
// exits (ErrPortTaken if it says its address is in use), or deadline
// passes.
func (s *server) launch(deadline time.Time) error {
	s.mu.Lock()
	s.out = &logtest.Buffer{}
	s.cmd = exec.Command(s.args[0], s.args[1:]...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("starting: %v", err)
	}
	done := make(chan struct{})
	s.done = done
	cmd := s.cmd
	go func() { cmd.Wait(); close(done) }()
	s.mu.Unlock()
	for !s.answers() {
		select {
		case <-done:
			s.mu.Lock()
			s.cmd = nil
			s.mu.Unlock()
			out := s.log()
			if strings.Contains(strings.ToLower(out), "address already in use") {
				return fmt.Errorf("%w: %s", testenv.ErrPortTaken, out)
			}
			return fmt.Errorf("exited at start: %s\n%s", cmd.ProcessState, out)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("does not answer on %s within %v:\n%s", s.addr(), testenv.StartTimeout, s.log())
		}
	}
	return nil
}

// answers reports whether the server answers an HTTP request over TLS on
// its port with its name (not some other server that took the port).
func (s *server) answers() bool {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", s.addr(),
		&tls.Config{ServerName: "localhost", InsecureSkipVerify: true})
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
	body, _ := io.ReadAll(c)
	return bytes.Contains(body, []byte(s.name))
}

// stop stops the server and the workers it started (its process group).
func (s *server) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	}
	s.cmd = nil
}

func (s *server) pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd.Process.Pid
}

func (s *server) log() string {
	var b strings.Builder
	if s.out != nil {
		b.WriteString(s.out.String())
	}
	if el, err := os.ReadFile(filepath.Join(s.dir, "error.log")); err == nil {
		b.Write(el)
	}
	return b.String()
}

// newServer prepares a server whose stop and log run at the test's end.
func newServer(t *testing.T, name, dir string, args []string, port int, setPort func(int)) *server {
	s := &server{t: t, name: name, dir: dir, args: args, port: port, setPort: setPort}
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, s.log())
		}
	})
	return s
}

// newNginx prepares an nginx with its own prefix directory that serves TLS
// on a free port with the key files of an nginx target in keyDir, and
// returns it with the command that makes it reload. Start it once the
// files are there.
func newNginx(t *testing.T, name, keyDir string, keep int, cert, key string) (*server, string) {
	t.Helper()
	bin := needProgram(t, "nginx", "nginx-light")
	prefix := t.TempDir()
	port := freePort(t)
	conf := filepath.Join(prefix, "nginx.conf")
	var keys []string
	for i := range keyexport.NginxFileCount(keep) {
		keys = append(keys, filepath.Join(keyDir, keyexport.NginxFileName(i)))
	}
	write := func(port int) {
		cfg := testenv.NginxConfig(prefix, port, cert, key, keys, name)
		if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(port)
	args := []string{bin, "-c", conf, "-p", prefix}
	reload := fmt.Sprintf("%s -c %s -p %s -s reload", bin, conf, prefix)
	return newServer(t, name, prefix, args, port, write), reload
}

// newHAProxy prepares an HAProxy that serves TLS on a free port with the
// ticket keys in keysFile, and a runtime API socket at level admin. It
// answers every HTTP request itself.
func newHAProxy(t *testing.T, name, keysFile, cert, key string) (s *server, socket string) {
	t.Helper()
	bin := needProgram(t, "haproxy", "haproxy")
	dir := t.TempDir()
	port := freePort(t)
	pem := filepath.Join(dir, "crt.pem")
	c, _ := os.ReadFile(cert)
	k, _ := os.ReadFile(key)
	if err := os.WriteFile(pem, append(c, k...), 0o600); err != nil {
		t.Fatal(err)
	}
	socket = filepath.Join(dir, "admin.sock")
	conf := filepath.Join(dir, "haproxy.cfg")
	write := func(port int) {
		cfg := fmt.Sprintf(`global
  stats socket %[1]s level admin
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 1s
  timeout client 10s
  timeout server 10s
frontend tls
  bind 127.0.0.1:%[2]d ssl crt %[3]s tls-ticket-keys %[4]s ssl-min-ver TLSv1.2
  http-request return status 200 content-type text/plain string %[5]s
`, socket, port, pem, keysFile, name)
		if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(port)
	return newServer(t, name, dir, []string{bin, "-db", "-f", conf}, port, write), socket
}

// resume connects to addr with openssl s_client at the given TLS version
// ("1.2" or "1.3"), offering the session in sessIn if not "", saving the
// session it ends with to sessOut if not "", and reports whether the
// session was resumed. It sends one HTTP/1.0 request and reads the answer,
// so that TLS 1.3 tickets arrive before the connection closes.
func resume(t *testing.T, addr, version, sessIn, sessOut string) (bool, error) {
	path, err := exec.LookPath("openssl")
	if err != nil {
		testenv.Skip(t, "openssl is not installed")
	}
	args := []string{"s_client", "-connect", addr, "-servername", "localhost", "-ign_eof", "-tls" + strings.ReplaceAll(version, ".", "_")}
	if sessIn != "" {
		args = append(args, "-sess_in", sessIn)
	}
	if sessOut != "" {
		os.Remove(sessOut) // so that a session not saved is not an old one
		args = append(args, "-sess_out", sessOut)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdin = strings.NewReader("GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
	out, err := cmd.CombinedOutput()
	s := redactMasterKey(string(out))
	if _, serr := os.Stat(sessOut); err == nil && sessOut != "" && sessIn != "" && serr != nil {
		// s_client saves only new sessions: a TLS 1.2 resumption that got
		// no new ticket goes on with the session it offered.
		b, rerr := os.ReadFile(sessIn)
		if rerr != nil {
			return false, rerr
		}
		os.WriteFile(sessOut, b, 0o600)
	}
	switch {
	case err != nil:
		return false, fmt.Errorf("openssl s_client %s: %v\n%s", strings.Join(args[1:], " "), err, s)
	case strings.Contains(s, "\nReused, "):
		return true, nil
	case strings.Contains(s, "\nNew, "):
		return false, nil
	}
	return false, fmt.Errorf("openssl s_client %s: no handshake summary in:\n%s", strings.Join(args[1:], " "), s)
}

// redactMasterKey drops s_client's Master-Key line from its output, so that
// a failing test prints no session secret.
func redactMasterKey(s string) string {
	lines := strings.Split(s, "\n")
	out := lines[:0]
	for _, l := range lines {
		if !strings.Contains(l, "Master-Key:") && !strings.Contains(l, "Resumption PSK:") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// mustResume fails the test unless resume's answer is want.
func mustResume(t *testing.T, want bool, what, addr, version, sessIn, sessOut string) {
	t.Helper()
	got, err := resume(t, addr, version, sessIn, sessOut)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("%s (TLS %s): resumed = %v, want %v", what, version, got, want)
	}
}

// ticketCatcher is a client session cache that keeps the last ticket.
type ticketCatcher struct {
	mu     sync.Mutex
	ticket []byte
}

func (c *ticketCatcher) Get(string) (*tls.ClientSessionState, bool) { return nil, false }
func (c *ticketCatcher) Put(_ string, cs *tls.ClientSessionState) {
	if cs == nil {
		return
	}
	if tk, _, err := cs.ResumptionState(); err == nil {
		c.mu.Lock()
		c.ticket = append([]byte(nil), tk...)
		c.mu.Unlock()
	}
}

// serverTicket returns a session ticket that the server at addr issues to a
// Go client at the given version.
func serverTicket(t *testing.T, addr string, version uint16) []byte {
	t.Helper()
	cc := &ticketCatcher{}
	cfg := &tls.Config{InsecureSkipVerify: true, ServerName: "localhost", MinVersion: version, MaxVersion: version, ClientSessionCache: cc}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
	io.ReadAll(c) // TLS 1.3 tickets arrive with the answer
	c.Close()
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.ticket == nil {
		t.Fatalf("%s issued no session ticket at version %x", addr, version)
	}
	return cc.ticket
}

// openTicket opens an OpenSSL session ticket (RFC 5077's recommended
// layout: 16-byte key name, 16-byte IV, AES-256-CBC ciphertext, HMAC-SHA256
// of all that) with the 80-byte key k whose name, AES key and HMAC key sit
// at the given offsets. It checks the name, the MAC and the padding, and
// that the plaintext is a DER SEQUENCE (OpenSSL's SSL_SESSION): so it
// proves that the terminator reads each part of the key from where the
// exporter wrote it.
func openTicket(tk []byte, k keyexport.Key80, aesAt, hmacAt int) error {
	if len(tk) < 16+16+16+32 || (len(tk)-64)%16 != 0 {
		return fmt.Errorf("ticket of %d bytes is not in OpenSSL's layout", len(tk))
	}
	if !bytes.Equal(tk[:16], k[:16]) {
		return errors.New("the ticket's key name is not this key's")
	}
	body, mac := tk[:len(tk)-32], tk[len(tk)-32:]
	h := hmac.New(sha256.New, k[hmacAt:hmacAt+32])
	h.Write(body)
	if !hmac.Equal(h.Sum(nil), mac) {
		return errors.New("the MAC does not verify with the HMAC key")
	}
	block, _ := aes.NewCipher(k[aesAt : aesAt+32])
	ct := append([]byte(nil), body[32:]...)
	cipher.NewCBCDecrypter(block, body[16:32]).CryptBlocks(ct, ct)
	pad := int(ct[len(ct)-1])
	if pad < 1 || pad > 16 || !bytes.Equal(ct[len(ct)-pad:], bytes.Repeat([]byte{byte(pad)}, pad)) {
		return errors.New("bad padding after decryption with the AES key")
	}
	if ct[0] != 0x30 {
		return fmt.Errorf("the plaintext starts with %#x, not a DER SEQUENCE", ct[0])
	}
	return nil
}

// openWithRing opens tk with whichever key of the ring's set named it,
// derived by derive with the layout's offsets.
func openWithRing(t *testing.T, r *ticket.Ring, tk []byte, derive func(ticket.Key) keyexport.Key80, aesAt, hmacAt int) {
	t.Helper()
	st := r.State()
	for _, k := range st.Keys() {
		if k80 := derive(k); bytes.Equal(k80[:16], tk[:16]) {
			if err := openTicket(tk, k80, aesAt, hmacAt); err != nil {
				t.Fatalf("a ticket named by key %v: %v", k80, err)
			}
			return
		}
	}
	t.Fatalf("no key of the farm's set (epoch %d) names the ticket", st.Epoch)
}
