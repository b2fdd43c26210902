package main

import (
	"crypto/tls"

	"github.com/tlsfarm/tlsfarm/config"
	"github.com/tlsfarm/tlsfarm/proxy"
)

// proxyConfig converts the configuration for package proxy. Listeners with
// no certificate serve one self-signed certificate for localhost, made once
// per process (start logs its fingerprint, so that clients can pin it).
func (d *daemon) proxyConfig(cfg *config.Config) (proxy.Config, error) {
	pc := proxy.Config{
		Node:             cfg.Node,
		Cache:            d.cache,
		Ring:             d.ring,
		HandshakeTimeout: cfg.Limits.HandshakeTimeout,
		IdleTimeout:      cfg.Limits.IdleTimeout,
		MaxConnections:   cfg.Limits.MaxConnections,
		ExposeSessionID:  cfg.Debug.ExposeSessionID,
		Logger:           d.log,

		MaxWebSocketsPerConnection: cfg.Limits.MaxWebSocketsPerConnection,
	}
	if pc.MaxWebSocketsPerConnection == 0 {
		pc.MaxWebSocketsPerConnection = -1 // no bound; proxy's zero is its default
	}
	if err := d.quicConfig(cfg, &pc); err != nil {
		return proxy.Config{}, err
	}
	for _, l := range cfg.Listeners {
		min, _ := config.ParseVersion(l.MinVersion)
		max, _ := config.ParseVersion(l.MaxVersion)
		pl := proxy.Listener{
			Address:       l.Address,
			MinVersion:    min,
			MaxVersion:    max,
			NextProtos:    l.ALPN,
			Upstream:      l.Upstream,
			ProxyProtocol: l.ProxyProtocol.Enabled,
			ProxyTrusted:  l.ProxyProtocol.Trusted,
			HTTP3:         l.HTTP3,
			EarlyData:     l.EarlyData,

			EarlyDataTrusted: l.EarlyDataTrusted,
		}
		for _, c := range l.Certificates {
			pl.Certificates = append(pl.Certificates, proxy.Certificate{Names: c.Names, Certificate: c.Loaded})
		}
		if len(pl.Certificates) == 0 {
			cert, err := d.selfSignedCert()
			if err != nil {
				return proxy.Config{}, err
			}
			pl.Certificates = []proxy.Certificate{{Certificate: cert}}
		}
		pc.Listeners = append(pc.Listeners, pl)
	}
	return pc, nil
}

func (d *daemon) selfSignedCert() (*tls.Certificate, error) {
	if d.selfSigned == nil {
		cert, err := proxy.SelfSigned("localhost")
		if err != nil {
			return nil, err
		}
		d.selfSigned = cert
	}
	return d.selfSigned, nil
}
