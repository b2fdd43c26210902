package redisbus_test

import (
	"io"
	"testing"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
)

// TestRepeatedURLOptionRefused: an option given twice is an error that
// names it (and never a password, here a sentinel's master password);
// before the fix echo and reload took the first value and go-redis's own
// options the last. addr, the list of servers, may repeat.
func TestRepeatedURLOptionRefused(t *testing.T) {
	farmtest.TestOpenURLs(t, func(url string) (io.Closer, error) { return redisbus.Open(url, "f") }, map[string]string{
		"redis://user:s3cret@127.0.0.1:6379?echo=true&echo=false":                        `option "echo" is given 2 times`,
		"redis+cluster://127.0.0.1:7000?reload=1s&reload=2s":                             `option "reload" is given 2 times`,
		"rediss://127.0.0.1:6380?dial_timeout=1s&pool_size=4&dial_timeout=2s":            `option "dial_timeout" is given 2 times`,
		"redis+sentinel://127.0.0.1:26379?master_name=m&password=s3cret&password=s3cret": `option "password" is given 2 times`,
		"redis+sentinel://127.0.0.1:26379?master_name=m&master_name=n":                   `option "master_name" is given 2 times`,
		"redis://127.0.0.1:6379?db=1&db=2&db=3":                                          `option "db" is given 3 times`,
		"redis+cluster://127.0.0.1:7000?addr=127.0.0.1:7001&addr=127.0.0.1:7002":         "",
		"redis+sentinel://127.0.0.1:26379?master_name=m&addr=127.0.0.1:1&addr=[::1]:2":   "",
	})
}
