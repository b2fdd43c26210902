package proxy

import "crypto/tls"

// handshakeConfig returns the config every handshake of a listener starts
// with. It is the one place where the parts of a handshake's config meet:
// pick chooses the config of the listener's current route; the session
// cache (session.Cache.Install) clones it for each handshake and binds the
// clone's WrapSession and UnwrapSession to that handshake (resumption
// chains, grace, single use); then adjust, if set, adds what the listener
// needs to the clone's callbacks (the issued ticket, for
// Config.ExposeSessionID; early-data admission, for HTTP/3).
func (s *Server) handshakeConfig(pick func(*tls.ClientHelloInfo) (*tls.Config, error), adjust func(*tls.ClientHelloInfo, *tls.Config)) *tls.Config {
	base := &tls.Config{GetConfigForClient: pick}
	s.cache.Install(base)
	if adjust == nil {
		return base
	}
	perHandshake := base.GetConfigForClient
	base.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		child, err := perHandshake(hello)
		if err == nil && child != nil {
			adjust(hello, child)
		}
		return child, err
	}
	return base
}
