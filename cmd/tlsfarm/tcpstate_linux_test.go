package main

import (
	"net"

	"golang.org/x/sys/unix"
)

// tcpEstablished reports whether c's socket is still in the ESTABLISHED
// state: false once the peer's FIN or reset has arrived, read or not.
func tcpEstablished(c *net.TCPConn) (bool, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return false, err
	}
	var info *unix.TCPInfo
	var ierr error
	if err := rc.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
		return false, err
	}
	if ierr != nil {
		return false, ierr
	}
	return info.State == unix.BPF_TCP_ESTABLISHED, nil
}
