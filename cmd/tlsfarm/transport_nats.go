package main

import (
	"io"

	"github.com/tlsfarm/tlsfarm/farm"
	"github.com/tlsfarm/tlsfarm/farm/natsbus"
)

// openNATS opens the NATS transport: a Bus on a subject and a Store in a
// JetStream key-value bucket.
func openNATS(rawURL, farmName string) (farm.Bus, farm.Store, io.Closer, error) {
	t, err := natsbus.Open(rawURL, farmName, nil)
	if err != nil {
		return nil, nil, nil, err
	}
	return t, t, t, nil
}
