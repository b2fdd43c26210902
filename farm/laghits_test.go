package farm_test

import (
	"strings"
	"testing"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/transport"
	"github.com/tlsfarm/tlsfarm/internal/redistest"
)

// TestHeldRevokedWhileDeliveryLags: farmtest.HeldRevokedWhileDeliveryLags
// on the machine's Redis, for each TLS version: n2, whose bus path lags,
// stalls or is cut, must not resume a session it holds once n3 reports
// its revocation applied, and resumes a control session once its store
// confirms it.
func TestHeldRevokedWhileDeliveryLags(t *testing.T) {
	t.Parallel()
	for _, tv := range versions {
		t.Run(tv.name, func(t *testing.T) {
			t.Parallel()
			farmtest.HeldRevokedWhileDeliveryLags(t, farmtest.HeldRevokedOptions{
				Version: tv.v,
				Server:  func(t *testing.T) farmtest.Server { return sharedRedis(t) },
			})
		})
	}
}

// sharedRedis is the machine's Redis as a farmtest.Server (farms on it
// keep apart by their names).
func sharedRedis(t *testing.T) farmtest.Server {
	return redisServer(redistest.URL(t))
}

// redisServer is the Redis at url as a farmtest.Server: a member reaching
// it at another address (a proxy's) uses url with that address.
func redisServer(url string) farmtest.Server {
	addr := strings.TrimPrefix(url, "redis://")
	if i := strings.IndexAny(addr, "/?"); i >= 0 {
		addr = addr[:i]
	}
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		addr = addr[i+1:]
	}
	return farmtest.Server{
		Addr: addr,
		Open: func(tb testing.TB, a, farmName string) (transport.Bus, transport.Store) {
			tr := openRedis(tb, strings.Replace(url, addr, a, 1), farmName)
			return tr, tr
		},
	}
}

// TestGraceCutWhileDeliveryLags: farmtest.GraceCutWhileDeliveryLags on
// the machine's Redis: a node whose delivery lags within MaxDeliveryLag
// but past the caches' ResumeGrace must not resume a session past a grace
// cut made elsewhere.
func TestGraceCutWhileDeliveryLags(t *testing.T) {
	t.Parallel()
	farmtest.GraceCutWhileDeliveryLags(t, sharedRedis)
}
