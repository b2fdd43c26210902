package proxy

import (
	"crypto/tls"
	"errors"
	"strings"
)

// A certSet picks the certificate for a server name: an exact name first,
// then a wildcard one label up, then the default (the first certificate).
type certSet struct {
	exact map[string]*tls.Certificate
	wild  map[string]*tls.Certificate // by the part after "*."
	def   *tls.Certificate
}

func newCertSet(certs []Certificate) (*certSet, error) {
	if len(certs) == 0 || certs[0].Certificate == nil {
		return nil, errors.New("no certificate")
	}
	cs := &certSet{exact: map[string]*tls.Certificate{}, wild: map[string]*tls.Certificate{}, def: certs[0].Certificate}
	for _, c := range certs {
		if c.Certificate == nil {
			return nil, errors.New("a certificate is missing")
		}
		names := c.Names
		if len(names) == 0 && c.Certificate.Leaf != nil {
			names = c.Certificate.Leaf.DNSNames
		}
		for _, n := range names {
			n = strings.ToLower(n)
			m, key := cs.exact, n
			if rest, ok := strings.CutPrefix(n, "*."); ok {
				m, key = cs.wild, rest
			}
			if _, dup := m[key]; !dup { // the first certificate to claim a name serves it
				m[key] = c.Certificate
			}
		}
	}
	return cs, nil
}

func (cs *certSet) get(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if c, ok := cs.exact[name]; ok {
		return c, nil
	}
	if _, rest, ok := strings.Cut(name, "."); ok {
		if c, ok := cs.wild[rest]; ok {
			return c, nil
		}
	}
	return cs.def, nil
}
