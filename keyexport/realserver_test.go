package keyexport

// Helpers for the tests of this package against a real nginx (Debian's
// nginx-light), started on a free loopback port with a prefix directory of
// its own, and openssl s_client as the client.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/logtest"
	"github.com/tlsfarm/tlsfarm/internal/testenv"
)

// needBinary returns the path of program name, or skips the test loudly
// (fails it under TLSFARM_REQUIRE_SERVICES=1).
func needBinary(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	testenv.Skip(t, "%s is not installed", name)
	return ""
}

// privateKeyDir returns a new directory of mode 0700 for key files.
func privateKeyDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// certFiles writes a self-signed certificate for localhost and its key as
// PEM files in dir.
func certFiles(t *testing.T, dir string) (cert, key string) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// A termServer is an nginx or HAProxy started by a test, reading the key
// files of a target.
type termServer struct {
	t       *testing.T
	name    string
	args    []string // its command line
	prefix  string   // its directory
	port    int
	write   func(port int) error // writes its configuration for a port
	started bool                 // it started once: a restart keeps its port
	cmd     *exec.Cmd
	done    chan struct{}
	out     *logtest.Buffer
}

// newTermServer prepares a server run by args in prefix, on the port that
// write (which writes its configuration for a port) is given, and stops
// it when the test ends.
func newTermServer(t *testing.T, name, prefix string, args []string, write func(port int) error) *termServer {
	t.Helper()
	s := &termServer{t: t, name: name, args: args, prefix: prefix, write: write}
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			el, _ := os.ReadFile(filepath.Join(s.prefix, "error.log"))
			var out string
			if s.out != nil {
				out = s.out.String()
			}
			t.Logf("%s output:\n%s\n%s", name, out, el)
		}
	})
	s.port, _ = testenv.OnFreePort(t, write)
	return s
}

// newNginxServer prepares an nginx that serves TLS 1.2 and 1.3 on a free
// loopback port, with tickets under the NginxFileCount(keep) key files in
// keyDir and no session cache, and stops it when the test ends. Start it
// once the files are there.
func newNginxServer(t *testing.T, keyDir string, keep int) *termServer {
	t.Helper()
	bin := needBinary(t, "nginx")
	prefix := t.TempDir()
	conf := filepath.Join(prefix, "nginx.conf")
	cert, key := certFiles(t, prefix)
	var keys []string
	for i := range NginxFileCount(keep) {
		keys = append(keys, filepath.Join(keyDir, NginxFileName(i)))
	}
	return newTermServer(t, "nginx", prefix, []string{bin, "-c", conf, "-p", prefix}, func(port int) error {
		cfg := testenv.NginxConfig(prefix, port, cert, key, keys, "keyexport-test")
		return os.WriteFile(conf, []byte(cfg), 0o600)
	})
}

// newHAProxyServer prepares an HAProxy that serves TLS on a free loopback
// port with the tls-ticket-keys file keysFile, and a runtime API socket at
// level admin, which it returns. Start it once the file is there.
func newHAProxyServer(t *testing.T, keysFile string) (*termServer, string) {
	t.Helper()
	bin := needBinary(t, "haproxy")
	prefix := t.TempDir()
	cert, key := certFiles(t, prefix)
	c, _ := os.ReadFile(cert)
	k, _ := os.ReadFile(key)
	pemFile := filepath.Join(prefix, "crt.pem")
	if err := os.WriteFile(pemFile, append(c, k...), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(prefix, "admin.sock")
	conf := filepath.Join(prefix, "haproxy.cfg")
	s := newTermServer(t, "haproxy", prefix, []string{bin, "-db", "-f", conf}, func(port int) error {
		cfg := fmt.Sprintf(`global
  stats socket %[1]s level admin
  tune.ssl.lifetime 3600
defaults
  mode http
  timeout connect 1s
  timeout client 10s
  timeout server 10s
frontend tls
  bind 127.0.0.1:%[2]d ssl crt %[3]s tls-ticket-keys "%[4]s" ssl-min-ver TLSv1.2
  http-request return status 200 content-type text/plain string keyexport-test
`, sock, port, pemFile, keysFile)
		return os.WriteFile(conf, []byte(cfg), 0o600)
	})
	return s, sock
}

func (s *termServer) addr() string { return fmt.Sprintf("127.0.0.1:%d", s.port) }

// start starts the server, in the foreground as the test's child, and waits
// until it answers as itself on its port.
func (s *termServer) start() {
	s.t.Helper()
	deadline := time.Now().Add(testenv.StartTimeout)
launch:
	for {
		s.out = &logtest.Buffer{}
		s.cmd = exec.Command(s.args[0], s.args[1:]...)
		s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
		s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := s.cmd.Start(); err != nil {
			s.t.Fatal(err)
		}
		done := make(chan struct{})
		s.done = done
		go func(c *exec.Cmd) { c.Wait(); close(done) }(s.cmd)
		for !s.answers() {
			select {
			case <-done:
				s.cmd = nil
				if time.Now().Before(deadline) && strings.Contains(s.out.String(), "Address already in use") {
					if !s.started {
						// Taken since OnFreePort chose it: move on.
						s.port = testenv.FreePort(s.t)
						if err := s.write(s.port); err != nil {
							s.t.Fatal(err)
						}
					}
					time.Sleep(100 * time.Millisecond)
					continue launch
				}
				s.t.Fatalf("%s exited at start: %s", s.name, s.out.String())
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				s.t.Fatalf("%s does not answer on %s", s.name, s.addr())
			}
		}
		s.started = true
		return
	}
}

// answers reports whether the server answers an HTTP request on its port.
func (s *termServer) answers() bool {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", s.addr(),
		&tls.Config{ServerName: "localhost", InsecureSkipVerify: true})
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
	body, _ := io.ReadAll(c)
	return strings.Contains(string(body), "keyexport-test")
}

// stop stops the server and its workers (its process group) and waits.
func (s *termServer) stop() {
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

// restart stops the server and starts it again, so that it reads its key
// files now (an nginx reload is asynchronous: its old workers go on for a
// moment).
func (s *termServer) restart() {
	s.t.Helper()
	s.stop()
	s.start()
}

// sClient connects to addr with openssl s_client at TLS version ("1.2" or
// "1.3"), offering the session in sessIn if not "", saving the session it
// gets to sessOut if not "", and reports whether the session was resumed.
func sClient(t *testing.T, addr, version, sessIn, sessOut string) bool {
	t.Helper()
	path := needBinary(t, "openssl")
	args := []string{"s_client", "-connect", addr, "-servername", "localhost", "-ign_eof", "-tls" + strings.ReplaceAll(version, ".", "_")}
	if sessIn != "" {
		args = append(args, "-sess_in", sessIn)
	}
	if sessOut != "" {
		os.Remove(sessOut)
		args = append(args, "-sess_out", sessOut)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdin = strings.NewReader("GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
	b, err := cmd.CombinedOutput()
	out := withoutSessionSecrets(string(b))
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if sessOut != "" {
		if _, err := os.Stat(sessOut); errors.Is(err, os.ErrNotExist) {
			t.Fatalf("openssl %s saved no session:\n%s", strings.Join(args, " "), out)
		}
	}
	switch {
	case strings.Contains(out, "\nReused, "):
		return true
	case strings.Contains(out, "\nNew, "):
		return false
	}
	t.Fatalf("openssl %s: no handshake summary in:\n%s", strings.Join(args, " "), out)
	return false
}

// withoutSessionSecrets drops s_client's lines with session secrets, so
// that a failing test prints none.
func withoutSessionSecrets(s string) string {
	lines := strings.Split(s, "\n")
	out := lines[:0]
	for _, l := range lines {
		if !strings.Contains(l, "Master-Key:") && !strings.Contains(l, "Resumption PSK:") && !strings.Contains(l, "TLS session ticket:") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
