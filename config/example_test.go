package config_test

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"

	"github.com/tlsfarm/tlsfarm/config"
	"github.com/tlsfarm/tlsfarm/farm"
)

// The daemon's configuration from its three sources: a YAML file (named by
// -config or $TLSFARM_CONFIG), the environment and the flags, each
// overriding the one before. A daemon passes os.Args[2:] and os.Getenv; the
// example uses a map for the environment, so that variables set on the
// machine do not change its output.
func ExampleLoad() {
	dir, err := os.MkdirTemp("", "tlsfarm-config")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	// The farm secret, as "tlsfarm keygen -out FILE" makes it: a file only
	// its owner may read. Never print or log its contents.
	secretFile := filepath.Join(dir, "farm.secret")
	if err := farm.WriteSecretFile(secretFile, farm.NewSecret(1)); err != nil {
		log.Fatal(err)
	}
	file := filepath.Join(dir, "tlsfarm.yaml")
	yaml := `
node: edge-1
listeners:
  - address: 0.0.0.0:443
    upstream: http://127.0.0.1:8080
cache:
  lifetime: 1h
farm:
  url: redis://127.0.0.1:6379/0
  name: example-config
  secret_file: ` + secretFile + `
log:
  level: warn
`
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		log.Fatal(err)
	}
	env := map[string]string{
		"TLSFARM_CONFIG":    file,
		"TLSFARM_LOG_LEVEL": "debug",          // over the file's warn
		"TLSFARM_LISTEN":    "127.0.0.1:8443", // over the file, under the flag
	}
	args := []string{"-listen", "127.0.0.1:8444", "-single-use"}

	c, err := config.Load("tlsfarm serve", args, func(k string) string { return env[k] }, os.Stderr)
	if err != nil {
		log.Fatal(err) // one line that names the setting, and where it came from
	}
	l := c.Listeners[0]
	fmt.Println("node:", c.Node)
	fmt.Println("listener:", l.Address, l.Upstream, l.ALPN, l.MinVersion)
	fmt.Println("log level:", c.Log.Level)
	fmt.Println("cache:", c.Cache.Mode, c.Cache.Lifetime, "single use:", c.Cache.SingleUse)
	fmt.Println("farm:", c.Farm.Name, c.Farm.Mode, "secrets:", len(c.Farm.Secrets))
	fmt.Println("store:", config.HasStore("redis"))
	// Output:
	// node: edge-1
	// listener: 127.0.0.1:8444 http://127.0.0.1:8080 [h2 http/1.1] 1.2
	// log level: debug
	// cache: stateful 1h0m0s single use: true
	// farm: example-config broadcast secrets: 1
	// store: true
}

// Load checks the whole configuration before anything starts: an error is
// one line that names the setting and where its value came from. A flag
// that does not parse is a UsageError, whose message and usage Load has
// already written to its output.
func ExampleLoad_errors() {
	getenv := func(k string) string {
		return map[string]string{"TLSFARM_TLS_MIN": "1.4"}[k]
	}
	_, err := config.Load("tlsfarm serve", []string{"-node", "edge-1"}, getenv, io.Discard)
	fmt.Println(err)

	_, err = config.Load("tlsfarm serve", []string{"-farm", "redis://127.0.0.1:6379/0"}, func(string) string { return "" }, io.Discard)
	fmt.Println(err)

	_, err = config.Load("tlsfarm serve", []string{"-listn", "127.0.0.1:8443"}, func(string) string { return "" }, io.Discard)
	var usage *config.UsageError
	if errors.As(err, &usage) {
		fmt.Println("usage error:", err)
	}

	_, err = config.Load("tlsfarm serve", []string{"-h"}, func(string) string { return "" }, io.Discard)
	fmt.Println("help:", err == flag.ErrHelp)
	// Output:
	// listeners[0].min_version ($TLSFARM_TLS_MIN): "1.4" is not a TLS version (1.0, 1.1, 1.2 or 1.3)
	// farm.secret_file: is required with farm.url (make one with: tlsfarm keygen -out FILE)
	// usage error: flag provided but not defined: -listn
	// help: true
}

// On a reload (SIGHUP) the daemon loads the configuration again, applies
// what can change while it runs, and warns about the rest, which
// RestartOnly names.
func ExampleRestartOnly() {
	noEnv := func(string) string { return "" }
	before, err := config.Load("tlsfarm serve", []string{"-node", "edge-1"}, noEnv, io.Discard)
	if err != nil {
		log.Fatal(err)
	}
	// The file (here the flags) has changed since.
	after, err := config.Load("tlsfarm serve", []string{"-node", "edge-1",
		"-log-level", "debug", "-upstream", "http://127.0.0.1:8080", // applied at once
		"-cache-size", "500000", "-listen", "127.0.0.1:8444", // at the next restart
	}, noEnv, io.Discard)
	if err != nil {
		log.Fatal(err)
	}
	for _, key := range config.RestartOnly(before, after) {
		fmt.Println("needs a restart:", key)
	}
	// Output:
	// needs a restart: listeners[0].address
	// needs a restart: cache.size
}
