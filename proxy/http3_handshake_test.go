package proxy

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
)

// TestHTTP3HandshakeBound starts QUIC handshakes that never finish and
// times when the server gives up on them (its open QUIC connections fall
// back to 0): a client that keeps the connection alive with a packet every
// 50 ms is cut at limits.handshake_timeout, not at twice it as quic-go's
// HandshakeIdleTimeout alone would; one that goes silent after its hello
// is cut within it too (at half: the handshake's idle bound). Both with
// the timeout the server started with and with one set by Reload.
func TestHTTP3HandshakeBound(t *testing.T) {
	const bound = time.Second
	const margin = 300 * time.Millisecond // scheduling on a loaded machine, and the 5 ms polls
	for _, tc := range []struct {
		name     string
		reloaded bool          // started with a 5 s timeout, reloaded to bound
		ping     bool          // the client sends a packet every 50 ms
		earliest time.Duration // the server must not give up before
	}{
		{"alive", false, true, bound},
		{"silent", false, false, bound / 2},
		{"alive after reload", true, true, bound},
		{"silent after reload", true, false, bound / 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cert := mustSelfSigned(t, "localhost")
			var cfg Config
			s, _ := start(t, cert, func(c *Config) {
				c.HandshakeTimeout = bound
				if tc.reloaded {
					c.HandshakeTimeout = 5 * time.Second
				}
				c.Listeners[0].HTTP3 = true
				cfg = *c
			})
			if tc.reloaded {
				cfg.HandshakeTimeout = bound
				if err := s.Reload(cfg); err != nil {
					t.Fatal(err)
				}
			}
			c := dialStalledQUIC(t, s.Addrs()[0])
			begin := time.Now()
			c.hello()
			waitFor(t, func() bool { return s.QUICStats().Open == 1 }, "the server opened no QUIC connection for the hello")
			lastPing := time.Now()
			for s.QUICStats().Open != 0 {
				if time.Since(begin) > 4*bound {
					t.Fatalf("the server still holds the handshake after %v (handshake timeout %v)", time.Since(begin), bound)
				}
				if tc.ping && time.Since(lastPing) >= 50*time.Millisecond {
					c.ping()
					lastPing = time.Now()
				}
				time.Sleep(5 * time.Millisecond)
			}
			took := time.Since(begin)
			t.Logf("the server gave up on the handshake after %v", took.Round(time.Millisecond))
			if took > bound+margin {
				t.Errorf("the server gave up on a stalled handshake after %v, handshake timeout %v: want at most %v", took, bound, bound+margin)
			}
			if took < tc.earliest-50*time.Millisecond {
				t.Errorf("the server gave up on a stalled handshake after %v, want not before %v", took, tc.earliest)
			}
		})
	}
}

// A stalledQUIC is a QUIC client that sends its hello (a real TLS
// ClientHello, in a QUIC v1 Initial packet) and then, if asked, Initial
// packets that hold only a PING: each is a packet the server has to take
// as a sign of life (its handshake idle timer starts again), but the
// handshake never moves on, as no Handshake packet ever follows.
type stalledQUIC struct {
	t      *testing.T
	conn   *net.UDPConn
	dcid   []byte
	scid   []byte
	aead   cipher.AEAD
	iv     []byte
	hp     cipher.Block
	pn     uint32
	client []byte // the ClientHello
}

// dialStalledQUIC prepares a stalledQUIC for the server at addr.
func dialStalledQUIC(t *testing.T, addr string) *stalledQUIC {
	t.Helper()
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &stalledQUIC{t: t, conn: conn, dcid: make([]byte, 8), scid: make([]byte, 8)}
	rand.Read(c.dcid)
	rand.Read(c.scid)
	c.initialKeys()

	// The ClientHello, from crypto/tls's QUIC API, with the one transport
	// parameter a client must send: initial_source_connection_id.
	qc := tls.QUICClient(&tls.QUICConfig{TLSConfig: &tls.Config{
		ServerName: "localhost", NextProtos: []string{http3.NextProtoH3}, MinVersion: tls.VersionTLS13,
		InsecureSkipVerify: true,                      // the handshake never gets to the certificate
		CurvePreferences:   []tls.CurveID{tls.X25519}, // a hello that fits one packet
	}})
	defer qc.Close()
	params := quicvarint.Append(nil, 0x0f)
	params = quicvarint.Append(params, uint64(len(c.scid)))
	qc.SetTransportParameters(append(params, c.scid...))
	if err := qc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for e := qc.NextEvent(); e.Kind != tls.QUICNoEvent; e = qc.NextEvent() {
		if e.Kind == tls.QUICWriteData && e.Level == tls.QUICEncryptionLevelInitial {
			c.client = append(c.client, e.Data...)
		}
	}
	if len(c.client) == 0 || len(c.client) > 1000 {
		t.Fatalf("a ClientHello of %d bytes", len(c.client))
	}
	return c
}

// initialKeys derives the client's Initial packet protection from the
// destination connection ID (RFC 9001, section 5.2).
func (c *stalledQUIC) initialKeys() {
	salt, _ := hex.DecodeString("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
	initial, err := hkdf.Extract(sha256.New, c.dcid, salt)
	if err != nil {
		c.t.Fatal(err)
	}
	label := func(secret []byte, l string, n int) []byte {
		info := binary.BigEndian.AppendUint16(nil, uint16(n))
		info = append(info, byte(len("tls13 "+l)))
		info = append(info, "tls13 "+l...)
		info = append(info, 0)
		out, err := hkdf.Expand(sha256.New, secret, string(info), n)
		if err != nil {
			c.t.Fatal(err)
		}
		return out
	}
	secret := label(initial, "client in", 32)
	block, err := aes.NewCipher(label(secret, "quic key", 16))
	if err != nil {
		c.t.Fatal(err)
	}
	if c.aead, err = cipher.NewGCM(block); err != nil {
		c.t.Fatal(err)
	}
	c.iv = label(secret, "quic iv", 12)
	if c.hp, err = aes.NewCipher(label(secret, "quic hp", 16)); err != nil {
		c.t.Fatal(err)
	}
}

// hello sends the ClientHello in one Initial packet, padded to the 1200
// bytes a server requires of a client's first datagram.
func (c *stalledQUIC) hello() {
	frames := []byte{0x06, 0} // CRYPTO, offset 0
	frames = quicvarint.Append(frames, uint64(len(c.client)))
	frames = append(frames, c.client...)
	c.send(frames, 1200)
}

// ping sends an Initial packet that holds a PING. It is small: to a
// server that has given up on the connection it is no first datagram of
// a new one.
func (c *stalledQUIC) ping() {
	c.send([]byte{0x01, 0, 0, 0}, 0) // PING, then PADDING for the header protection's sample
}

// send sends frames in the next Initial packet, padded to size bytes.
func (c *stalledQUIC) send(frames []byte, size int) {
	pn := c.pn
	c.pn++
	hdr := []byte{0xc3, 0, 0, 0, 1} // long header, Initial, 4-byte packet number; QUIC v1
	hdr = append(hdr, byte(len(c.dcid)))
	hdr = append(hdr, c.dcid...)
	hdr = append(hdr, byte(len(c.scid)))
	hdr = append(hdr, c.scid...)
	hdr = append(hdr, 0) // no token
	if pad := size - (len(hdr) + 2 + 4 + len(frames) + c.aead.Overhead()); pad > 0 {
		frames = append(frames, make([]byte, pad)...) // PADDING frames
	}
	length := 4 + len(frames) + c.aead.Overhead()
	hdr = append(hdr, byte(0x40|length>>8), byte(length)) // a 2-byte varint
	pnOff := len(hdr)
	hdr = binary.BigEndian.AppendUint32(hdr, pn)
	nonce := slices.Clone(c.iv)
	for i := range 4 {
		nonce[len(nonce)-1-i] ^= byte(pn >> (8 * i))
	}
	pkt := c.aead.Seal(slices.Clone(hdr), nonce, frames, hdr)
	mask := make([]byte, 16)
	c.hp.Encrypt(mask, pkt[pnOff+4:pnOff+20])
	pkt[0] ^= mask[0] & 0x0f
	for i := range 4 {
		pkt[pnOff+i] ^= mask[1+i]
	}
	if _, err := c.conn.Write(pkt); err != nil {
		c.t.Fatal(err)
	}
}
