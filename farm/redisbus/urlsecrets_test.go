package redisbus_test

import (
	"io"
	"testing"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/farm/redisbus"
)

// TestURLSecretsNotShown: no error from Open shows the password, for every
// scheme: not one with an unencoded "/", "?" or "#" (which ends the host
// early: url.Parse quoted it as a port, or go-redis named it as an option
// or a database), not a sentinel URL's password option (the master's),
// and not one that go-redis quotes back in its own error.
func TestURLSecretsNotShown(t *testing.T) {
	farmtest.TestOpenURLs(t, func(url string) (io.Closer, error) { return redisbus.Open(url, "f") }, map[string]string{
		"redis://:s3cret/x@127.0.0.1:6379":                                                "bad URL",
		"rediss://u:s3cret?x@127.0.0.1:6380":                                              "bad URL",
		"redis+cluster://:s3cret#x@127.0.0.1:7000":                                        "bad URL",
		"redis://pa?s3cret@127.0.0.1:6379":                                                `"@" after the host`,
		"redis+sentinel://pa/s3cret@127.0.0.1:26379?master_name=m":                        `"@" after the host`,
		"redis://u:s3cret@127.0.0.1:6379/s3cret":                                          "database",
		"redis+sentinel://127.0.0.1:26379?master_name=m&password=s3cret&db=s3cret":        "database",
		"rediss+sentinel://127.0.0.1:26379?master_name=m&password=s3%2Fcret&db=s3%2Fcret": "database",
		"redis+sentinel://127.0.0.1:26379?master_name=m&password=p@s3cret":                "",
		// A password whose head is digits and with an unencoded "?":
		// the user name was taken for the host, the head for its port,
		// and the rest, up to the "@", for an option's value.
		"redis://u:1234?db=s3cret@127.0.0.1:6379":                                            `"@" after the host`,
		"redis://u:1234?client_name=s3cret@127.0.0.1:6379":                                   `"@" after the host`,
		"redis://127.0.0.1:6379?client_name=app%40node":                                      "",
		"redis+sentinel://127.0.0.1:26379?master_name=m&username=app@corp&password=p@s3cret": "",
	})
}
