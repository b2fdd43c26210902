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

// TestCheckWarnsReplicasUnwaited: check warns when cache.single_use or a
// listener's early_data rests on a Redis Sentinel or Cluster farm URL
// without wait_replicas (a failover can undo a take or a strike the master
// acknowledged), and not with wait_replicas=1, on a single master, or
// with neither promise on; never with the URL's password.
func TestCheckWarnsReplicasUnwaited(t *testing.T) {
	t.Parallel()
	secret := filepath.Join(t.TempDir(), "farm.key")
	if err := farm.WriteSecretFile(secret, farm.NewSecret(1)); err != nil {
		t.Fatal(err)
	}
	const warning = "without wait_replicas"
	sentinel := "redis+sentinel://:s3cret@127.0.0.1:1?master_name=m"
	cluster := "redis+cluster://:s3cret@127.0.0.1:1?addr=127.0.0.1:2"
	for _, tc := range []struct {
		url   string
		flags []string
		want  bool
	}{
		{sentinel, []string{"-single-use"}, true},
		{sentinel + "&wait_replicas=0", []string{"-single-use"}, true},
		{cluster, []string{"-early-data", "-http3"}, true},
		{sentinel + "&wait_replicas=1", []string{"-single-use"}, false},
		{cluster + "&wait_replicas=1&wait_timeout=20ms", []string{"-early-data", "-http3"}, false},
		{"redis://:s3cret@127.0.0.1:1/0", []string{"-single-use"}, false},
		{sentinel, nil, false},
	} {
		args := append([]string{"check", "-listen", "127.0.0.1:0", "-admin", "off", "-farm", tc.url, "-farm-secret", secret}, tc.flags...)
		code, stdout, stderr := runCmd(t, args)
		if code != 0 || strings.Contains(stderr, warning) != tc.want {
			t.Errorf("check -farm %s %v: exit %d, stderr %q; want the warning: %v", tc.url, tc.flags, code, stderr, tc.want)
		}
		if strings.Contains(stdout+stderr, "s3cret") {
			t.Errorf("check -farm %s shows the password: %s%s", tc.url, stdout, stderr)
		}
	}
}
