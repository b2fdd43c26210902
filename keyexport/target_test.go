package keyexport

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseTarget(t *testing.T) {
	for _, tt := range []struct{ spec, want, err string }{
		{"nginx:/run/keys/", "nginx:/run/keys", ""},
		{"haproxy:/run/h/keys", "haproxy:/run/h/keys", ""},
		{"haproxy:/run/h/keys,socket=/run/haproxy.sock", "haproxy:/run/h/keys,socket=/run/haproxy.sock", ""},
		{"file:/run/k.json", "file:/run/k.json", ""},
		{"nginx:relative", "", "absolute"},
		{"haproxy:/k,sock=/x", "", "unknown option"},
		{"haproxy:/k,socket=/a.sock,socket=/b.sock", "", "socket= is given twice"},
		{"apache:/x", "", "unknown format"},
		{"nginx", "", "want nginx:DIR"},
	} {
		got, err := ParseTarget(tt.spec)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseTarget(%q) err = %v, want %q", tt.spec, err, tt.err)
			}
			continue
		}
		if err != nil || got.String() != tt.want {
			t.Errorf("ParseTarget(%q) = %v, %v; want %s", tt.spec, got, err, tt.want)
		}
	}
}

func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"nginx:/a", "haproxy:/a,socket=/b", "file:/c", "x:", ":"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		tg, err := ParseTarget(spec)
		if err != nil {
			return
		}
		again, err := ParseTarget(tg.String())
		if err != nil || again.String() != tg.String() {
			t.Fatalf("%q parses to %q, which parses to %v, %v", spec, tg, again, err)
		}
	})
}

func TestParseShowTLSKeys(t *testing.T) {
	ok := "# id secret\n# 0 (/run/h/keys)\n0.0 AAAA\n0.1 BBBB\n0.2 CCCC\n\n"
	keys, err := parseShowTLSKeys(ok)
	if err != nil || !slices.Equal(keys, []string{"AAAA", "BBBB", "CCCC"}) {
		t.Errorf("got %q, %v", keys, err)
	}
	for _, bad := range []string{"'show tls-keys' unable to locate referenced filename\n", "", "# id secret\n"} {
		if _, err := parseShowTLSKeys(bad); err == nil {
			t.Errorf("parsed %q", bad)
		}
	}
}

func FuzzParseShowTLSKeys(f *testing.F) {
	f.Add("# id secret\n# 0 (/k)\n0.0 AAAA\n0.1 BBBB\n")
	f.Add("unable to locate\n")
	f.Add("0.0 " + strings.Repeat("QUJD", 16) + " x\n")
	f.Fuzz(func(t *testing.T, out string) {
		keys, err := parseShowTLSKeys(out)
		if err == nil && len(keys) == 0 {
			t.Fatal("no error and no keys")
		}
		if err != nil {
			for _, w := range keyLike.FindAllString(out, -1) {
				if strings.Contains(err.Error(), w) {
					t.Fatalf("the error shows a key-like run %q: %v", w, err)
				}
			}
		}
		for _, k := range keys {
			if k == "" || strings.ContainsAny(k, " \t\n") {
				t.Fatalf("key %q", k)
			}
		}
	})
}

func TestOverlap(t *testing.T) {
	for _, tt := range []struct {
		have, want []string
		m          int
	}{
		{[]string{"a", "b", "c"}, []string{"a", "b", "c"}, 3},
		{[]string{"a", "b", "c"}, []string{"b", "c", "d"}, 2},
		{[]string{"a", "b", "c"}, []string{"c", "d", "e"}, 1},
		{[]string{"a", "b", "c"}, []string{"x", "y", "z"}, 0},
		{[]string{"a", "b", "c"}, []string{"b", "x", "c"}, 0},
	} {
		if got := overlap(tt.have, tt.want); got != tt.m {
			t.Errorf("overlap(%q, %q) = %d, want %d", tt.have, tt.want, got, tt.m)
		}
	}
}

// TestTargetsWrite exports one set to an nginx and a file target and checks
// the files: their count, size, mode and content.
func TestTargetsWrite(t *testing.T) {
	dir := t.TempDir()
	set := mustSet(t, testState(4, 1), 2)
	ng := &NginxTarget{Dir: dir}
	if err := ng.Export(context.Background(), set); err != nil {
		t.Fatal(err)
	}
	for i, k := range nginxKeys(set) {
		b, err := os.ReadFile(filepath.Join(dir, NginxFileName(i)))
		want := NginxKey(k)
		if err != nil || string(b) != string(want[:]) {
			t.Errorf("file %d: %v, or not the nginx key", i, err)
		}
	}
	if got := nginxConfig(dir, 2); strings.Count(got, "ssl_session_ticket_key ") != 4 {
		t.Errorf("nginxConfig:\n%s", got)
	}
	hp := &HAProxyTarget{File: filepath.Join(dir, "haproxy.keys")}
	js := &FileTarget{Path: filepath.Join(dir, "keys.json")}
	for _, tg := range []Target{hp, js} {
		if err := tg.Export(context.Background(), set); err != nil {
			t.Fatal(err)
		}
	}
	if b, _ := os.ReadFile(hp.File); string(b) != string(haproxyFile(set)) {
		t.Error("the HAProxy file differs from haproxyFile")
	}
}

// TestNginxStaleFiles: key files beyond NginxFileCount(keep), left by a
// higher keep, get a new random key at each export; other names are left
// alone.
func TestNginxStaleFiles(t *testing.T) {
	dir := t.TempDir()
	old := bytes.Repeat([]byte{7}, 80)
	names := []string{"ticket-4.key", "ticket-9.key", "ticket-04.key", "ticket-x.key", "ticket-4.key.bak"}
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), old, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	stale, err := NginxStaleFiles(dir, 2)
	if want := []string{filepath.Join(dir, "ticket-4.key"), filepath.Join(dir, "ticket-9.key")}; err != nil || !slices.Equal(stale, want) {
		t.Fatalf("NginxStaleFiles = %q, %v; want %q", stale, err, want)
	}
	var first []byte
	for range 2 {
		if err := (&NginxTarget{Dir: dir}).Export(context.Background(), mustSet(t, testState(4, 1), 2)); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(filepath.Join(dir, "ticket-4.key"))
		if len(b) != 80 || bytes.Equal(b, old) || bytes.Equal(b, first) {
			t.Errorf("ticket-4.key was not given a new 80-byte key")
		}
		first = b
	}
	for _, n := range names[2:] {
		if b, _ := os.ReadFile(filepath.Join(dir, n)); !bytes.Equal(b, old) {
			t.Errorf("%s was changed", n)
		}
	}
}

// TestShowTLSKeysErrorHidesKeys: an answer of an unexpected shape is an
// error that shows HAProxy's first line, but never a key in it.
func TestShowTLSKeysErrorHidesKeys(t *testing.T) {
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xa7}, 80))
	for _, out := range []string{
		"0.0 " + key + " extra\n",
		"0.0\t" + key + "\n",
		"0.0 " + key + "\n1.1 \n",
		strings.Repeat("# ", 70) + key + " x\n0.0 y z\n", // the key crosses the 200th byte
	} {
		_, err := parseShowTLSKeys(out)
		if err == nil {
			t.Fatalf("%q parsed", out)
		}
		if strings.Contains(err.Error(), key) || strings.Contains(err.Error(), key[:40]) {
			t.Errorf("the error for %q shows the key: %v", out, err)
		}
	}
	if _, err := parseShowTLSKeys("'show tls-keys' unable to locate referenced filename\n"); err == nil || !strings.Contains(err.Error(), "unable to locate referenced filename") {
		t.Errorf("HAProxy's message is lost: %v", err)
	}
}

// TestPushErrorHidesKey: when HAProxy's runtime API refuses a key and its
// answer repeats the key, the error shows the answer without any part of
// the key, wherever in the line the key stands (here it crosses the 200th
// byte, where the error's line is cut short). The runtime API is a Unix
// socket that answers one command per connection, as HAProxy's does.
func TestPushErrorHidesKey(t *testing.T) {
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xa7}, 80))
	for _, prefix := range []string{"", strings.Repeat("x", 150)} {
		sock := filepath.Join(t.TempDir(), "admin.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				line, _ := bufio.NewReader(c).ReadString('\n')
				f := strings.Fields(line)
				io.WriteString(c, "'set ssl tls-key' refused "+prefix+" "+f[len(f)-1]+" (not a key)\n")
				c.Close()
			}
		}()
		rt := &HAProxyRuntime{Socket: sock, ID: "/run/h/keys"}
		err = rt.push(context.Background(), key)
		ln.Close()
		if err == nil {
			t.Fatal("a refused key counted as pushed")
		}
		if !strings.Contains(err.Error(), "refused") {
			t.Errorf("HAProxy's answer is lost: %v", err)
		}
		if strings.Contains(err.Error(), key[:16]) || strings.Contains(err.Error(), key[len(key)-40:]) {
			t.Errorf("the error shows part of the key: %v", err)
		}
	}
}

// TestRuntimeSocketStaysLocal checks that a runtime API address on
// another host is refused, by ParseTarget and before any connection: the
// runtime API is plain text, and "set ssl tls-key" carries the key. A
// listener on a non-loopback address of this machine stands in for a
// remote HAProxy; before, the key reached it.
func TestRuntimeSocketStaysLocal(t *testing.T) {
	for _, spec := range []string{"haproxy:/k,socket=10.0.0.5:9999", "haproxy:/k,socket=[2001:db8::1]:9999", "haproxy:/k,socket=haproxy.example:9999"} {
		if _, err := ParseTarget(spec); err == nil || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("ParseTarget(%q) err = %v, want a refusal of a non-loopback address", spec, err)
		}
	}
	for _, spec := range []string{"haproxy:/k,socket=127.0.0.1:9999", "haproxy:/k,socket=[::1]:9999", "haproxy:/k,socket=localhost:9999", "haproxy:/k,socket=/run/haproxy/admin.sock", "haproxy:/k,socket=admin.sock"} {
		if _, err := ParseTarget(spec); err != nil {
			t.Errorf("ParseTarget(%q): %v", spec, err)
		}
	}

	// A listener on an address of this machine that is not loopback.
	var addr string
	ifaces, _ := net.InterfaceAddrs()
	for _, a := range ifaces {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
			addr = ipn.IP.String()
			break
		}
	}
	if addr == "" {
		t.Skip("no non-loopback IPv4 address on this machine")
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		t.Skipf("listening on %s: %v", addr, err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		got <- line
	}()
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xab}, 80))
	rt := &HAProxyRuntime{Socket: ln.Addr().String(), ID: "/run/h/keys"}
	if err := rt.push(context.Background(), key); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("push to %s: err = %v, want a refusal", rt.Socket, err)
	}
	select {
	case line := <-got:
		if strings.Contains(line, key) {
			t.Errorf("the key was sent in the clear to %s", rt.Socket)
		} else {
			t.Errorf("something was sent to %s", rt.Socket)
		}
	case <-time.After(200 * time.Millisecond):
	}
}
