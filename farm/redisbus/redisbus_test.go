package redisbus_test

import (
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

func open(t *testing.T, url, farmName string) *redisbus.Transport {
	t.Helper()
	tr, err := redisbus.Open(url, farmName)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

func TestBusConformance(t *testing.T) {
	url := redistest.URL(t)
	farmtest.TestBus(t, func(t *testing.T, name string) transport.Bus { return open(t, url, name) })
}

func TestStoreConformance(t *testing.T) {
	url := redistest.URL(t)
	farmtest.TestStore(t, func(t *testing.T, name string) transport.Store { return open(t, url, name) })
}

func TestOpenURLs(t *testing.T) {
	farmtest.TestOpenURLs(t, func(url string) (io.Closer, error) { return redisbus.Open(url, "f") }, map[string]string{
		"redis://127.0.0.1:6379/0":                           "",
		"rediss://user:pass@127.0.0.1:6380/1":                "",
		"redis+cluster://127.0.0.1:7000?addr=127.0.0.1:7001": "",
		"redis+sentinel://127.0.0.1:26379?master_name=m":     "",
		"redis+cluster://127.0.0.1:7000?reload=2s":           "",
		"redis+cluster://127.0.0.1:7000?reload=soon":         "reload",
		"redis://127.0.0.1:6379?reload=2s":                   "reload",
		"http://127.0.0.1":                                   "scheme",
		"redis+bogus://127.0.0.1":                            "variant",
		"redis://user:s3cret@[::1":                           "redisbus",
	})
	if _, err := redisbus.Open("redis://127.0.0.1:6379", "bad{name}"); err == nil {
		t.Error("farm name with braces accepted")
	}
}

// TestKeyLayout: coordination keys and the bus share the farm's hash tag
// (one slot of a cluster, for the scripts); session records are tagged by
// their own key, so that they spread over every slot.
func TestKeyLayout(t *testing.T) {
	tr, err := redisbus.Open("redis://127.0.0.1:6379", "prod")
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for _, k := range []string{tr.Key("lease"), tr.Key("revoked"), tr.Channel()} {
		if !strings.HasPrefix(k, "tlsfarm:{prod}:") {
			t.Errorf("%q is outside the farm's hash tag", k)
		}
	}
	if k := tr.RecordKey("s:abc"); k != "tlsfarm:prod:{s:abc}" {
		t.Errorf("RecordKey(s:abc) = %q, want tlsfarm:prod:{s:abc}", k)
	}
	if s := redistest.Slot("foo"); s != 12182 { // CLUSTER KEYSLOT foo
		t.Fatalf("Slot(foo) = %d, want 12182", s)
	}
	slots := map[int]bool{}
	for i := range 64 {
		k := tr.RecordKey(fmt.Sprintf("s:%064x", i*7919))
		slots[redistest.Slot(k)] = true
	}
	if len(slots) < 60 {
		t.Errorf("64 session records fall in only %d slots", len(slots))
	}
}
