package redact

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"testing"
)

func TestPasswords(t *testing.T) {
	for raw, want := range map[string][]string{
		"amqp://user:pass@host/":      {"pass"},
		"amqp://user:p%40ss@host/":    {"p@ss", "p%40ss"},
		"nats://user@host:4222":       nil,
		"redis://:@host:6379":         nil,
		"redis://host:6379/0":         nil,
		"rediss://u:s3cr%2Ft@h:6380/": {"s3cr/t", "s3cr%2Ft"},
	} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		if got := Passwords(u); !slices.Equal(got, want) {
			t.Errorf("Passwords(%s) = %q, want %q", raw, got, want)
		}
	}
}

// TestURLErrorDropsTheURL: url.Parse quotes the whole URL, password and
// all, in its error; URLError keeps only the reason.
func TestURLErrorDropsTheURL(t *testing.T) {
	//lint:ignore SA1007 the URL is invalid on purpose: its parse error is the subject
	_, err := url.Parse("amqp://user:hunter2@host:port/")
	if err == nil || !strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("url.Parse error %v: want one that quotes the password", err)
	}
	if got := URLError(err); strings.Contains(got.Error(), "hunter2") {
		t.Errorf("URLError = %q: shows the password", got)
	}
	if got := URLError(fmt.Errorf("dial: %w", err)); strings.Contains(got.Error(), "hunter2") {
		t.Errorf("URLError of a wrapped url.Error = %q: shows the password", got)
	}
	if URLError(io.EOF) != io.EOF || URLError(nil) != nil {
		t.Error("URLError changed an error that is not a url.Error")
	}
}

func TestError(t *testing.T) {
	err := fmt.Errorf("connect to amqp://u:hunter2@h/ (hunter2): %w", io.EOF)
	got := Error(err, []string{"", "hunter2"})
	if want := "connect to amqp://u:xxxxx@h/ (xxxxx): EOF"; got.Error() != want {
		t.Errorf("Error = %q, want %q", got, want)
	}
	// An error without a secret comes back as itself, so errors.Is works.
	if got := Error(err, []string{"other"}); got != err || !errors.Is(got, io.EOF) {
		t.Errorf("Error without a secret in the text = %v, want the error itself", got)
	}
	if Error(nil, []string{"hunter2"}) != nil {
		t.Error("Error(nil) is not nil")
	}
}
