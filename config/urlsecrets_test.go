package config

import (
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tlsfarm/tlsfarm/farm"
)

// TestFarmURLSecretsNotShown: wherever a farm URL may land by mistake
// (given to the farm section itself, to another setting, as a stray
// argument) or however it is malformed, the error names the problem and
// not the password or NATS token. Before the fix the first three quoted
// the URL whole, and check passed URLs that Open then refused.
func TestFarmURLSecretsNotShown(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "farm.secret")
	if err := farm.WriteSecretFile(secret, farm.NewSecret(1)); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, file string
		args       []string
		want       string // "" for no error
	}{
		{"URL as the farm section", "farm: nats://s3cret@127.0.0.1:4222\n", nil, "must be a mapping"},
		{"URL as another setting", "farm:\n  connect_timeout: redis://:s3cret@127.0.0.1:6379\n", nil, "not a duration"},
		{"URL as a list", "listeners: amqp://u:s3cret@127.0.0.1/\n", nil, "must be a list"},
		{"URL as a stray argument", "", []string{"-farm-name", "f", "nats://s3cret@127.0.0.1:4222"}, "unexpected argument"},
		{"option twice", "", []string{"-farm", "redis://:s3cret@127.0.0.1:6379?echo=true&echo=false"}, `option "echo" is given 2 times`},
		{"option twice on two servers", "", []string{"-farm", "nats://a:4222?replicas=3,nats://s3cret@b:4222?replicas=3"}, `option "replicas" is given 2 times`},
		{"amqp option twice", "", []string{"-farm", "amqp://u:s3cret@127.0.0.1/?heartbeat=0&heartbeat=5"}, `option "heartbeat" is given 2 times`},
		{"unencoded slash in a token", "", []string{"-farm", "nats://s3cret/x@127.0.0.1:4222"}, `"@" after the host`},
		{"unencoded ? in a password", "", []string{"-farm", "redis://u:s3cret?x@127.0.0.1:6379"}, "not a URL"},
		{"unencoded ? in a password of digits first", "", []string{"-farm", "redis://u:1234?db=s3cret@127.0.0.1:6379"}, `"@" after the host`},
		{"comma in a password option", "farm:\n  connect_timeout: \"redis+sentinel://127.0.0.1:26379?master_name=m&password=pw,s3cret\"\n", nil, "not a duration"},
		{"cluster servers", "", []string{"-farm", "redis+cluster://:s3cret@127.0.0.1:7000?addr=127.0.0.1:7001&addr=127.0.0.1:7002", "-farm-secret", secret}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.file != "" {
				args = append([]string{"-config", writeFile(t, "c.yaml", tt.file, 0o644)}, args...)
			}
			_, err := Load("serve", args, env(nil), io.Discard)
			switch {
			case tt.want == "" && err != nil:
				t.Fatal(err)
			case tt.want == "":
			case err == nil || !strings.Contains(err.Error(), tt.want):
				t.Errorf("error %v, want one about %q", err, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error shows the secret: %v", err)
			}
			t.Log(err)
		})
	}
}
