package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
)

// certFiles writes a self-signed certificate for names and its key as PEM
// files and returns their paths.
func certFiles(t *testing.T, names ...string) (certPath, keyPath string) {
	t.Helper()
	return certFilesValid(t, time.Now().Add(-time.Hour), time.Now().Add(time.Hour), names...)
}

// certFilesValid is certFiles for a certificate valid from notBefore to
// notAfter.
func certFilesValid(t *testing.T, notBefore, notAfter time.Time, names ...string) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: notBefore, NotAfter: notAfter,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	return certPath, keyPath
}

// TestCertificateValidity: a certificate past its NotAfter, or whose
// NotBefore is more than notBeforeSlack ahead, is refused naming its file;
// one just issued by a CA whose clock runs a minute ahead is taken.
func TestCertificateValidity(t *testing.T) {
	now := time.Now()
	for _, tt := range []struct {
		name                string
		notBefore, notAfter time.Time
		want                string // in the error; empty: loads
	}{
		{"valid", now.Add(-time.Hour), now.Add(time.Hour), ""},
		{"issued a minute ahead", now.Add(time.Minute), now.Add(time.Hour), ""},
		{"expired", now.Add(-2 * time.Hour), now.Add(-time.Hour), "expired on"},
		{"not yet valid", now.Add(10 * time.Minute), now.Add(time.Hour), "not valid before"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cert, key := certFilesValid(t, tt.notBefore, tt.notAfter, "a.example")
			_, err := Load("serve", []string{"-cert", cert, "-key", key}, env(nil), io.Discard)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), cert)):
				t.Errorf("error = %v, want one naming %s with %q", err, cert, tt.want)
			}
		})
	}
}

func TestCertificateNamesFromTheCertificate(t *testing.T) {
	cert, key := certFiles(t, "A.example", "b.example")
	c, err := Load("serve", []string{"-cert", cert, "-key", key}, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	got := c.Listeners[0].Certificates[0]
	if got.Loaded == nil || !slices.Equal(got.Names, []string{"a.example", "b.example"}) {
		t.Errorf("certificate = %+v", got)
	}
}

func TestFarmSecretAndToken(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "farm.secret")
	if err := farm.WriteSecretFile(secret, farm.NewSecret(1)); err != nil {
		t.Fatal(err)
	}
	token := writeFile(t, "token", "0123456789abcdef0123\n", 0o600)
	c, err := Load("serve", []string{"-farm", "redis://127.0.0.1:6379/0", "-farm-secret", secret, "-admin-token-file", token}, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Farm.Secrets) != 1 || c.Farm.Secrets[0].ID != 1 {
		t.Errorf("secrets = %v", c.Farm.Secrets)
	}
	if c.Admin.BearerToken != "0123456789abcdef0123" {
		t.Errorf("token not read")
	}
}

// TestFlushWindowSetting: farm.flush_window is read from a flag, the
// environment or the file, 0 by default, up to 100ms, and with
// write-through up to half of farm.lookup_deadline (the refusals are in
// TestBadInput).
func TestFlushWindowSetting(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "farm.secret")
	if err := farm.WriteSecretFile(secret, farm.NewSecret(1)); err != nil {
		t.Fatal(err)
	}
	farmArgs := []string{"-farm", "redis://127.0.0.1:6379/0", "-farm-secret", secret}
	for _, tt := range []struct {
		name string
		file string
		args []string
		env  map[string]string
		want time.Duration
	}{
		{"default", "", nil, nil, 0},
		{"flag", "", []string{"-flush-window", "5ms"}, nil, 5 * time.Millisecond},
		{"environment", "", nil, map[string]string{"TLSFARM_FLUSH_WINDOW": "100ms"}, 100 * time.Millisecond},
		{"file", "farm:\n  flush_window: 10ms\n", nil, nil, 10 * time.Millisecond},
		{"write-through, half the lookup deadline", "", []string{"-write-through", "-lookup-deadline", "100ms", "-flush-window", "50ms"}, nil, 50 * time.Millisecond},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := append(slices.Clone(farmArgs), tt.args...)
			if tt.file != "" {
				args = append([]string{"-config", writeFile(t, "c.yaml", tt.file, 0o644)}, args...)
			}
			c, err := Load("serve", args, env(tt.env), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if c.Farm.FlushWindow != tt.want {
				t.Errorf("farm.flush_window = %v, want %v", c.Farm.FlushWindow, tt.want)
			}
		})
	}
}

// TestBadInput checks that each kind of bad input gives one line naming
// the setting and the problem.
func TestBadInput(t *testing.T) {
	cert, key := certFiles(t, "localhost")
	otherCert, _ := certFiles(t, "localhost")
	garbage := writeFile(t, "garbage.pem", "not a certificate", 0o644)
	short := writeFile(t, "short.secret", "1:"+base64.StdEncoding.EncodeToString(make([]byte, 16))+"\n", 0o600)
	open := writeFile(t, "open.secret", "0:"+base64.StdEncoding.EncodeToString(make([]byte, 32))+"\n", 0o644)
	tests := []struct {
		name string
		file string // YAML, written to a file and passed with -config
		args []string
		env  map[string]string
		want []string // substrings of the error
	}{
		{"missing cert", "", []string{"-cert", "/nonexistent/cert.pem", "-key", key}, nil,
			[]string{"listeners[0].certificates[0].cert (flag -cert)", "no such file"}},
		{"missing key", "", []string{"-cert", cert, "-key", "/nonexistent/key.pem"}, nil,
			[]string{"listeners[0].certificates[0].key", "no such file"}},
		{"cert is a directory", "", []string{"-cert", t.TempDir(), "-key", key}, nil,
			[]string{"listeners[0].certificates[0].cert", "is a directory"}},
		{"cert is not PEM", "", []string{"-cert", garbage, "-key", key}, nil,
			[]string{"listeners[0].certificates[0]", "garbage.pem"}},
		{"key of another cert", "", []string{"-cert", otherCert, "-key", key}, nil,
			[]string{"listeners[0].certificates[0]", "does not match"}},
		{"cert without key", "listeners:\n  - certificates:\n      - cert: " + cert + "\n", nil, nil,
			[]string{"listeners[0].certificates[0].key", "is required"}},
		{"malformed YAML", "cache:\n  size: 10\nnode: a: b\n", nil, nil,
			[]string{"line 3", "malformed YAML", "mapping values are not allowed"}},
		{"unknown key", "cache:\n  lifetim: 1h\n", nil, nil,
			[]string{"line 2", `unknown setting "cache.lifetim"`, `did you mean "lifetime"`}},
		{"unknown top-level key", "listen: 1.2.3.4:5\n", nil, nil,
			[]string{"line 1", `unknown setting "listen"`}},
		{"key given twice", "node: a\nnode: b\n", nil, nil, []string{"line 2", "given twice"}},
		{"second YAML document", "node: a\n---\nfarm:\n  url: redis://127.0.0.1:6379\n", nil, nil,
			[]string{"line 3", "second YAML document"}},
		{"second YAML document after an empty one", "---\n---\nnode: b\n", nil, nil,
			[]string{"second YAML document"}},
		{"bad duration in file", "limits:\n  idle_timeout: 2x\n", nil, nil,
			[]string{"line 2", "limits.idle_timeout", `"2x" is not a duration`}},
		{"bad duration in env", "", nil, map[string]string{"TLSFARM_HANDSHAKE_TIMEOUT": "soon"},
			[]string{"limits.handshake_timeout ($TLSFARM_HANDSHAKE_TIMEOUT)", `"soon" is not a duration`}},
		{"bad number in flag", "", []string{"-cache-size", "lots"}, nil,
			[]string{"cache.size (flag -cache-size)", "not a whole number"}},
		{"negative WebSocket bound", "limits:\n  max_websockets_per_connection: -1\n", nil, nil,
			[]string{"line 2", "limits.max_websockets_per_connection", `"-1" is negative`}},
		{"list where a value belongs", "cache:\n  mode: [a]\n", nil, nil, []string{"line 2", "cache.mode", "single value"}},
		{"bad mode", "", []string{"-cache-mode", "sometimes"}, nil, []string{"cache.mode", "stateful, stateless or mixed"}},
		{"single use without a held session", "", []string{"-cache-mode", "stateless", "-single-use"}, nil, []string{"cache.single_use", "stateful or mixed"}},
		{"bad farm URL scheme", "", []string{"-farm", "http://x:1", "-farm-secret", short}, nil,
			[]string{"farm.url", `unsupported scheme "http"`}},
		{"farm URL without host", "", []string{"-farm", "redis://"}, nil, []string{"farm.url", "no host"}},
		{"strict without a farm", "", []string{"-strict"}, nil, []string{"farm.strict (flag -strict)", "farm.url"}},
		{"strict without a farm, from the environment", "", nil, map[string]string{"TLSFARM_FARM_STRICT": "true", "TLSFARM_FARM_URL": ""},
			[]string{"farm.strict ($TLSFARM_FARM_STRICT)", "farm.url"}},
		{"farm without secret", "", []string{"-farm", "redis://127.0.0.1:6379"}, nil, []string{"farm.secret_file", "is required"}},
		{"secret too short", "", []string{"-farm", "redis://127.0.0.1:6379", "-farm-secret", short}, nil,
			[]string{"farm.secret_file", "16 bytes, need at least 32"}},
		{"secret readable by others", "", []string{"-farm", "redis://127.0.0.1:6379", "-farm-secret", open}, nil,
			[]string{"farm.secret_file", "accessible to group or others", "chmod 600"}},
		{"store-only without a store", "", []string{"-farm", "amqp://127.0.0.1:5672", "-farm-mode", "store-only", "-farm-secret", short}, nil,
			[]string{"farm.mode", "store-only needs a transport with a store"}},
		{"negative flush window", "", []string{"-farm", "redis://127.0.0.1:6379"}, map[string]string{"TLSFARM_FLUSH_WINDOW": "-1ms"},
			[]string{"farm.flush_window ($TLSFARM_FLUSH_WINDOW)", "is negative"}},
		{"max delivery lag of 0", "", []string{"-farm", "redis://127.0.0.1:6379", "-max-delivery-lag", "0s"}, nil,
			[]string{"farm.max_delivery_lag (flag -max-delivery-lag)", "must be above 0"}},
		{"max delivery lag over 10s", "farm:\n  max_delivery_lag: 11s\n", []string{"-farm", "redis://127.0.0.1:6379"}, nil,
			[]string{"farm.max_delivery_lag", "line 2", "at most 10s"}},
		{"flush window over 100ms", "", []string{"-farm", "redis://127.0.0.1:6379", "-flush-window", "150ms"}, nil,
			[]string{"farm.flush_window (flag -flush-window)", "150ms is over 100ms", "learn of new sessions that much later"}},
		{"flush window over half the lookup deadline", "farm:\n  flush_window: 60ms\n", []string{"-farm", "redis://127.0.0.1:6379", "-write-through", "-lookup-deadline", "100ms"}, nil,
			[]string{"farm.flush_window", "line 2", "over half of farm.lookup_deadline (100ms)", "write-through"}},
		{"carried sessions without write-through", "", []string{"-farm", "redis://127.0.0.1:6379", "-carry-sessions"}, nil,
			[]string{"farm.carry_sessions (flag -carry-sessions)", "needs farm.write_through"}},
		{"carried sessions in store-only mode", "farm:\n  carry_sessions: true\n", []string{"-farm", "redis://127.0.0.1:6379", "-write-through", "-farm-mode", "store-only"}, nil,
			[]string{"farm.carry_sessions", "line 2", "needs farm.mode broadcast"}},
		{"carried sessions with single use", "", []string{"-farm", "redis://127.0.0.1:6379", "-write-through", "-single-use"}, map[string]string{"TLSFARM_CARRY_SESSIONS": "true"},
			[]string{"farm.carry_sessions ($TLSFARM_CARRY_SESSIONS)", "cache.single_use"}},
		{"flush window without a farm", "", []string{"-flush-window", "5ms"}, nil,
			[]string{"farm.flush_window (flag -flush-window)", "farm.url is not"}},
		{"bad upstream", "", []string{"-upstream", "ftp://x"}, nil, []string{"listeners[0].upstream", "ftp://x"}},
		{"tcp upstream without port", "", []string{"-upstream", "tcp://host"}, nil, []string{"listeners[0].upstream", "host:port"}},
		{"HTTP/3 to a tcp upstream", "", []string{"-http3", "-upstream", "tcp://127.0.0.1:1"}, nil, []string{"listeners[0].http3", "HTTP upstream"}},
		{"early data without HTTP/3", "", []string{"-early-data"}, nil, []string{"listeners[0].early_data", "set http3 too"}},
		{"bad listen address", "", []string{"-listen", "8443"}, nil, []string{"listeners[0].address", "not host:port"}},
		{"duplicate listeners", "listeners:\n  - address: 127.0.0.1:1\n  - address: 127.0.0.1:1\n", nil, nil,
			[]string{"listeners[1].address", "also listeners[0]"}},
		{"bad TLS version", "", []string{"-tls-min", "1.4"}, nil, []string{"listeners[0].min_version", "not a TLS version"}},
		{"min above max", "", []string{"-tls-min", "1.3", "-tls-max", "1.2"}, nil, []string{"listeners[0].min_version", "above max_version"}},
		{"ALPN the upstream cannot speak", "", []string{"-alpn", "imap"}, nil, []string{"listeners[0].alpn", "not h2 or http/1.1"}},
		{"bad trusted range", "", []string{"-proxy-protocol", "-proxy-protocol-trusted", "10.0.0.0/33"}, nil,
			[]string{"listeners[0].proxy_protocol.trusted", "not an IP address or CIDR"}},
		{"early data trust by host name", "", []string{"-early-data-trusted", "10.0.0.0/8,cdn.example"}, nil,
			[]string{"listeners[0].early_data_trusted (flag -early-data-trusted)", `"cdn.example" is not an IP address or CIDR range`}},
		{"early data trust, bad range in the file", "listeners:\n  - early_data_trusted: [\"203.0.113.0/33\"]\n", nil, nil,
			[]string{"listeners[0].early_data_trusted", "line 2", `"203.0.113.0/33" is not an IP address or CIDR range`}},
		{"early data trust with a zone", "", nil, map[string]string{"TLSFARM_EARLY_DATA_TRUSTED": "fe80::1%eth0"},
			[]string{"listeners[0].early_data_trusted ($TLSFARM_EARLY_DATA_TRUSTED)", "not an IP address or CIDR range"}},
		{"early data trust to a tcp upstream", "", []string{"-early-data-trusted", "203.0.113.0/24", "-upstream", "tcp://127.0.0.1:1"}, nil,
			[]string{"listeners[0].early_data_trusted (flag -early-data-trusted)", "HTTP upstreams"}},
		{"short admin token", "", nil, map[string]string{"TLSFARM_ADMIN_TOKEN": "short"}, []string{"admin.token ($TLSFARM_ADMIN_TOKEN)", "at least 16"}},
		{"open admin token file", "", []string{"-admin-token-file", open}, nil, []string{"admin.token_file", "chmod 600"}},
		{"admin token over two lines", "admin:\n  token: \"0123456789abcdef\\n0123\"\n", nil, nil, []string{"admin.token", "no Authorization header can carry it"}},
		{"bad log format", "", []string{"-log-format", "xml"}, nil, []string{"log.format", "text or json"}},
		{"too many ticket keys", "", []string{"-ticket-keep", "100"}, nil, []string{"tickets.keep", "too many"}},
		{"rotation under 1s", "", []string{"-ticket-rotation", "500ms"}, nil, []string{"tickets.rotation_interval", "at least 1s"}},
		{"unexpected argument", "", []string{"extra"}, nil, []string{`unexpected argument "extra"`}},
		{"missing config file", "", []string{"-config", "/nonexistent/tlsfarm.yaml"}, nil, []string{"config file", "no such file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.file != "" {
				args = append([]string{"-config", writeFile(t, "c.yaml", tt.file, 0o644)}, args...)
			}
			_, err := Load("serve", args, env(tt.env), io.Discard)
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("error has more than one line: %q", msg)
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q lacks %q", msg, w)
				}
			}
		})
	}
}

func TestFarmURLPasswordNotInErrors(t *testing.T) {
	_, err := Load("serve", []string{"-farm", "redis://user:hunter2@:bad:port:6379"}, env(nil), io.Discard)
	if err == nil {
		t.Fatal("no error")
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error shows the password: %v", err)
	}
}

// TestUpstreamPasswordNotInErrors: an upstream URL with credentials is
// refused, for every scheme, with an error that shows the URL with its
// password masked; one that does not parse is not shown at all.
func TestUpstreamPasswordNotInErrors(t *testing.T) {
	for _, up := range []string{
		"http://user:hunter2@app:8080",
		"https://user:hunter2@/",
		"tcp://user:hunter2@db:5432",
		"ftp://user:hunter2@x",
		"http://user:hunter2@app:8080/%zz",
	} {
		_, err := Load("serve", []string{"-upstream", up}, env(nil), io.Discard)
		if err == nil {
			t.Errorf("upstream %s: no error", up)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("upstream %s: the error shows the password: %v", up, err)
		}
		if !strings.Contains(err.Error(), "listeners[0].upstream") {
			t.Errorf("upstream %s: the error does not name the setting: %v", up, err)
		}
	}
}

// TestShortRotationAccepted checks that a rotation interval down to 1s
// loads, so that trials and tests can watch rotations happen.
func TestShortRotationAccepted(t *testing.T) {
	c, err := Load("serve", []string{"-ticket-rotation", "1s"}, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Tickets.RotationInterval != time.Second {
		t.Errorf("rotation interval %v", c.Tickets.RotationInterval)
	}
}

// TestTokenFileNotAPipe: an admin token file that is a named pipe (mode
// 0600) is refused at once, as a farm secret file that is one is: reading
// it would block the start, or a reload, until something writes to it.
func TestTokenFileNotAPipe(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "admin.token")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skip("no named pipes here:", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := Load("serve", []string{"-admin-token-file", fifo}, env(nil), io.Discard)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "admin.token_file") || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("Load = %v; want admin.token_file refused, not a regular file", err)
		}
	case <-time.After(5 * time.Second):
		// Unblock the reader, so that the test ends.
		if f, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
			f.Close()
		}
		t.Fatal("Load still reads the named pipe after 5s")
	}
}

// TestCertificateFilesNotPipes: a certificate or key file that is a named
// pipe is refused at once, naming the setting, as the admin token file
// and the farm secret file are: reading it would block the start, or a
// reload, until something writes to it.
func TestCertificateFilesNotPipes(t *testing.T) {
	cert, key := certFiles(t, "localhost")
	fifo := filepath.Join(t.TempDir(), "pipe.pem")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skip("no named pipes here:", err)
	}
	for _, tt := range []struct {
		name    string
		args    []string
		setting string
	}{
		{"cert", []string{"-cert", fifo, "-key", key}, "listeners[0].certificates[0].cert (flag -cert)"},
		{"key", []string{"-cert", cert, "-key", fifo}, "listeners[0].certificates[0].key (flag -key)"},
	} {
		done := make(chan error, 1)
		go func() {
			_, err := Load("serve", tt.args, env(nil), io.Discard)
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), tt.setting) || !strings.Contains(err.Error(), "not a regular file") {
				t.Errorf("%s: Load = %v; want %s refused, not a regular file", tt.name, err, tt.setting)
			}
		case <-time.After(5 * time.Second):
			// Unblock the reader, so that the test ends.
			if f, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
				f.Close()
			}
			<-done
			t.Errorf("%s: Load still reads the named pipe after 5s", tt.name)
		}
	}
}
