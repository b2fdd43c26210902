package amqpbus

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
)

// guardOverTCP sends in over a loopback TCP connection, reads it back
// through a frameGuard with the given limit until the guard's first error,
// and returns the guard, what it read and that error.
func guardOverTCP(t *testing.T, in []byte, limit uint64) (*frameGuard, []byte, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sent := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, err = c.Write(in)
			c.Close()
		}
		sent <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	g := newFrameGuard(c, limit)
	out, err := io.ReadAll(g)
	if err == nil {
		err = io.EOF // ReadAll's nil
	}
	if serr := <-sent; serr != nil {
		t.Fatal(serr)
	}
	return g, out, err
}

// TestFrameGuardInterruptedContent: a method frame on a channel whose
// cut message's body the guard is skipping ends that body, as it ends
// amqp091-go's reading of content; the guard went on skipping, and handed
// amqp091-go heartbeats for the body of the next message, under the
// limit, which never came whole.
func TestFrameGuardInterruptedContent(t *testing.T) {
	next := concat(deliverFrame(1, 2), headerFrame(1, 20), bodyFrame(1, 20))
	in := concat(deliverFrame(1, 1), headerFrame(1, 300), bodyFrame(1, 100), next)
	_, out, err := guardOverTCP(t, in, 100)
	if err != io.EOF {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(out, next) {
		t.Errorf("the message after an interrupted one came as\n% x\nwant\n% x", out[len(out)-len(next):], next)
	}
}

// TestFrameGuardFrameEnd: a body frame that the guard skips, or a method
// or content header it reads, must end in 0xCE, as amqp091-go checks of
// the frames it reads; the guard handed it a heartbeat for a body frame
// that did not, and read on out of step with the broker's framing.
func TestFrameGuardFrameEnd(t *testing.T) {
	in := concat(deliverFrame(1, 1), headerFrame(1, 300), bodyFrame(1, 300), heartbeatFrame[:])
	in[len(in)-len(heartbeatFrame)-1] = 0
	_, out, err := guardOverTCP(t, in, 100)
	if !errors.Is(err, errFrameEnd) {
		t.Errorf("a skipped body frame ending in 0: %v, want %v", err, errFrameEnd)
	}
	if bytes.Contains(out, heartbeatFrame[:]) {
		t.Errorf("a skipped body frame ending in 0 came as a heartbeat")
	}
	in = concat(deliverFrame(1, 1), headerFrame(1, 300))
	in[len(in)-1] = 0
	if _, _, err := guardOverTCP(t, in, 100); !errors.Is(err, errFrameEnd) {
		t.Errorf("a content header ending in 0: %v, want %v", err, errFrameEnd)
	}
}

// TestFrameGuardHeaderWithoutTag: a content header that follows no
// basic.deliver (a second header after a message, or a basic.return's)
// has no delivery tag of its own; the guard noted its size as cut under
// the tag of the channel's last delivery, or under 0, where the Bus
// could take another message delivered with that tag for it.
func TestFrameGuardHeaderWithoutTag(t *testing.T) {
	in := concat(deliverFrame(1, 5), headerFrame(1, 10), bodyFrame(1, 10), headerFrame(1, 300), headerFrame(2, 300))
	g, _, err := guardOverTCP(t, in, 100)
	if err != io.EOF {
		t.Fatal(err)
	}
	for tag := range g.big {
		t.Errorf("a message noted as cut under delivery tag %d", tag)
	}
}
