package amqpbus

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
)

// AMQP 0-9-1 frame types, and the size of a frame's header (type, channel,
// payload size) and end byte.
const (
	frameMethod      = 1
	frameHeader      = 2
	frameBody        = 3
	frameHeaderBytes = 7
	frameEndBytes    = 1
)

// maxInspectedFrame bounds the method and content-header frames a
// frameGuard reads whole: a broker sends none longer than the frame size
// it negotiated (128 KiB by default; the protocol lets neither side ask for
// more than 4 GiB, but amqp091-go asks for 128 KiB).
const maxInspectedFrame = 1 << 20

// A frameGuard is the connection amqp091-go reads from: it passes the
// broker's frames through, but for the body of a message longer than
// limit, which it never reads into memory. amqp091-go would read such a
// body whole, however long the broker allows (128 MiB by default),
// before the Bus could look at it: anyone who may publish to the farm's
// exchange, farm secret or not, could make every node allocate that much
// per message, and up to the prefetch window of them at once. The guard
// writes the message's content header with a body size of 0, so that
// amqp091-go delivers it with an empty body, discards the body frames that
// follow on the same channel unread (handing amqp091-go a heartbeat frame
// for each), and remembers the message's size by its delivery tag (see
// cut), so that the Bus can acknowledge it, and count its bytes, without
// holding it.
type frameGuard struct {
	net.Conn
	r     *bufio.Reader
	limit uint64

	pend []byte                 // the frame, or frame header, to return from Read next
	left int64                  // bytes of the current frame to pass through after pend
	hdr  [frameHeaderBytes]byte // the current frame's header
	buf  []byte                 // the current frame, when read whole

	tags map[uint16]uint64 // the delivery tag of the last content method, by channel
	skip map[uint16]uint64 // body bytes still to discard, by channel

	mu  sync.Mutex
	big map[uint64]uint64 // the body sizes of the messages cut, by delivery tag
}

func newFrameGuard(c net.Conn, limit uint64) *frameGuard {
	return &frameGuard{Conn: c, r: bufio.NewReaderSize(c, 64<<10), limit: limit,
		tags: make(map[uint16]uint64), skip: make(map[uint16]uint64), big: make(map[uint64]uint64)}
}

// cut returns the body size of the message delivered with tag if the
// guard cut its body (and forgets it), or false.
func (g *frameGuard) cut(tag uint64) (uint64, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	n, ok := g.big[tag]
	delete(g.big, tag)
	return n, ok
}

// heartbeatFrame is an AMQP heartbeat frame, which a frameGuard hands
// amqp091-go in place of each body frame it skips.
var heartbeatFrame = [...]byte{8, 0, 0, 0, 0, 0, 0, 0xce}

var errFrameTooLong = errors.New("amqpbus: the broker sent a method or content header frame over 1 MiB")

// errFrameEnd is the error of a frame that a frameGuard reads, and would
// change or drop, but whose end byte is not 0xCE: amqp091-go, which checks
// the end byte of the frames passed on to it, never sees it.
var errFrameEnd = errors.New("amqpbus: the broker sent a frame whose end byte is not 0xCE")

// frameEnd is the byte that ends every AMQP frame.
const frameEnd = 0xce

// Read implements net.Conn: it returns the broker's frames, as next
// leaves them.
func (g *frameGuard) Read(p []byte) (int, error) {
	for len(g.pend) == 0 && g.left == 0 {
		if err := g.next(); err != nil {
			return 0, err
		}
	}
	if len(g.pend) > 0 {
		n := copy(p, g.pend)
		g.pend = g.pend[n:]
		return n, nil
	}
	if int64(len(p)) > g.left {
		p = p[:g.left]
	}
	n, err := g.r.Read(p)
	g.left -= int64(n)
	return n, err
}

// next reads the next frame's header, and either sets up the frame to be
// passed on (whole into pend if it is a method or content header, which it
// looks at, else the header into pend and the rest to stream through), or
// discards the frame if it is a body frame of a message cut.
func (g *frameGuard) next() error {
	h := g.hdr[:]
	if _, err := io.ReadFull(g.r, h); err != nil {
		return err
	}
	typ, channel, size := h[0], binary.BigEndian.Uint16(h[1:3]), binary.BigEndian.Uint32(h[3:7])
	switch typ {
	case frameMethod, frameHeader:
		if size > maxInspectedFrame {
			return errFrameTooLong
		}
		// Read has returned the last frame whole: its buffer is free.
		n := frameHeaderBytes + int(size) + frameEndBytes
		if cap(g.buf) < n || cap(g.buf) > 64<<10 && n <= 64<<10 {
			g.buf = make([]byte, n)
		}
		frame := g.buf[:n]
		copy(frame, h)
		if _, err := io.ReadFull(g.r, frame[frameHeaderBytes:]); err != nil {
			return err
		}
		if frame[n-1] != frameEnd {
			return errFrameEnd
		}
		// A method or content header interrupts the content that a
		// channel was sending, for amqp091-go too: body frames that
		// follow it on that channel are of another message.
		delete(g.skip, channel)
		payload := frame[frameHeaderBytes : frameHeaderBytes+size]
		if typ == frameMethod {
			g.method(channel, payload)
		} else {
			g.header(channel, payload)
		}
		g.pend = frame
	case frameBody:
		if skip := g.skip[channel]; skip > 0 {
			if _, err := g.r.Discard(int(size)); err != nil {
				return err
			}
			if end, err := g.r.ReadByte(); err != nil {
				return err
			} else if end != frameEnd {
				return errFrameEnd
			}
			if uint64(size) >= skip {
				delete(g.skip, channel)
			} else {
				g.skip[channel] = skip - uint64(size)
			}
			// amqp091-go drops a connection it reads no frame from for
			// three half heartbeat intervals: a long body skipped on a
			// slow link must not look like silence.
			g.pend = heartbeatFrame[:]
			return nil
		}
		fallthrough
	default:
		g.pend = h
		g.left = int64(size) + frameEndBytes
	}
	return nil
}

// method notes the delivery tag of a method that a message's content
// follows (basic.deliver, basic.get-ok; 0 for basic.return, which has
// none).
func (g *frameGuard) method(channel uint16, p []byte) {
	if len(p) < 4 || binary.BigEndian.Uint16(p[0:2]) != 60 {
		return
	}
	switch binary.BigEndian.Uint16(p[2:4]) {
	case 60: // basic.deliver: consumer-tag (short string), delivery-tag
		if len(p) >= 5 && len(p) >= 5+int(p[4])+8 {
			g.tags[channel] = binary.BigEndian.Uint64(p[5+int(p[4]):])
		}
	case 71: // basic.get-ok: delivery-tag
		if len(p) >= 12 {
			g.tags[channel] = binary.BigEndian.Uint64(p[4:12])
		}
	case 50: // basic.return
		g.tags[channel] = 0
	}
}

// header cuts the message whose content header p is, if its body is
// longer than the limit: it writes its body size as 0, and has next
// discard its body frames.
func (g *frameGuard) header(channel uint16, p []byte) {
	tag := g.tags[channel]
	delete(g.tags, channel)
	// class-id, weight, body size, properties
	if len(p) < 12 {
		return
	}
	size := binary.BigEndian.Uint64(p[4:12])
	if size <= g.limit {
		return
	}
	binary.BigEndian.PutUint64(p[4:12], 0)
	g.skip[channel] = size
	// A delivery tag is the tag of one message: a content header that
	// follows no basic.deliver or basic.get-ok (a basic.return's, or one
	// amqp091-go drops as out of place) has none, and is noted under
	// none, lest the Bus take some other message for it.
	if tag != 0 {
		g.mu.Lock()
		g.big[tag] = size
		g.mu.Unlock()
	}
}
