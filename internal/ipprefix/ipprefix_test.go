package ipprefix

import (
	"net/netip"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // "" for not parsed
	}{
		{"192.0.2.7", "192.0.2.7/32"},
		{"192.0.2.7/24", "192.0.2.0/24"},
		{"2001:db8::1", "2001:db8::1/128"},
		{"2001:db8::/32", "2001:db8::/32"},
		{"::ffff:192.0.2.7", "192.0.2.7/32"},
		{"::ffff:192.0.2.0/120", "192.0.2.0/24"},
		{"::ffff:192.0.2.0/128", "192.0.2.0/32"},
		{"::ffff:0.0.0.0/96", "0.0.0.0/0"},
		{"::/0", "::/0"}, // IPv6 only: a mapped client is judged as IPv4
		{"fe80::1%eth0", ""},
		{"not an address", ""},
		{"192.0.2.0/33", ""},
	} {
		p, ok := Parse(tc.in)
		if got := map[bool]string{true: p.String()}[ok]; got != tc.want {
			t.Errorf("Parse(%q) = %q, %v; want %q", tc.in, got, ok, tc.want)
		}
	}
	if p, _ := Parse("::ffff:192.0.2.0/120"); !p.Contains(netip.MustParseAddr("192.0.2.200")) {
		t.Error("a mapped range does not hold an IPv4 address it maps")
	}
}
