package keyexport

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// jsonSetFormat is the value of the "format" member of the JSON key set file;
// a consumer should refuse any other.
const jsonSetFormat = "tlsfarm-ticket-keys/v1"

// JSONSet is the JSON key set file. Its keys are derived for the JSON format
// and are 32 bytes long: a consumer uses them as they are (a Go server's
// tls.Config.SetSessionTicketKeys) or derives its own from them. The file is
// key material: anyone who reads it can decrypt the tickets of its keys.
type JSONSet struct {
	Format          string    `json:"format"`           // "tlsfarm-ticket-keys/v1"; refuse any other
	Epoch           uint64    `json:"epoch"`            // the farm key set's epoch: newer sets have greater ones
	Rotated         time.Time `json:"rotated"`          // when the current key started encrypting
	IntervalSeconds float64   `json:"interval_seconds"` // the farm's rotation interval
	Keep            int       `json:"keep"`             // previous keys the farm keeps
	Keys            []JSONKey `json:"keys"`             // current, next, previous newest first
}

// A JSONKey is one key of the JSON key set file.
type JSONKey struct {
	Role          Role      `json:"role"`           // "current", "next", "previous" or "filler"
	Name          string    `json:"name"`           // 16 bytes, hex: safe to log
	Key           string    `json:"key"`            // 32 bytes, standard base64
	EncryptsFrom  time.Time `json:"encrypts_from"`  // as SetKey.EncryptsFrom
	EncryptsUntil time.Time `json:"encrypts_until"` // as SetKey.EncryptsUntil
	DecryptsUntil time.Time `json:"decrypts_until"` // as SetKey.DecryptsUntil
}

// jsonFile returns the JSON key set file for s.
func jsonFile(s *Set) ([]byte, error) {
	out := JSONSet{
		Format: jsonSetFormat, Epoch: s.Epoch, Rotated: s.Rotated.UTC(),
		IntervalSeconds: s.Interval.Seconds(), Keep: s.Keep,
	}
	for _, k := range s.Keys {
		name, key := fileKey(k.Key)
		out.Keys = append(out.Keys, JSONKey{
			Role: k.Role, Name: hex.EncodeToString(name), Key: base64.StdEncoding.EncodeToString(key),
			EncryptsFrom: k.EncryptsFrom.UTC(), EncryptsUntil: k.EncryptsUntil.UTC(), DecryptsUntil: k.DecryptsUntil.UTC(),
		})
		clear(key)
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// A FileTarget writes a Set as the JSON key set file (see JSONSet) at Path.
type FileTarget struct {
	Path string // its directory must pass CheckDir
}

// String returns "file:" and the path.
func (t *FileTarget) String() string { return "file:" + t.Path }

// Export writes the file by the package's rules for key files: mode 0600,
// a temporary file, fsync and rename.
func (t *FileTarget) Export(_ context.Context, s *Set) error {
	data, err := jsonFile(s)
	if err != nil {
		return err
	}
	defer clear(data)
	if err := writeFiles([]file{{Path: t.Path, Data: data}}); err != nil {
		return fmt.Errorf("key set file: %w", err)
	}
	return nil
}
