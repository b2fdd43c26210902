package redisbus

import (
	"maps"
	"slices"
	"strings"
	"testing"
)

// TestParseSlotHolders: the masters with slots in CLUSTER NODES, and not
// replicas, masters without slots (a fresh replica still listed as a
// master), or masters whose only entries are slots in migration.
func TestParseSlotHolders(t *testing.T) {
	const nodes = `a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001 master - 0 1 2 connected 5461-10922
c3 127.0.0.1:7002@17002 master,fail - 0 1 3 connected 10923-16383
d4 127.0.0.1:7003@17003 slave a1 0 1 1 connected
e5 127.0.0.1:7004@17004 master - 0 1 5 connected
f6 127.0.0.1:7005@17005 master - 0 1 6 connected [100->-a1]
`
	got := slices.Sorted(maps.Keys(parseSlotHolders(nodes)))
	if want := []string{"a1", "b2", "c3"}; !slices.Equal(got, want) {
		t.Fatalf("parseSlotHolders = %v, want %v", got, want)
	}
	if got := parseSlotHolders(""); len(got) != 0 {
		t.Fatalf("parseSlotHolders(\"\") = %v", got)
	}
}

// FuzzParseSlotHolders: any text (a reply from a broken or hostile
// server) parses without a panic, and only to IDs of lines flagged master.
func FuzzParseSlotHolders(f *testing.F) {
	f.Add("a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n")
	f.Add("x y master - 0 0 1 connected [1-<-z]\n")
	f.Add("\n\n master")
	f.Fuzz(func(t *testing.T, s string) {
		for id := range parseSlotHolders(s) {
			if !strings.Contains(s, id) {
				t.Fatalf("parseSlotHolders returned %q, not in its input", id)
			}
		}
	})
}
