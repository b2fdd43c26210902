package natsbus_test

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
)

// TestURLSecretsNotShown: a token or password with an unencoded "/", "?"
// or "#" ends the host early. Before the fix url.Parse's reason quoted it
// as a port, or Open took its first part for the host (and nats.go would
// dial it, and say so) and ignored the rest; now it is an error that shows
// no part of it.
func TestURLSecretsNotShown(t *testing.T) {
	farmtest.TestOpenURLs(t, func(url string) (io.Closer, error) { return natsbus.Open(url, "f", nil) }, map[string]string{
		"nats://u:s3cret?x@127.0.0.1:4222":               "bad URL",
		"nats://u:s3cret/x@127.0.0.1:4222":               "bad URL",
		"nats://s3cret/x@127.0.0.1:4222":                 `"@" after the host`,
		"nats://s3cret#x@127.0.0.1:4222":                 `"@" after the host`,
		"nats://127.0.0.1:4222,nats://s3cret?x@10.0.0.1": `"@" after the host`,
		"nats://s3cret@127.0.0.1:4222/":                  "",
		"nats://u:4222?replicas=s3cret@127.0.0.1:4222":   `"@" after the host`,
	})
}

// TestWrongTokenNotShown: a server that refuses the token says so in the
// bus's state and the store's errors, none of which shows the token.
func TestWrongTokenNotShown(t *testing.T) {
	t.Parallel()
	srv := startNATS(t, "--auth", "right-token")
	tr, err := natsbus.Open(srv.URL("s3cret-token@"), farmtest.FarmName(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	var refusal error
	farmtest.Eventually(t, 5*time.Second, "the server refused the token", func() bool {
		refusal = tr.Conn().LastError()
		return refusal != nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	errs := []error{refusal}
	tr.Subscribe(ctx, func([]byte) {}, func(up bool, err error) { errs = append(errs, err) })
	errs = append(errs, tr.Publish(context.Background(), []byte("x")), tr.Ping(context.Background()))
	gctx, gcancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer gcancel()
	_, err = tr.Get(gctx, "k")
	errs = append(errs, err)
	t.Logf("errors seen: %v", errs)
	for _, err := range errs {
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Fatalf("error shows the token: %v", err)
		}
	}
}
