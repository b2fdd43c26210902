package main

import (
	"errors"
	"io"

	"github.com/tlsfarm/tlsfarm/farm"
)

// openNATS opens the NATS transport (not yet built into this binary).
func openNATS(rawURL, farmName string) (farm.Bus, farm.Store, io.Closer, error) {
	return nil, nil, nil, errors.New("the nats transport is not built into this binary yet")
}
