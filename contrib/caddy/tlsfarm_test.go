package caddytlsfarm

import (
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
	"maps"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp"
	_ "github.com/caddyserver/caddy/v2/modules/filestorage"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// TestTwoCaddysResumeEachOthersTickets runs two Caddy servers in this
// process, as a library, each with the tls.stek.tlsfarm module in one farm
// rotating every 3s, and checks that a ticket from either resumes on the
// other at TLS 1.2 and 1.3, before and after a rotation.
func TestTwoCaddysResumeEachOthersTickets(t *testing.T) {
	url := redistest.URL(t)
	dir := t.TempDir()
	secret := filepath.Join(dir, "farm.secret")
	if err := farm.WriteSecretFile(secret, farm.NewSecret(0)); err != nil {
		t.Fatal(err)
	}
	cert, key, pool := writeCert(t, dir)
	name := redistest.Farm(t)
	var addrs []string
	var providers []*Provider
	for i := range 2 {
		addr, p := startCaddy(t, i, url, name, secret, cert, key)
		addrs, providers = append(addrs, addr), append(providers, p)
	}
	for _, p := range providers {
		if p.ring.Status().Epoch == 0 {
			t.Fatal("a Caddy started without the farm's keys")
		}
	}
	check := func(when string) {
		for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			for i := range 2 {
				cfg := &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: v, MaxVersion: v,
					ClientSessionCache: tls.NewLRUClientSessionCache(1)}
				if resumed := get(t, addrs[i], cfg); resumed {
					t.Fatalf("%s: the first handshake resumed", when)
				}
				if !get(t, addrs[1-i], cfg) {
					t.Errorf("%s: a %s ticket from caddy-%d did not resume on caddy-%d", when, tls.VersionName(v), i, 1-i)
				}
			}
		}
	}
	check("before a rotation")
	e := providers[0].ring.Status().Epoch
	deadline := time.Now().Add(10 * time.Second)
	for providers[0].ring.Status().Epoch == e || providers[1].ring.Status().Epoch == e {
		if time.Now().After(deadline) {
			t.Fatal("no rotation within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // Next polls every 100ms
	check("after a rotation")
	for i, p := range providers {
		if p.epoch.Load() != p.ring.Status().Epoch {
			t.Errorf("caddy-%d has the keys of epoch %d, the farm is at %d", i, p.epoch.Load(), p.ring.Status().Epoch)
		}
	}
}

// startCaddy provisions and starts a Caddy config with one HTTPS server on a
// free loopback port and the module as its session ticket key source; it
// stops it when the test ends.
func startCaddy(t *testing.T, i int, url, farmName, secret, cert, key string) (string, *Provider) {
	t.Helper()
	return startCaddyWith(t, i, url, farmName, secret, cert, key, nil)
}

// startCaddyWith is startCaddy with the module's settings in source
// overriding the default ones.
func startCaddyWith(t *testing.T, i int, url, farmName, secret, cert, key string, source map[string]any) (string, *Provider) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	keySource := map[string]any{
		"provider": "tlsfarm", "url": url, "farm": farmName, "secret_file": secret,
		"node": fmt.Sprintf("caddy-%d", i), "rotation_interval": "3s", "keep": 2,
	}
	maps.Copy(keySource, source)
	cfg := map[string]any{
		"admin":   map[string]any{"disabled": true},
		"storage": map[string]any{"module": "file_system", "root": t.TempDir()},
		"apps": map[string]any{
			"tls": map[string]any{
				"certificates":    map[string]any{"load_files": []any{map[string]any{"certificate": cert, "key": key}}},
				"session_tickets": map[string]any{"key_source": keySource},
			},
			"http": map[string]any{"servers": map[string]any{"s": map[string]any{
				"listen":                  []string{addr},
				"automatic_https":         map[string]any{"disable": true},
				"tls_connection_policies": []any{map[string]any{}},
				"routes": []any{map[string]any{"handle": []any{map[string]any{
					"handler": "static_response", "body": fmt.Sprintf("caddy-%d", i)}}}},
			}}},
		},
	}
	raw, _ := json.Marshal(cfg)
	var c caddy.Config
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	started := make(chan *Provider, 1)
	onInitialize = func(p *Provider) { started <- p }
	defer func() { onInitialize = nil }()
	ctx, err := caddy.ProvisionContext(&c)
	if err != nil {
		t.Fatal(err)
	}
	var apps []caddy.App
	for _, name := range []string{"tls", "http"} {
		a, err := ctx.App(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.(caddy.App).Start(); err != nil {
			t.Fatal(err)
		}
		apps = append(apps, a.(caddy.App))
	}
	tlsApp, _ := ctx.App("tls")
	p := <-started
	t.Cleanup(func() {
		for i := len(apps) - 1; i >= 0; i-- {
			apps[i].Stop()
		}
		if cu, ok := tlsApp.(caddy.CleanerUpper); ok {
			cu.Cleanup() // stops the session ticket service, so the module leaves the farm
		}
	})
	return addr, p
}

// get makes one HTTPS request and reports whether the session resumed.
func get(t *testing.T, addr string, cfg *tls.Config) bool {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
	if _, err := io.ReadAll(c); err != nil {
		t.Fatal(err)
	}
	return c.ConnectionState().DidResume
}

func writeCert(t *testing.T, dir string) (certPath, keyPath string, pool *x509.CertPool) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalPKCS8PrivateKey(k)
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), 0o600)
	leaf, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(leaf)
	return certPath, keyPath, pool
}
