package amqpbus

import (
	"context"
	"errors"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/tlsfarm/tlsfarm/farm/transport"
)

// Ping implements transport.Pinger: a passive declaration of the farm's
// exchange, one round trip to the broker, on a connection of its own (so
// that a probe never waits behind a Publish). That connection is dialled
// on the first Ping and again after a failure; a broker that does not
// answer within ctx fails the probe, far sooner than the heartbeat would
// notice.
//
// Ping returns when ctx ends, whatever the connection does. The
// declaration takes no context, and closing the connection through
// amqp091-go (a close handshake under a deadline on the socket) does not
// bound it: the library's heartbeater sets the socket's read deadline to
// three heartbeat intervals after a frame read whenever it gets to that
// frame, which on a loaded machine may be after the close set its own, and
// the close waits on the library's locks first. So Ping waits for the
// answer or ctx, whichever comes first, and on ctx closes the socket
// itself, which ends the declaration and the connection at once.
func (b *Bus) Ping(ctx context.Context) error {
	b.probeMu.Lock()
	defer b.probeMu.Unlock()
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return errors.New("amqpbus: ping on a closed bus")
	}
	if b.probe != nil && (b.probe.conn.IsClosed() || b.probe.ch.IsClosed()) {
		b.probe.drop()
		b.probe = nil
	}
	if b.probe == nil {
		conn, ch, sock, err := b.dialSocket(ctx)
		if err != nil {
			return err
		}
		b.probe = &publisher{conn: conn, ch: ch, sock: sock}
	}
	p := b.probe
	answer := make(chan error, 1)
	go func() {
		answer <- p.ch.ExchangeDeclarePassive(b.exchange, amqp.ExchangeFanout, false, false, false, false, nil)
	}()
	var err error
	select {
	case err = <-answer:
		if err != nil {
			p.drop()
		}
	case <-ctx.Done():
		err = ctx.Err()
		p.sock.Close() // the declaration, and the connection, end with it
	}
	if err != nil {
		b.probe = nil
		return b.errorf("ping", err)
	}
	return nil
}

// closeProbe closes the probe's connection, if any.
func (b *Bus) closeProbe() {
	b.probeMu.Lock()
	defer b.probeMu.Unlock()
	if b.probe != nil {
		b.probe.close()
		b.probe = nil
	}
}

var _ transport.Pinger = (*Bus)(nil)
