package main

import (
	"strings"
	"testing"
)

// TestAdminClientHidesPassword: a -redis URL that does not parse (a
// password with an unencoded "/") is refused without the password, which
// url.Parse's error quoted before the fix.
func TestAdminClientHidesPassword(t *testing.T) {
	for _, url := range []string{"redis://:s3cret/x@127.0.0.1:6379", "redis+cluster://:s3cret?x@127.0.0.1:7000"} {
		c, err := adminClient(url)
		if err == nil {
			c.Close()
			t.Fatalf("%s: no error", url)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("error shows the password: %v", err)
		}
	}
}
