package amqpbus_test

import (
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/amqpbus"
	"github.com/tlsfarm/tlsfarm/farm/farmtest"
)

// countingProxy forwards connections to target and counts the bytes the
// clients send; it stops when the test ends.
func countingProxy(t *testing.T, target string) (addr string, sent *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sent = new(atomic.Int64)
	relayTo(t, ln, target, sent)
	return ln.Addr().String(), sent
}

// relayTo forwards each connection ln accepts to target, both ways, and
// adds the bytes clients send to sent if it is not nil; it closes ln and
// every connection when the test ends.
func relayTo(t *testing.T, ln net.Listener, target string, sent *atomic.Int64) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, s)
			mu.Unlock()
			wg.Add(2)
			go func() {
				defer wg.Done()
				buf := make([]byte, 32<<10)
				for {
					n, err := c.Read(buf)
					if sent != nil {
						sent.Add(int64(n))
					}
					if n > 0 {
						if _, err := s.Write(buf[:n]); err != nil {
							break
						}
					}
					if err != nil {
						break
					}
				}
				s.Close()
			}()
			go func() { defer wg.Done(); io.Copy(c, s); c.Close() }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// TestAcksGrouped: a subscriber acknowledges the messages that wait for it
// in groups, not one by one. 100 messages reach it while its handler is
// held on the first; once released, it handles the other 99 with each
// next one already waiting, and sends a few acknowledgements (21 bytes
// each), not 99: it sent one per message, as amqp091-go's deliveries
// channel is unbuffered and "nothing more waiting" was judged by its
// length, always 0.
func TestAcksGrouped(t *testing.T) {
	url := brokerURL(t)
	name := farmtest.FarmName(t)
	addr, sent := countingProxy(t, brokerAddr(url))
	pub := open(t, url, name, nil)
	sub := open(t, viaProxy(t, url, addr), name, &amqpbus.Options{Heartbeat: time.Minute})
	l, _ := subscribeLogged(t, sub)
	if err := l.next(t, true); err != nil {
		t.Fatalf("subscribed with %v", err)
	}
	// Hold the handler on the first message: subscribeLogged's handler
	// takes l.mu.
	l.mu.Lock()
	var msgs []string
	for i := range 100 {
		msgs = append(msgs, fmt.Sprintf("m%03d", i))
	}
	publish(t, pub, msgs...)
	farmtest.Eventually(t, 10*time.Second, "the broker sent the 100 messages", func() bool {
		return queueMessages(t, url, sub.Queue()) == 0
	})
	time.Sleep(200 * time.Millisecond) // in the subscriber's buffer
	before := sent.Load()
	l.mu.Unlock()
	l.waitFor(t, msgs...)
	time.Sleep(200 * time.Millisecond)
	acks := (sent.Load() - before) / 21
	t.Logf("%d bytes sent while handling 100 messages (about %d acknowledgements of 21)", sent.Load()-before, acks)
	if acks > 10 {
		t.Fatalf("about %d acknowledgements for 100 messages waiting, want a few", acks)
	}
}
