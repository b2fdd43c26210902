package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/internal/natstest"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
	"github.com/tlsfarm/tlsfarm/internal/testenv"
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

// TestFarmURLSecretsNotInLogsOrAdmin runs serve against real servers that
// refuse the URL's password or token (Redis, a nats-server with token
// authentication, RabbitMQ) or do not answer (Sentinel): neither its log,
// at debug level, nor /healthz, /readyz or /metrics shows the secret; nor
// does a strict serve's refusal to start, which carries the transport's
// error.
func TestFarmURLSecretsNotInLogsOrAdmin(t *testing.T) {
	t.Parallel()
	secret, cert, key, _ := farmFiles(t)
	urls := []string{"redis+sentinel://u:s3cret@127.0.0.1:1?master_name=m&password=s3cret"}
	if testenv.Reachable("127.0.0.1:6379") {
		urls = append(urls, "redis://tlsfarm-nobody:s3cret@127.0.0.1:6379/0")
	}
	if testenv.Reachable("127.0.0.1:5672") {
		urls = append(urls, "amqp://guest:s3cret@127.0.0.1:5672/")
	}
	if addr := tokenNATS(t, "right-token"); addr != "" {
		urls = append(urls, "nats://127.0.0.1:1,nats://s3cret@"+addr)
	}
	for _, url := range urls {
		name := redistest.Farm(t)
		p := serveProc(t, []string{"-cert", cert, "-key", key, "-farm", url, "-farm-secret", secret, "-farm-name", name})
		wait := 1500 * time.Millisecond
		if strings.HasPrefix(url, "amqp") {
			wait = 4 * time.Second // RabbitMQ refuses a password after 3 s
		}
		time.Sleep(wait)
		out := p.log()
		for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
			_, body := adminDo(t, p, "GET", path, "")
			out += body
		}
		p.stop()
		_, stdout, stderr := runCmd(t, []string{"serve", "-listen", "127.0.0.1:0", "-admin", "off", "-cert", cert, "-key", key,
			"-farm", url, "-farm-secret", secret, "-farm-name", name, "-strict", "-farm-connect-timeout", wait.String()})
		out += stdout + stderr
		if strings.Contains(out, "s3cret") {
			t.Errorf("%s: shown:\n%s", url, out)
		}
	}
}

// tokenNATS starts the machine's nats-server with JetStream and token
// authentication on a free loopback port until the test ends, and returns
// its address, or "" if nats-server is not installed.
func tokenNATS(t *testing.T, token string) string {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		return ""
	}
	name := fmt.Sprintf("tlsfarm-test-%d", rand.Uint64())
	for range 8 {
		addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		_, port, _ := net.SplitHostPort(addr)
		p, err := testenv.StartProc(bin, "-a", "127.0.0.1", "-p", port, "-js", "-sd", t.TempDir(), "--auth", token, "--server_name", name)
		if err != nil {
			t.Fatal(err)
		}
		err = p.WaitReady(testenv.StartTimeout, func() error { return natstest.Answers(addr, name) })
		if err == nil {
			t.Cleanup(p.Kill)
			return addr
		}
		if !errors.Is(err, testenv.ErrPortTaken) {
			t.Fatalf("nats-server did not start: %v", err)
		}
	}
	t.Fatal("nats-server did not start: 8 ports in a row were taken")
	return ""
}
