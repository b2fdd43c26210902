package main

import (
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/tlsfarm/tlsfarm/farm"
)

// TestFlagsRefuseNonsense: farmsim refuses flags that would make a run
// measure nothing or loop without pause (-duration 0 divided the counts by
// zero; -lookups past a billion made the gap between lookups 0), a node
// count or mode it cannot run (found only at its turn, after the runs
// before it, whose results were then lost), and a
// stray argument, which is most likely a Redis URL given without -redis
// (the run then went to the default Redis), shown with its password
// masked.
func TestFlagsRefuseNonsense(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"redis://:s3cret@10.0.0.5:6379/0"}, `unexpected argument "redis://xxxxx@10.0.0.5:6379/0"`},
		{[]string{"-duration", "0"}, "-duration"},
		{[]string{"-duration", "-5s"}, "-duration"},
		{[]string{"-lookups", "-1"}, "-lookups"},
		{[]string{"-lookups", "2000000000"}, "-lookups"},
		{[]string{"-lifetime", "1s"}, "-lifetime"},
		{[]string{"-lookup-timeout", "0"}, "-lookup-timeout"},
		{[]string{"-rate", "0"}, "-rate"},
		{[]string{"-nodes", "3,1"}, "-nodes"},
		{[]string{"-nodes", "3,x"}, "-nodes"},
		{[]string{"-nodes", "3,"}, "-nodes"},
		{[]string{"-modes", "broadcast,stor-only"}, "-modes"},
		{[]string{"-modes", "broadcast,"}, "-modes"},
	} {
		_, err := parseFlags(tt.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: %v, want an error saying %q", tt.args, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%q: the error shows the password: %v", tt.args, err)
		}
	}
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatalf("the defaults: %v", err)
	}
	if !slices.Equal(o.ks, []int{3, 10, 30}) || !slices.Equal(o.ms, []farm.Mode{farm.Broadcast, farm.StoreOnly}) {
		t.Errorf("the defaults: nodes %v, modes %v", o.ks, o.ms)
	}
}
