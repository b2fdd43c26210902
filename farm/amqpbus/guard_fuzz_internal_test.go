package amqpbus

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
)

// chunkConn is the socket a frameGuard reads from in the tests below: it
// returns src in reads of the sizes sizes gives in turn (each 1 to 256
// bytes), then io.EOF.
type chunkConn struct {
	net.Conn // nil: the guard only reads
	src      []byte
	sizes    []byte
	i        int
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.src) == 0 {
		return 0, io.EOF
	}
	n := 64
	if len(c.sizes) > 0 {
		n = int(c.sizes[c.i%len(c.sizes)]) + 1
		c.i++
	}
	n = min(n, len(p), len(c.src))
	copy(p, c.src[:n])
	c.src = c.src[n:]
	return n, nil
}

// guardOutput runs in through a frameGuard with the given limit, reading
// it in reads of sizes of its own, and returns what amqp091-go would read
// and the error that ended it.
func guardOutput(t testing.TB, in []byte, limit uint64, sizes []byte) (*frameGuard, []byte, error) {
	g := newFrameGuard(&chunkConn{src: in, sizes: sizes}, limit)
	var out []byte
	p := make([]byte, 300)
	for i := 0; ; i++ {
		n := 17
		if len(sizes) > 0 {
			n = int(sizes[(i+len(sizes)/2)%len(sizes)]) + 1
		}
		m, err := g.Read(p[:n])
		out = append(out, p[:m]...)
		if len(out) > len(in) {
			t.Fatalf("the guard returned %d bytes from %d", len(out), len(in))
		}
		if err != nil {
			return g, out, err
		}
		if m == 0 {
			t.Fatalf("read %d returned nothing and no error", i)
		}
	}
}

func amqpFrame(typ byte, channel uint16, payload []byte) []byte {
	f := []byte{typ, byte(channel >> 8), byte(channel), 0, 0, 0, 0}
	binary.BigEndian.PutUint32(f[3:7], uint32(len(payload)))
	f = append(f, payload...)
	return append(f, 0xce)
}

func deliverFrame(channel uint16, tag uint64) []byte {
	p := []byte{0, 60, 0, 60, 3, 'c', 't', 'g'}
	p = binary.BigEndian.AppendUint64(p, tag)
	p = append(p, 0, 0, 0) // redelivered, exchange, routing key
	return amqpFrame(frameMethod, channel, p)
}

func headerFrame(channel uint16, size uint64) []byte {
	p := []byte{0, 60, 0, 0}
	p = binary.BigEndian.AppendUint64(p, size)
	p = append(p, 0, 0) // no properties
	return amqpFrame(frameHeader, channel, p)
}

func bodyFrame(channel uint16, n int) []byte {
	return amqpFrame(frameBody, channel, bytes.Repeat([]byte{byte(n)}, n))
}

func concat(frames ...[]byte) []byte { return bytes.Join(frames, nil) }

// checkGuardOutput checks out, what a frameGuard with the given limit
// returned from in before it stopped with err, frame by frame against in:
// every frame passes unchanged but a content header whose body size is
// over the limit (its body size written as 0) and the body frames of its
// message (each a heartbeat), until they add up to that size or a method
// or content header on the same channel interrupts them, as it does
// amqp091-go's reading of content. A frame the guard would have to change
// but cannot vouch for (too long to read whole, or with an end byte that
// is not 0xCE) ends the output with an error instead.
func checkGuardOutput(t testing.TB, in, out []byte, limit uint64, err error) {
	t.Helper()
	skip := make(map[uint16]uint64)
	for len(in) > 0 {
		if len(in) < frameHeaderBytes {
			break
		}
		typ, channel := in[0], binary.BigEndian.Uint16(in[1:3])
		size := uint64(binary.BigEndian.Uint32(in[3:7]))
		n := frameHeaderBytes + size + frameEndBytes
		if uint64(len(in)) < n {
			break
		}
		frame := in[:n]
		endOK := frame[n-1] == 0xce
		payload := frame[frameHeaderBytes : n-1]
		want := frame
		vouch := false // the guard must check this frame's end byte
		switch typ {
		case frameMethod, frameHeader:
			if size > maxInspectedFrame {
				if len(out) > 0 {
					t.Fatalf("the guard passed on a %d byte frame of type %d (and %d more bytes)", size, typ, len(out))
				}
				return
			}
			delete(skip, channel)
			if typ == frameHeader && len(payload) >= 12 {
				if body := binary.BigEndian.Uint64(payload[4:12]); body > limit {
					want = bytes.Clone(frame)
					binary.BigEndian.PutUint64(want[frameHeaderBytes+4:], 0)
					vouch = true
					if endOK {
						skip[channel] = body
					}
				}
			}
		case frameBody:
			if s := skip[channel]; s > 0 {
				want = heartbeatFrame[:]
				vouch = true
				if size >= s {
					delete(skip, channel)
				} else {
					skip[channel] = s - size
				}
			}
		}
		if vouch && !endOK {
			if len(out) > 0 {
				t.Fatalf("the guard changed a frame whose end byte is %#x, and went on: % x", frame[n-1], out[:min(len(out), 32)])
			}
			if err == nil || err == io.EOF {
				t.Fatalf("the guard stopped at a frame whose end byte is %#x with %v", frame[n-1], err)
			}
			return
		}
		if !bytes.HasPrefix(out, want) {
			if bytes.HasPrefix(want, out) && err != nil && err != io.EOF {
				return // the guard stopped here, with an error
			}
			t.Fatalf("the guard returned % x\nfor the frame % x\nwant % x", out[:min(len(out), 64)], frame[:min(len(frame), 64)], want[:min(len(want), 64)])
		}
		out = out[len(want):]
		in = in[n:]
	}
	// A last frame cut short: the guard may pass on what of it there is,
	// unchanged, but no more.
	if !bytes.HasPrefix(in, out) {
		t.Fatalf("after the last whole frame the guard returned % x for % x", out[:min(len(out), 64)], in[:min(len(in), 64)])
	}
	if err == nil {
		t.Fatal("the guard stopped without an error")
	}
}

// FuzzFrameGuard runs arbitrary byte streams, read in arbitrary sizes,
// through a frameGuard, and checks what it hands amqp091-go against the
// frames it was given (see checkGuardOutput), and that it notes the size
// of each message it cuts under the delivery tag of that message alone.
func FuzzFrameGuard(f *testing.F) {
	f.Add(concat(deliverFrame(1, 1), headerFrame(1, 10), bodyFrame(1, 10)), uint16(100), []byte{0})
	f.Add(concat(deliverFrame(1, 1), headerFrame(1, 300), bodyFrame(1, 200), bodyFrame(1, 100), deliverFrame(1, 2), headerFrame(1, 3), bodyFrame(1, 3)), uint16(100), []byte{6, 200, 1})
	f.Add(concat(deliverFrame(1, 7), deliverFrame(2, 7), headerFrame(2, 150), headerFrame(1, 50), bodyFrame(2, 100), bodyFrame(1, 50), bodyFrame(2, 50), heartbeatFrame[:]), uint16(100), []byte{255})
	// A message cut, interrupted by the next one.
	f.Add(concat(deliverFrame(1, 1), headerFrame(1, 300), bodyFrame(1, 100), deliverFrame(1, 2), headerFrame(1, 20), bodyFrame(1, 20)), uint16(100), []byte{3, 9})
	f.Add(concat(headerFrame(3, 1<<63), bodyFrame(3, 0), bodyFrame(3, 5)), uint16(0), []byte{})
	f.Add(concat(bodyFrame(4, 9), headerFrame(4, 0)), uint16(1), []byte{1})
	bad := concat(deliverFrame(1, 1), headerFrame(1, 300), bodyFrame(1, 300))
	bad[len(bad)-1] = 0
	f.Add(bad, uint16(100), []byte{0, 80})
	f.Add([]byte{1, 0, 1, 0xff, 0xff, 0xff, 0xff}, uint16(100), []byte{1})
	f.Add([]byte{3, 0, 1, 0xff, 0xff, 0xff, 0xff, 0, 0, 0}, uint16(100), []byte{1})
	f.Fuzz(func(t *testing.T, in []byte, limit uint16, sizes []byte) {
		g, out, err := guardOutput(t, in, uint64(limit), sizes)
		checkGuardOutput(t, in, out, uint64(limit), err)
		if len(g.big) > len(in)/(2*(frameHeaderBytes+12+frameEndBytes)) {
			t.Fatalf("%d messages noted as cut from %d bytes", len(g.big), len(in))
		}
		if _, ok := g.big[0]; ok {
			t.Fatal("a message with no delivery tag noted as cut")
		}
	})
}
