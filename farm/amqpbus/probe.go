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
		conn, ch, err := b.dial(ctx)
		if err != nil {
			return err
		}
		b.probe = &publisher{conn: conn, ch: ch}
	}
	stop := closeOnDone(ctx, b.probe.conn)
	err := b.probe.ch.ExchangeDeclarePassive(b.exchange, amqp.ExchangeFanout, false, false, false, false, nil)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		b.probe.drop()
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
