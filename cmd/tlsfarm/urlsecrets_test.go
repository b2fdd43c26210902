package main

import (
	"bytes"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tlsfarm/tlsfarm/farm"
)

// TestFarmURLSecretsNotPrinted: for a farm URL of every scheme with a
// password or NATS token in it, nothing tlsfarm prints shows the secret:
// the help of tlsfarm, serve, check and keys with the URL in
// $TLSFARM_FARM_URL, check and keys given it as a stray argument (before
// the fix they quoted it whole), and the refusals of check and keys of
// the URL malformed (an option given twice, a password with an
// unencoded "/"), where keys's come from the transports' Open.
func TestFarmURLSecretsNotPrinted(t *testing.T) {
	dir := privateDir(t)
	secret := filepath.Join(dir, "farm.secret")
	if err := farm.WriteSecretFile(secret, farm.NewSecret(0)); err != nil {
		t.Fatal(err)
	}
	export := "file:" + filepath.Join(dir, "keys.json")
	for _, url := range []string{
		"redis://:s3cret@127.0.0.1:1/0",
		"rediss://user:s3cret@127.0.0.1:1",
		"redis+cluster://:s3cret@127.0.0.1:1?addr=127.0.0.1:2",
		"redis+sentinel://u:s3cret@127.0.0.1:1?master_name=m&password=s3cret",
		"nats://s3cret@127.0.0.1:1",
		"nats://127.0.0.1:2,tls://u:s3cret@127.0.0.1:1",
		"amqp://u:s3cret@127.0.0.1:1/",
		"amqps://u:s3cret@127.0.0.1:1/vh",
	} {
		sep := "?"
		if strings.Contains(url, "?") {
			sep = "&"
		}
		twice := url + sep + "x=1&x=2"
		slash := strings.Replace(url, "s3cret@", "s3cret/x@", 1)
		var out bytes.Buffer
		t.Setenv("TLSFARM_FARM_URL", url)
		for _, args := range [][]string{
			{"-h"}, {"serve", "-h"}, {"check", "-h"}, {"keys", "-h"},
			{"check", "-admin", "off", url},
			{"keys", "-farm-secret", secret, "-export", export, url},
		} {
			run(args, &out, &out)
		}
		t.Setenv("TLSFARM_FARM_URL", "")
		for _, bad := range []string{twice, slash} {
			run([]string{"check", "-admin", "off", "-farm", bad, "-farm-secret", secret}, &out, &out)
			if strings.HasPrefix(bad, "amqp") {
				continue // keys needs a store
			}
			o, code := parseKeys([]string{"-farm", bad, "-farm-secret", secret, "-export", export}, func(string) string { return "" }, &out)
			if o == nil {
				t.Fatalf("%s: keys refused it before opening the transport: exit %d, %s", bad, code, out.String())
			}
			if a, err := startKeys(o, slog.New(slog.NewTextHandler(&out, nil))); err == nil {
				a.stop()
				t.Errorf("keys started with %s", bad)
			} else {
				io.WriteString(&out, err.Error()+"\n")
			}
		}
		if strings.Contains(out.String(), "s3cret") {
			t.Errorf("%s: printed:\n%s", url, out.String())
		}
	}
}
