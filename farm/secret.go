package farm

import (
	"bufio"
	"bytes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/tlsfarm/tlsfarm/session"

	"github.com/tlsfarm/tlsfarm/internal/secretfile"
)

// minSecretLen is the shortest farm secret accepted, in bytes.
const minSecretLen = 32

// A Secret is one farm secret. Every key the farm uses — to seal messages and
// stored values, to authenticate session IDs, to protect ticket keys — is
// derived from it with HKDF-SHA256, bound to the farm's name. ID names the
// secret in everything derived from it, so that a farm can change its secret
// with the old and new accepted side by side.
type Secret struct {
	ID    uint8  // names the secret in envelopes and session IDs
	Bytes []byte // at least 32 bytes
}

// String never shows the secret.
func (s Secret) String() string { return fmt.Sprintf("farm secret %d (redacted)", s.ID) }

// GoString never shows the secret.
func (s Secret) GoString() string { return s.String() }

// NewSecret returns a new random secret of 32 bytes (the shortest a farm
// accepts) named id.
func NewSecret(id uint8) Secret {
	b := make([]byte, minSecretLen)
	rand.Read(b)
	return Secret{ID: id, Bytes: b}
}

// formatSecrets returns the text form of secrets that parseSecrets reads.
func formatSecrets(secrets ...Secret) []byte {
	var b bytes.Buffer
	b.WriteString("# tlsfarm farm secrets: one per line, \"ID:base64\"; the first seals, all open.\n")
	for _, s := range secrets {
		fmt.Fprintf(&b, "%d:%s\n", s.ID, base64.StdEncoding.EncodeToString(s.Bytes))
	}
	return b.Bytes()
}

// parseSecrets parses a farm secret file: one secret per line, as
// "ID:base64" or plain base64 (ID 0); blank lines and lines starting with
// '#' are ignored. The first secret is current: it seals and mints; the
// others are only accepted, during a change of secret.
func parseSecrets(data []byte) ([]Secret, error) {
	var out []Secret
	seen := map[uint8]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		var id uint64
		if i := strings.IndexByte(text, ':'); i >= 0 {
			var err error
			if id, err = strconv.ParseUint(text[:i], 10, 8); err != nil {
				return nil, fmt.Errorf("farm secret line %d: key ID must be 0-255", line)
			}
			text = text[i+1:]
		}
		b, err := base64.StdEncoding.DecodeString(text)
		if err != nil {
			return nil, fmt.Errorf("farm secret line %d: not base64", line)
		}
		if len(b) < minSecretLen {
			return nil, fmt.Errorf("farm secret line %d: %d bytes, need at least %d", line, len(b), minSecretLen)
		}
		if seen[uint8(id)] {
			return nil, fmt.Errorf("farm secret line %d: key ID %d given twice", line, id)
		}
		seen[uint8(id)] = true
		out = append(out, Secret{ID: uint8(id), Bytes: b})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, errors.New("farm secret file holds no secret")
	}
	return out, nil
}

// LoadSecrets reads a farm secret file, the one way secrets reach a farm
// from disk: one secret per line, as "ID:base64" or plain base64 (ID 0),
// each at least 32 bytes; blank lines and lines starting with '#' are
// ignored. The first secret is current: it seals and mints; the others are
// only accepted, during a change of secret. LoadSecrets refuses a file that
// group or others can read or write.
func LoadSecrets(path string) ([]Secret, error) {
	// A pipe or a device would block or never end; the file must be a
	// plain one. The mode check and the read are the one shared with the
	// admin token file.
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("farm secret file %s is not a regular file", path)
	}
	data, err := secretfile.Read(path)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
		return nil, fmt.Errorf("farm secret file: %w", err)
	}
	if err != nil {
		return nil, fmt.Errorf("farm secret file %w", err)
	}
	s, err := parseSecrets(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// WriteSecretFile writes secrets to a new secret file at path, mode 0600,
// in the form LoadSecrets reads. It refuses to overwrite an existing file.
func WriteSecretFile(path string, secrets ...Secret) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s exists; refusing to overwrite a farm secret", path)
	}
	if err != nil {
		return err
	}
	// A file that is not whole is no secret, and would make the next
	// attempt refuse to overwrite it: remove it on any failure.
	_, err = f.Write(formatSecrets(secrets...))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// farmKeys holds the keys derived from the farm's secrets: the AEADs that
// seal and open envelopes, by secret ID, and the session ID keys. (Ticket
// keys are a ticket.Ring's.)
type farmKeys struct {
	current uint8
	aead    [256]cipher.AEAD
	ids     []session.IDKey // current first
}

func deriveFarmKeys(farm string, secrets []Secret) (*farmKeys, error) {
	if len(secrets) == 0 {
		return nil, errors.New("farm: no farm secret")
	}
	k := &farmKeys{current: secrets[0].ID}
	for _, s := range secrets {
		if len(s.Bytes) < minSecretLen {
			return nil, fmt.Errorf("farm: secret %d is %d bytes, need at least %d", s.ID, len(s.Bytes), minSecretLen)
		}
		if k.aead[s.ID] != nil {
			return nil, fmt.Errorf("farm: secret %d given twice", s.ID)
		}
		sealKey, err := derive(s.Bytes, farm, "seal")
		if err != nil {
			return nil, err
		}
		aead, err := chacha20poly1305.NewX(sealKey)
		if err != nil {
			return nil, err
		}
		k.aead[s.ID] = aead
		idKey, err := derive(s.Bytes, farm, "session-id")
		if err != nil {
			return nil, err
		}
		k.ids = append(k.ids, session.IDKey{ID: s.ID, Key: [32]byte(idKey)})
	}
	return k, nil
}

// derive returns a 32-byte key for purpose, bound to the farm's name.
func derive(secret []byte, farm, purpose string) ([]byte, error) {
	return hkdf.Key(sha256.New, secret, []byte("tlsfarm/v1"), "tlsfarm/v1 "+purpose+" farm="+farm, 32)
}
