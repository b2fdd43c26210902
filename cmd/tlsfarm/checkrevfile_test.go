package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// writeRevocationFile leaves at file the revocation file of a real node of
// farmName holding secret: the node, whose farm is unreachable, revokes a
// session it issued (pending) and closes, writing the file.
func writeRevocationFile(t *testing.T, file, farmName string, secret farm.Secret) {
	t.Helper()
	o := farmtest.Options{
		Secret: secret,
		NewTransport: func(t testing.TB, name string) (transport.Bus, transport.Store) {
			bus, store, closer, err := openTransport("redis://127.0.0.1:1/0", name) // nothing listens
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { closer.Close() })
			return bus, store
		},
		Tweak: func(c *farm.Config) {
			c.RevocationFile = file
			c.OpTimeout = 200 * time.Millisecond
		},
	}
	m := farmtest.Join(t, "writer", farmName, o)
	ids, _ := farmtest.Issue(t, m, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	st, err := m.Node.RevokeSession(ctx, ids[0])
	cancel()
	if err != nil || st != farm.RevokePending {
		t.Fatalf("revoke with the farm down: %v, %v; want pending", st, err)
	}
	m.Node.Close()
	if _, err := os.Stat(file); err != nil {
		t.Fatalf("the node left no revocation file: %v", err)
	}
}

// TestCheckOpensRevocationFile: check opens farm.revocation_file (and the
// lifecycle file beside it) under the farm secret as serve's start does,
// without changing it. A file written under another secret or for another
// farm, cut short, or a corrupted journal or lifecycle file stops serve, and must
// fail check, naming the setting and the file and showing no key; a good
// file, none at all, and a corrupted sent file (which serve logs and
// ignores) pass both. Before, check never opened the file. A directory
// that cannot be written (here: none) fails both: serve used to start and
// warn at the first revocation that it stayed in memory only.
func TestCheckOpensRevocationFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	secret, other := farm.NewSecret(1), farm.NewSecret(1)
	secretFile := filepath.Join(dir, "farm.key")
	if err := farm.WriteSecretFile(secretFile, secret); err != nil {
		t.Fatal(err)
	}
	name := farmtest.FarmName(t)
	good := filepath.Join(dir, "good", "revocations")
	otherSecret := filepath.Join(dir, "othersecret", "revocations")
	otherFarm := filepath.Join(dir, "otherfarm", "revocations")
	for _, p := range []string{good, otherSecret, otherFarm} {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	writeRevocationFile(t, good, name, secret)
	writeRevocationFile(t, otherSecret, name, other)
	writeRevocationFile(t, otherFarm, name+"-other", secret)
	raw, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	with := func(sub string, files map[string][]byte) string {
		p := filepath.Join(dir, sub, "revocations")
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		for suffix, b := range files {
			if err := os.WriteFile(p+suffix, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return p
	}
	truncated := with("truncated", map[string][]byte{"": raw[:len(raw)/2]})
	flipped := append([]byte(nil), raw...)
	flipped[len(flipped)-1] ^= 1
	corrupted := with("corrupted", map[string][]byte{"": flipped})
	jraw, err := os.ReadFile(good + ".journal")
	if err != nil {
		t.Fatalf("the node left no journal: %v", err)
	}
	jflipped := append([]byte(nil), jraw...)
	jflipped[len(jflipped)-1] ^= 1
	badJournal := with("badjournal", map[string][]byte{"": raw, ".journal": jflipped})
	badLife := with("badlife", map[string][]byte{".lifecycle": []byte("not sealed at all, just bytes")})
	badSent := with("badsent", map[string][]byte{"": raw, ".sent": []byte("not sealed at all, just bytes")})

	// What the good file's directory holds, each file's bytes and time.
	snapshot := func() string {
		ents, err := os.ReadDir(filepath.Dir(good))
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, e := range ents {
			p := filepath.Join(filepath.Dir(good), e.Name())
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			data, _ := os.ReadFile(p)
			fmt.Fprintf(&b, "%s %v %v %x\n", e.Name(), fi.Mode(), fi.ModTime().UnixNano(), sha256.Sum256(data))
		}
		return b.String()
	}
	before := snapshot()
	for _, tt := range []struct {
		name, file string
		refused    bool
	}{
		{"good", good, false},
		{"missing", with("empty", nil), false},
		{"no directory", filepath.Join(dir, "none", "revocations"), true},
		{"corrupted sent file", badSent, false},
		{"another farm secret", otherSecret, true},
		{"another farm", otherFarm, true},
		{"truncated", truncated, true},
		{"corrupted", corrupted, true},
		{"corrupted journal", badJournal, true},
		{"corrupted lifecycle file", badLife, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"-listen", "127.0.0.1:0", "-admin", "off", "-farm", "redis://127.0.0.1:1/0",
				"-farm-secret", secretFile, "-farm-name", name, "-revocation-file", tt.file}
			code, _, stderr := runCmd(t, append([]string{"check"}, args...))
			if !tt.refused {
				if code != 0 {
					t.Fatalf("check: exit %d, stderr %q; want 0", code, stderr)
				}
				return
			}
			if code != 1 || !strings.Contains(stderr, "farm.revocation_file") || !strings.Contains(stderr, filepath.Dir(tt.file)) {
				t.Errorf("check: exit %d, stderr %q; want 1, naming farm.revocation_file and the file", code, stderr)
			}
			for _, s := range []farm.Secret{secret, other} {
				if strings.Contains(stderr, hex.EncodeToString(s.Bytes)) || strings.Contains(stderr, base64.StdEncoding.EncodeToString(s.Bytes)) || bytes.Contains([]byte(stderr), s.Bytes) {
					t.Errorf("check shows a farm secret: %q", stderr)
				}
			}
			// serve refuses the same file at start, before serving.
			code, _, serr := runCmd(t, append([]string{"serve"}, args...))
			if code != 1 {
				t.Errorf("serve: exit %d, stderr %q; want 1: the case proves nothing", code, serr)
			}
		})
	}
	// check only read the good file: serve's start would have rewritten it.
	if after := snapshot(); after != before {
		t.Errorf("check changed the revocation file's directory:\n%s\nnow:\n%s", before, after)
	}
}
