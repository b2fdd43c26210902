package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/tlsfarm/tlsfarm/farm"
)

// TestCheckWarnsHeartbeatOff: check (and serve, which shares the
// warnings) warns about an AMQP farm URL with heartbeat=0, which leaves
// dead-broker detection to the broker's interval, and says so without
// the URL's password; other heartbeats, and other transports, pass
// without it.
func TestCheckWarnsHeartbeatOff(t *testing.T) {
	t.Parallel()
	secret := filepath.Join(t.TempDir(), "farm.key")
	if err := farm.WriteSecretFile(secret, farm.NewSecret(1)); err != nil {
		t.Fatal(err)
	}
	const warning = "warning: farm.url sets heartbeat=0"
	for url, want := range map[string]bool{
		"amqp://u:s3cret@127.0.0.1:1/?heartbeat=0":      true,
		"amqps://u:s3cret@127.0.0.1:1/vh?heartbeat=00":  true,
		"amqp://u:s3cret@127.0.0.1:1/?heartbeat=5":      false,
		"amqp://u:s3cret@127.0.0.1:1/":                  false,
		"nats://s3cret@127.0.0.1:1?pending_msgs=-1":     false,
		"redis://:s3cret@127.0.0.1:1/0?dial_timeout=0s": false,
	} {
		code, stdout, stderr := runCmd(t, []string{"check", "-listen", "127.0.0.1:0", "-admin", "off", "-farm", url, "-farm-secret", secret})
		if code != 0 || strings.Contains(stderr, warning) != want {
			t.Errorf("check -farm %s: exit %d, stderr %q; want the warning: %v", url, code, stderr, want)
		}
		if strings.Contains(stdout+stderr, "s3cret") {
			t.Errorf("check -farm %s shows the password: %s%s", url, stdout, stderr)
		}
	}
}
