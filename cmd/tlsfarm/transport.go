package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/tlsfarm/tlsfarm/farm/redisbus"
	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// openTransport opens the farm transport for rawURL's scheme. The store is
// nil for transports without one.
func openTransport(rawURL, farmName string) (transport.Bus, transport.Store, io.Closer, error) {
	switch transportName(rawURL) {
	case "redis":
		t, err := redisbus.Open(rawURL, farmName)
		if err != nil {
			return nil, nil, nil, err
		}
		return t, t, t, nil
	case "nats":
		return openNATS(rawURL, farmName)
	case "amqp":
		return openAMQP(rawURL, farmName)
	}
	return nil, nil, nil, fmt.Errorf("no transport for this URL scheme")
}

// transportName names the transport of a farm URL by its scheme's family,
// for logs: never the URL itself, which may hold a password.
func transportName(rawURL string) string {
	scheme, _, ok := strings.Cut(rawURL, "://")
	switch {
	case !ok:
		return "none"
	case strings.HasPrefix(scheme, "redis"):
		return "redis"
	case scheme == "nats" || scheme == "tls":
		return "nats"
	case strings.HasPrefix(scheme, "amqp"):
		return "amqp"
	}
	return "unknown"
}
