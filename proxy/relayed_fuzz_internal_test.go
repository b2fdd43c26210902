package proxy

import (
	"net"
	"net/netip"
	"strings"
	"testing"
)

// FuzzEarlyTrust checks parseEarlyTrust (Listener.EarlyDataTrusted, the
// addresses or CIDR ranges from the configuration, comma-separated here as
// -early-data-trusted gives them) on arbitrary input: no panic, and a list
// it accepts holds, for each entry, a request from the entry's own
// address (a range's first), with a port, also when an IPv4 address arrives mapped into
// IPv6 or an IPv4-mapped one arrives as IPv4; an entry it refuses is
// named in the error.
func FuzzEarlyTrust(f *testing.F) {
	for _, s := range []string{
		"192.0.2.0/24",
		"198.51.100.7, 2001:db8::/32",
		"::ffff:192.0.2.1",
		"::ffff:192.0.2.0/120",
		"fe80::1%eth0",
		"10.0.0.1/33",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		list := strings.Split(s, ",")
		trust, err := parseEarlyTrust(list)
		if err != nil {
			if !strings.Contains(err.Error(), "EarlyDataTrusted") {
				t.Fatalf("parseEarlyTrust(%q): the error does not name the setting: %v", list, err)
			}
			return
		}
		if len(trust) != len(list) {
			t.Fatalf("parseEarlyTrust(%q) kept %d entries", list, len(trust))
		}
		for _, e := range list {
			e = strings.TrimSpace(e)
			var a netip.Addr
			if p, err := netip.ParsePrefix(e); err == nil {
				// The range's first address. (Not the address as
				// written: ::ffff:0.0.0.0/0 is ::/0, IPv6 addresses,
				// and holds judges ::ffff:0.0.0.0 as IPv4, as the
				// docs have ::/0 and 0.0.0.0/0 trust each family.)
				a = p.Masked().Addr()
			} else {
				a = netip.MustParseAddr(e)
			}
			forms := []netip.Addr{a}
			if a.Is4() {
				forms = append(forms, netip.AddrFrom16(a.As16()))
			} else if a.Is4In6() {
				forms = append(forms, a.Unmap())
			}
			for _, f := range forms {
				remote := net.JoinHostPort(f.String(), "443")
				if !trust.holds(remote) {
					t.Fatalf("parseEarlyTrust(%q) does not hold %s, the address of entry %q", list, remote, e)
				}
			}
		}
	})
}
