package config

import (
	"io"
	"slices"
	"testing"
	"time"
)

func TestRestartOnlyNamesWhatAReloadCannotChange(t *testing.T) {
	base := func() *Config {
		c, err := Load("serve", nil, env(nil), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	tests := []struct {
		name string
		edit func(*Config)
		want []string
	}{
		{"nothing", func(*Config) {}, nil},
		{"reloadable only", func(c *Config) {
			c.Listeners[0].Upstream = "http://127.0.0.1:1"
			c.Listeners[0].ALPN = []string{"h2"}
			c.Listeners[0].Certificates = []Certificate{{Cert: "x", Key: "y"}}
			c.Limits.HandshakeTimeout = time.Second
			c.Limits.MaxWebSocketsPerConnection = 2
			c.Log.Level = "debug"
			c.Admin.Token = "0123456789abcdefgh"
			c.Debug.ExposeSessionID = true
			c.Listeners[0].EarlyDataTrusted = []string{"203.0.113.0/24"}
		}, nil},
		{"cache and farm", func(c *Config) {
			c.Cache.Size = 7
			c.Farm.URL = "redis://127.0.0.1:6379"
		}, []string{"cache.size", "farm.url"}},
		{"listener address", func(c *Config) { c.Listeners[0].Address = "127.0.0.1:1" }, []string{"listeners[0].address"}},
		{"another listener", func(c *Config) { c.Listeners = append(c.Listeners, Listener{}) }, []string{"listeners (1 entries, now 2)"}},
		{"proxy protocol", func(c *Config) { c.Listeners[0].ProxyProtocol.Trusted = []string{"10.0.0.0/8"} },
			[]string{"listeners[0].proxy_protocol.trusted"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old, neu := base(), base()
			tt.edit(neu)
			if got := RestartOnly(old, neu); !slices.Equal(got, tt.want) {
				t.Errorf("RestartOnly = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestEveryFieldIsASetting keeps Settings (and so docs/config.md) complete:
// every YAML key of Config is listed.
func TestEveryFieldIsASetting(t *testing.T) {
	var keys []string
	collectKeys(reflectTypeOfConfig(), "", &keys)
	for _, k := range keys {
		if _, ok := settingByKey(k); !ok {
			t.Errorf("YAML key %s is not in Settings", k)
		}
	}
	for _, s := range settings {
		if !slices.Contains(keys, s.Key) {
			t.Errorf("setting %s is not a YAML key of Config", s.Key)
		}
	}
}
