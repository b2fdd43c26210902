// Package ipprefix parses the address lists of the configuration (an
// address or a CIDR range each) as the proxy judges client addresses: an
// IPv4 address mapped into IPv6 is the IPv4 address, so a mapped address
// or range is kept as the IPv4 one.
package ipprefix

import "net/netip"

// Parse parses s, an IP address or CIDR range, as a masked prefix (an
// address as a prefix of its full length). An IPv4-mapped address, or a
// mapped range of /96 or longer, becomes the IPv4 address or range it
// maps. It reports false for anything else, a zoned address included.
func Parse(s string) (netip.Prefix, bool) {
	if p, err := netip.ParsePrefix(s); err == nil {
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return p.Masked(), true
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), true
}
