//go:build !linux

package main

import (
	"errors"
	"net"
)

// tcpEstablished is only implemented on Linux (TCP_INFO).
func tcpEstablished(*net.TCPConn) (bool, error) {
	return false, errors.New("TCP state not available on this system")
}
