package proxy

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"

	"github.com/tlsfarm/tlsfarm/internal/ipprefix"
)

// earlyTrust is the set of addresses (Listener.EarlyDataTrusted) whose
// EarlyDataHeader a listener keeps; nil keeps none.
type earlyTrust []netip.Prefix

// parseEarlyTrust parses the addresses and CIDR ranges of
// Listener.EarlyDataTrusted.
func parseEarlyTrust(list []string) (earlyTrust, error) {
	var t earlyTrust
	for _, s := range list {
		s = strings.TrimSpace(s)
		// holds judges an IPv4 address mapped into IPv6 as the IPv4
		// address; ipprefix keeps a mapped address or range as the
		// IPv4 one.
		p, ok := ipprefix.Parse(s)
		if !ok {
			return nil, fmt.Errorf("EarlyDataTrusted: %q is not an IP address or CIDR range", s)
		}
		t = append(t, p)
	}
	return t, nil
}

// holds reports whether the host of remote (a request's RemoteAddr,
// host:port) is in t. An IPv4 address mapped into IPv6 counts as the IPv4
// address; anything that does not parse is not in t.
func (t earlyTrust) holds(remote string) bool {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return false
	}
	a := ap.Addr().Unmap().WithZone("")
	for _, p := range t {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// An earlyField is what relayedEarlyData did with a request's
// EarlyDataHeader.
type earlyField int

const (
	earlyAbsent  earlyField = iota // the request had none
	earlyKept                      // from a trusted intermediary: kept, as "1"
	earlyRemoved                   // from anyone else: removed
)

// relayedEarlyData deals with the EarlyDataHeader that r arrived with, and
// reports what it did. Only an intermediary the listener trusts
// (Listener.EarlyDataTrusted) keeps it, judged by r.RemoteAddr: the
// connection's peer, or, with Listener.ProxyProtocol, the client address
// of the PROXY header (the listener takes those from its trusted balancers
// only). Kept, it becomes one field of value "1", whatever the values and
// however many the fields: RFC 8470 §5.1 defines no other value, and a
// request that carries the field was early on an earlier hop, whatever its
// form, so it may be a replay. From anyone else it is removed, so that only
// the node and its trusted intermediaries mark a request as early.
func (r *route) relayedEarlyData(req *http.Request) earlyField {
	if _, ok := req.Header[EarlyDataHeader]; !ok {
		return earlyAbsent
	}
	if len(r.earlyTrust) == 0 || !r.earlyTrust.holds(req.RemoteAddr) {
		delete(req.Header, EarlyDataHeader)
		return earlyRemoved
	}
	req.Header[EarlyDataHeader] = []string{"1"}
	return earlyKept
}

// relayEarlyData applies rt.relayedEarlyData to req and counts what it
// did (tlsfarm_early_data_fields_total).
func (s *Server) relayEarlyData(rt *route, req *http.Request) {
	switch rt.relayedEarlyData(req) {
	case earlyKept:
		s.stats.earlyKept.Add(1)
	case earlyRemoved:
		s.stats.earlyRemoved.Add(1)
	}
}
