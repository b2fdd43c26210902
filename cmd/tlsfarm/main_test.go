package main

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/internal/nettest"
)

// binary is the tlsfarm command, built once (without -race) by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tlsfarm-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "tlsfarm")
	build := exec.Command("go", "build", "-o", binary, ".")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building tlsfarm: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// environ returns the test's environment without TLSFARM_ settings, plus
// extra.
func environ(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TLSFARM_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// A proc is a running tlsfarm serve whose JSON log lines the test reads.
type proc struct {
	t    *testing.T
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited

	mu    sync.Mutex
	lines []map[string]any
	raw   bytes.Buffer

	Listeners []string
	Admin     string
}

// serveProc starts tlsfarm serve with args (plus JSON logs and loopback
// ports, unless args set them) and waits until it is ready. It is stopped
// when the test ends.
func serveProc(t *testing.T, args []string, env ...string) *proc {
	t.Helper()
	p := launch(t, args, env...)
	ready := p.waitLog("tlsfarm ready", 15*time.Second)
	for _, l := range ready["listeners"].([]any) {
		p.Listeners = append(p.Listeners, l.(string))
	}
	p.Admin = ready["admin"].(string)
	return p
}

// launch starts tlsfarm serve without waiting for it.
func launch(t *testing.T, args []string, env ...string) *proc {
	t.Helper()
	all := []string{"serve", "-log-format", "json", "-log-level", "debug"}
	joined := strings.Join(args, " ")
	if !strings.Contains(joined, "-listen") && !strings.Contains(joined, "-config") {
		all = append(all, "-listen", "127.0.0.1:0")
	}
	if !strings.Contains(joined, "-admin ") {
		all = append(all, "-admin", "127.0.0.1:0")
	}
	p := &proc{t: t, cmd: exec.Command(binary, append(all, args...)...), done: make(chan struct{})}
	p.cmd.Env = environ(env...)
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var m map[string]any
			json.Unmarshal(sc.Bytes(), &m)
			p.mu.Lock()
			p.raw.Write(sc.Bytes())
			p.raw.WriteByte('\n')
			if m != nil {
				p.lines = append(p.lines, m)
			}
			p.mu.Unlock()
		}
		p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
		if t.Failed() {
			t.Logf("tlsfarm log:\n%s", p.log())
		}
	})
	return p
}

func (p *proc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.raw.String()
}

// waitLog waits for a log line with the given message and returns it.
func (p *proc) waitLog(msg string, timeout time.Duration) map[string]any {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for seen := 0; ; {
		p.mu.Lock()
		for ; seen < len(p.lines); seen++ {
			if p.lines[seen]["msg"] == msg {
				m := p.lines[seen]
				p.mu.Unlock()
				return m
			}
		}
		p.mu.Unlock()
		select {
		case <-p.done:
			// Every line is read before done closes: look once more
			// at those that came after the scan above.
			p.mu.Lock()
			for ; seen < len(p.lines); seen++ {
				if p.lines[seen]["msg"] == msg {
					m := p.lines[seen]
					p.mu.Unlock()
					return m
				}
			}
			p.mu.Unlock()
			p.t.Fatalf("tlsfarm exited (%v) before logging %q:\n%s", p.cmd.ProcessState, msg, p.log())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("no %q log line within %v:\n%s", msg, timeout, p.log())
		}
	}
}

// countLog counts the log lines with the given message so far.
func (p *proc) countLog(msg string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.lines {
		if l["msg"] == msg {
			n++
		}
	}
	return n
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop() {
	p.t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.t.Fatal("tlsfarm did not stop within 10s of SIGTERM")
	}
	if !p.cmd.ProcessState.Success() {
		p.t.Fatalf("tlsfarm exited with %v after SIGTERM", p.cmd.ProcessState)
	}
}

// runCmd runs tlsfarm with args to its end and returns its exit code and
// output.
func runCmd(t *testing.T, args []string, env ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = environ(env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("tlsfarm %v did not exit within 20s", args)
	}
	return cmd.ProcessState.ExitCode(), out.String(), errb.String()
}

// writeCert writes a self-signed certificate for names and its key as PEM
// files in dir and returns their paths and the certificate.
func writeCert(t *testing.T, dir, base string, names ...string) (certPath, keyPath string, cert *x509.Certificate) {
	t.Helper()
	return writeCertValid(t, dir, base, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour), names...)
}

// writeCertValid is writeCert for a certificate valid from notBefore to
// notAfter.
func writeCertValid(t *testing.T, dir, base string, notBefore, notAfter time.Time, names ...string) (certPath, keyPath string, cert *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	certPath, keyPath = filepath.Join(dir, base+".pem"), filepath.Join(dir, base+".key")
	writeFile(t, certPath, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), 0o644)
	writeFile(t, keyPath, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})), 0o600)
	cert, _ = x509.ParseCertificate(der)
	return certPath, keyPath, cert
}

func writeFile(t *testing.T, path, content string, mode os.FileMode) string {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil { // atomic, as an operator's deploy should be
		t.Fatal(err)
	}
	return path
}

// clientFor returns a client config that trusts certs, sends serverName,
// and keeps its sessions.
func clientFor(serverName string, certs ...*x509.Certificate) *tls.Config {
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return &tls.Config{RootCAs: pool, ServerName: serverName, ClientSessionCache: tls.NewLRUClientSessionCache(4), NextProtos: []string{"http/1.1"}}
}

// facts is the built-in upstream's answer.
type facts struct {
	Node          string `json:"node"`
	TLSVersion    string `json:"tls_version"`
	Resumed       bool   `json:"resumed"`
	ServerName    string `json:"server_name"`
	ClientAddress string `json:"client_address"`
	SessionID     string `json:"session_id"`
}

// get makes one request on a new connection and returns the response, its
// body and the connection's state.
func get(t *testing.T, addr string, cfg *tls.Config, path string) (*http.Response, string, tls.ConnectionState) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	return request(t, c, path)
}

// request sends one GET on c, reads the whole answer and closes c.
func request(t *testing.T, c *tls.Conn, path string) (*http.Response, string, tls.ConnectionState) {
	t.Helper()
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	host := c.ConnectionState().ServerName
	if host == "" {
		host = "localhost"
	}
	req, _ := http.NewRequest("GET", "https://"+host+path, nil)
	req.Close = true
	if err := req.Write(c); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body), c.ConnectionState()
}

func getFacts(t *testing.T, addr string, cfg *tls.Config) facts {
	t.Helper()
	_, body, _ := get(t, addr, cfg, "/")
	var f facts
	if err := json.Unmarshal([]byte(body), &f); err != nil {
		t.Fatalf("facts: %v in %q", err, body)
	}
	return f
}

// adminDo makes an admin API request.
func adminDo(t *testing.T, p *proc, method, path, token string) (int, string) {
	t.Helper()
	return nettest.Do(t, method, "http://"+p.Admin+path, token)
}

// metric returns the value of one metric line, such as
// `tlsfarm_handshakes_total{kind="full",version="TLS 1.3"}`, or -1.
func metric(t *testing.T, p *proc, series string) float64 {
	t.Helper()
	_, body := adminDo(t, p, "GET", "/metrics", "")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return -1
}

// deleteApplied revokes session id through p's admin API and reports
// whether the farm has the revocation: answered 200 "applied", or 202
// "pending" and then p's pending revocations drained. The handler waits a
// second (plus the node's own wait) for the farm before it says pending;
// a revoker that applies later (a 2 s delay planted before it) is not a
// broken promise, and what the test checks next is.
func deleteApplied(t *testing.T, p *proc, id string) (code int, body string, ok bool) {
	t.Helper()
	code, body = adminDo(t, p, "DELETE", "/sessions/"+id, farmToken)
	switch {
	case code == 200 && strings.Contains(body, `"farm": "applied"`):
		return code, body, true
	case code == 202 && strings.Contains(body, `"farm": "pending"`):
		waitUntil(t, 10*time.Second, func() bool { return metric(t, p, "tlsfarm_farm_pending_revocations") == 0 },
			"the revocation of %s on %s stayed pending", id, p.Admin)
		t.Logf("DELETE on %s answered 202 pending; applied since", p.Admin)
		return code, body, true
	}
	return code, body, false
}

func waitUntil(t *testing.T, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf(format, args...)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
