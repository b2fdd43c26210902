package natsbus

import (
	"errors"
	"strings"
	"testing"
)

// TestTokenRedacted: a NATS token (nats://TOKEN@host, a user name with no
// password) is a secret like a password: any error the transport reports
// with it in the text shows it masked. Before the fix only passwords were
// redacted, and a token passed through.
func TestTokenRedacted(t *testing.T) {
	for _, url := range []string{
		"nats://s3cret-token@127.0.0.1:1",
		"nats://127.0.0.1:2,tls://s3cret-token@127.0.0.1:1",
		"nats://s3cret%2Dtoken@127.0.0.1:1",
	} {
		tr, err := Open(url, "f", nil)
		if err != nil {
			t.Fatal(err)
		}
		err = tr.check(nil, "op", errors.New("the server said s3cret-token was wrong"))
		tr.Close()
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: error shows the token: %v", url, err)
		}
	}
}
