package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"
)

// passthrough connects tc's decrypted stream to the TCP upstream at target,
// both ways, until both directions end or the connection has been idle for
// the idle timeout.
func (l *listener) passthrough(tc *tls.Conn, target string) {
	s := l.s
	defer tc.Close()
	up, err := net.DialTimeout("tcp", target, defaultDialTimeout)
	if err != nil {
		s.stats.upstream.Add(1)
		client := addrString(tc.RemoteAddr())
		s.log.Debug("upstream dial failed", "upstream", target, "client", client, "err", err)
		s.warn.note("upstream", "upstream connections failing", client, "upstream", target, "last_err", err.Error())
		return
	}
	defer up.Close()

	var last atomic.Int64 // unix nanoseconds of the last byte moved either way
	last.Store(time.Now().UnixNano())
	done := make(chan error, 2)
	go func() {
		err := pipe(up, tc, s.idle, &last)
		if err == nil {
			closeWrite(up)
		}
		done <- err
	}()
	go func() {
		err := pipe(tc, up, s.idle, &last)
		if err == nil {
			tc.CloseWrite()
		}
		done <- err
	}()
	if err := <-done; err != nil {
		// One way failed or went idle: end both.
		tc.Close()
		up.Close()
	}
	<-done
}

// pipe copies src to dst until src ends (nil) or fails. A read that waits
// longer than idle ends the copy unless the other direction moved data
// within idle.
func pipe(dst, src net.Conn, idle time.Duration, last *atomic.Int64) error {
	buf := make([]byte, 32<<10)
	for {
		src.SetReadDeadline(time.Now().Add(idle))
		n, err := src.Read(buf)
		if n > 0 {
			now := time.Now()
			last.Store(now.UnixNano())
			dst.SetWriteDeadline(now.Add(idle))
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			return nil
		case errors.Is(err, os.ErrDeadlineExceeded) && time.Since(time.Unix(0, last.Load())) < idle:
			// The other direction is busy: the connection is not idle.
		default:
			return err
		}
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}
