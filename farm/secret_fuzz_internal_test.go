package farm

import (
	"bytes"
	"encoding/base64"
	"regexp"
	"slices"
	"testing"
)

// secretErr is every form of parseSecrets' errors: a line number and a
// fixed text, never the line.
var secretErr = regexp.MustCompile(`^(farm secret line \d+: (key ID must be 0-255|not base64|\d+ bytes, need at least \d+|key ID \d+ given twice)|farm secret file holds no secret|bufio\.Scanner: token too long)$`)

// FuzzParseSecrets checks that parseSecrets, which reads the farm secret
// file, never panics, that what it accepts reads back the same from its
// own text form (formatSecrets), and that an error never quotes the file:
// a line it refuses may be a secret mistyped, and errors reach logs.
func FuzzParseSecrets(f *testing.F) {
	a, b := NewSecret(1), NewSecret(7)
	f.Add(formatSecrets(a, b))
	f.Add([]byte(base64.StdEncoding.EncodeToString(a.Bytes) + "\n"))
	f.Add([]byte("# comment\n\n  3:" + base64.StdEncoding.EncodeToString(b.Bytes) + "  \n"))
	f.Add([]byte("1:" + base64.StdEncoding.EncodeToString(a.Bytes) + "\n1:" + base64.StdEncoding.EncodeToString(b.Bytes)))
	f.Add([]byte("256:AAAA\n"))
	f.Add([]byte("1:not base64!\n"))
	f.Add([]byte("2:" + base64.StdEncoding.EncodeToString(a.Bytes[:16])))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := parseSecrets(data)
		if err != nil {
			if !secretErr.MatchString(err.Error()) {
				t.Fatalf("an error not of the known forms (it may quote the file): %v", err)
			}
			return
		}
		if len(got) == 0 {
			t.Fatal("no error, and no secret")
		}
		seen := map[uint8]bool{}
		for _, s := range got {
			if len(s.Bytes) < minSecretLen {
				t.Fatalf("secret %d of %d bytes accepted", s.ID, len(s.Bytes))
			}
			if seen[s.ID] {
				t.Fatalf("key ID %d accepted twice", s.ID)
			}
			seen[s.ID] = true
		}
		again, err := parseSecrets(formatSecrets(got...))
		if err != nil {
			t.Fatalf("its own text form does not parse: %v", err)
		}
		if !slices.EqualFunc(got, again, func(x, y Secret) bool { return x.ID == y.ID && bytes.Equal(x.Bytes, y.Bytes) }) {
			t.Fatal("its own text form reads back different secrets")
		}
	})
}
