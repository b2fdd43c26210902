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

// An nginxServer is an nginx started by a test, reading the key files of
// an nginx target.
type nginxServer struct {
	t      *testing.T
	bin    string
	prefix string
	conf   string
	port   int
	cmd    *exec.Cmd
	done   chan struct{}
	out    *logtest.Buffer
}

// newNginxServer prepares an nginx that serves TLS 1.2 and 1.3 on a free
// loopback port, with tickets under the NginxFileCount(keep) key files in
// keyDir and no session cache, and stops it when the test ends. Start it
// once the files are there.
func newNginxServer(t *testing.T, keyDir string, keep int) *nginxServer {
	t.Helper()
	s := &nginxServer{t: t, bin: needBinary(t, "nginx"), prefix: t.TempDir()}
	s.conf = filepath.Join(s.prefix, "nginx.conf")
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			el, _ := os.ReadFile(filepath.Join(s.prefix, "error.log"))
			var out string
			if s.out != nil {
				out = s.out.String()
			}
			t.Logf("nginx output:\n%s\n%s", out, el)
		}
	})
	cert, key := certFiles(t, s.prefix)
	var tk strings.Builder
	for i := range NginxFileCount(keep) {
		fmt.Fprintf(&tk, "    ssl_session_ticket_key %s;\n", filepath.Join(keyDir, NginxFileName(i)))
	}
	s.port, _ = testenv.OnFreePort(t, func(port int) error {
		cfg := fmt.Sprintf(`daemon off;
master_process on;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log notice;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  server {
    listen 127.0.0.1:%[2]d ssl;
    ssl_certificate %[3]s;
    ssl_certificate_key %[4]s;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets on;
    ssl_session_timeout 1h;
%[5]s    location / { return 200 "keyexport-test\n"; }
  }
}
`, s.prefix, port, cert, key, tk.String())
		if err := os.WriteFile(s.conf, []byte(cfg), 0o600); err != nil {
			return err
		}
		s.port = port
		return nil
	})
	return s
}

func (s *nginxServer) addr() string { return fmt.Sprintf("127.0.0.1:%d", s.port) }

// start starts nginx, in the foreground as the test's child, and waits
// until it answers as itself on its port.
func (s *nginxServer) start() {
	s.t.Helper()
	deadline := time.Now().Add(testenv.StartTimeout)
launch:
	for {
		s.out = &logtest.Buffer{}
		s.cmd = exec.Command(s.bin, "-c", s.conf, "-p", s.prefix)
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
					time.Sleep(100 * time.Millisecond)
					continue launch
				}
				s.t.Fatalf("nginx exited at start: %s", s.out.String())
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				s.t.Fatalf("nginx does not answer on %s", s.addr())
			}
		}
		return
	}
}

// answers reports whether nginx answers an HTTP request on its port.
func (s *nginxServer) answers() bool {
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

// stop stops nginx and its workers (its process group) and waits.
func (s *nginxServer) stop() {
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

// restart stops nginx and starts it again, so that it reads its key files
// now (a reload is asynchronous: its old workers go on for a moment).
func (s *nginxServer) restart() {
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
