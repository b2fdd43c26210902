package amqpbus

import "testing"

// TestQueueBytesDefault pins the byte bound Open gives a queue
// (Options.QueueBytes): QueueLength KiB, at least 16 MiB, at most
// QueueLength MiB, never under 2 MiB; negative for none.
func TestQueueBytesDefault(t *testing.T) {
	const MiB = 1 << 20
	for _, tc := range []struct {
		length int
		bytes  int64 // as given
		want   int64
	}{
		{0, 0, 100000 << 10}, // the defaults: about 98 MiB
		{1000000, 0, 1000000 << 10},
		{1000, 0, 16 * MiB},
		{3, 0, 3 * MiB},
		{1, 0, 2 * MiB},
		{1000, 1, 2 * MiB},
		{1000, 5 * MiB, 5 * MiB},
		{1000, -1, -1},
	} {
		b, err := Open("amqp://127.0.0.1", "f", &Options{QueueLength: tc.length, QueueBytes: tc.bytes})
		if err != nil {
			t.Fatal(err)
		}
		if got := b.opts.QueueBytes; got != tc.want {
			t.Errorf("QueueLength %d, QueueBytes %d: the queue's bound is %d bytes, want %d", tc.length, tc.bytes, got, tc.want)
		}
	}
}
