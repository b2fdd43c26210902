package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
)

// passthrough connects tc's decrypted stream to the TCP upstream at target,
// both ways, until both directions end or nothing has moved either way for
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

	// Both copies run without deadlines: one watch over both closes
	// both sockets once nothing has moved either way for the idle
	// timeout. A deadline on each read and write would cut a direction
	// that waits (an upstream that reads nothing while it streams its
	// answer, a client that reads nothing while it uploads) while the
	// other one moves.
	w := s.newIdleUpgrade(up, func() { tc.NetConn().Close() }, nil)
	defer w.Close()
	done := make(chan error, 2)
	go func() {
		err := pipe(w, tc)
		if err == nil {
			w.CloseWrite()
		}
		done <- err
	}()
	go func() {
		err := pipe(tc, w)
		if err == nil {
			tc.CloseWrite()
		}
		done <- err
	}()
	if err := <-done; err != nil {
		// One way failed, or the watch closed both: end both.
		tc.Close()
		w.Close()
	}
	<-done
}

// pipe copies src to dst until src ends (nil) or either fails.
func pipe(dst io.Writer, src io.Reader) error {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			return nil
		default:
			return err
		}
	}
}
