package main

import (
	"context"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

// TestRedisURLPasswordNotShown: farmbench's refusals of its -redis URL,
// one Redis does not answer at and one that does not parse (a password
// with an unencoded "/"), do not show the password. Before the fix the
// first quoted the URL whole and the second url.Parse's error did.
func TestRedisURLPasswordNotShown(t *testing.T) {
	for _, url := range []string{"redis://:s3cret@127.0.0.1:1/0", "redis://:s3cret/x@127.0.0.1:1/0"} {
		var o options
		o.register(flag.NewFlagSet("farmbench", flag.ContinueOnError))
		o.redisURL, o.farms = url, "stateful"
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := bench(ctx, o, io.Discard, io.Discard)
		cancel()
		if err == nil {
			t.Fatalf("%s: no error", url)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("error shows the password: %v", err)
		}
		t.Log(err)
	}
}
