package farm_test

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tlsfarm/tlsfarm/farm/farmtest"
	"github.com/tlsfarm/tlsfarm/session"
)

// A sessionTrace records how the nodes of a test came to hold one session
// and what a private redis-server was asked to do with its record, for the
// test's failure message (TestCarriedGraceCutThroughStoreLoss): the cache
// events of the session and of its children on each node watched (their
// origin says whether a handshake, a peer's message or a load from the
// store brought it), the nodes' warnings, and the server's commands on the
// session's record as MONITOR shows them, values left out. It never
// records key material: the session is named S.
type sessionTrace struct {
	start time.Time
	mu    sync.Mutex
	id    session.ID
	key   string // hex of id, as the record's key holds it
	lines []string
	sets  []storeSet
}

// A storeSet is a plain SET of the session's record (a new session's
// first or late write, not a cut or a write-back, which are scripts), as
// the server took it.
type storeSet struct {
	at  time.Time // the server's clock
	ttl time.Duration
}

func newSessionTrace() *sessionTrace { return &sessionTrace{start: time.Now()} }

// setID names the session traced from now on.
func (tr *sessionTrace) setID(id session.ID) {
	tr.mu.Lock()
	tr.id, tr.key = id, hex.EncodeToString(id[:])
	tr.mu.Unlock()
}

func (tr *sessionTrace) traced() (session.ID, string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.id, tr.key
}

// add records a line, stamped with the time since the trace began.
func (tr *sessionTrace) add(format string, args ...any) {
	tr.addAt(time.Now(), format, args...)
}

func (tr *sessionTrace) addAt(at time.Time, format string, args ...any) {
	line := fmt.Sprintf("%8.3fs ", at.Sub(tr.start).Seconds()) + fmt.Sprintf(format, args...)
	tr.mu.Lock()
	tr.lines = append(tr.lines, line)
	tr.mu.Unlock()
}

// rel formats at as seconds since the trace began.
func (tr *sessionTrace) rel(at time.Time) string {
	if at.IsZero() {
		return "-"
	}
	return fmt.Sprintf("%.3fs", at.Sub(tr.start).Seconds())
}

// dump returns the lines recorded, oldest first (the server's commands by
// the time they were read).
func (tr *sessionTrace) dump() string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return strings.Join(tr.lines, "\n")
}

// setsAfter returns the plain SETs of the record the server took after t.
func (tr *sessionTrace) setsAfter(t time.Time) []storeSet {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var out []storeSet
	for _, s := range tr.sets {
		if s.at.After(t) {
			out = append(out, s)
		}
	}
	return out
}

// watch records the cache events of the traced session, and the
// insertions of its children, on each of ms.
func (tr *sessionTrace) watch(ms ...*farmtest.Member) {
	for _, m := range ms {
		m.Cache.AddHook(session.EventNew|session.EventRemove, func(ev session.Event) {
			s, _ := tr.traced()
			switch {
			case s == (session.ID{}):
			case ev.ID == s && ev.Kind == session.EventRemove:
				tr.add("%s: S removed (%s, %s), expires %s", m.Name, ev.Reason, ev.Origin, tr.rel(ev.Record.Expires))
			case ev.ID == s:
				tr.add("%s: S inserted (%s), expires %s", m.Name, ev.Origin, tr.rel(ev.Record.Expires))
			case ev.Record.Parent == s && ev.Kind == session.EventNew:
				tr.add("%s: a child of S inserted (%s)", m.Name, ev.Origin)
			}
		})
	}
}

// logger returns a logger that records the node's warnings and errors.
func (tr *sessionTrace) logger(node string) *slog.Logger {
	return slog.New(traceHandler{tr: tr, node: node})
}

type traceHandler struct {
	tr    *sessionTrace
	node  string
	attrs []slog.Attr
}

func (h traceHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (h traceHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	for _, a := range h.attrs {
		if a.Key != "farm" {
			fmt.Fprintf(&b, " %s", a)
		}
	}
	r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s", a); return true })
	h.tr.add("%s: %s: %s%s", h.node, r.Level, r.Message, b.String())
	return nil
}

func (h traceHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	return h
}

func (h traceHandler) WithGroup(string) slog.Handler { return h }

// watchStore records the commands the redis-server at addr takes on the
// traced session's record, through MONITOR on a connection of its own
// (dialled again if the server restarts), until the test ends.
func (tr *sessionTrace) watchStore(t *testing.T, addr string) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			tr.monitor(ctx, addr)
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
}

// monitor reads one MONITOR connection to addr until it fails or ctx ends.
func (tr *sessionTrace) monitor(ctx context.Context, addr string) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if _, err := c.Write([]byte("MONITOR\r\n")); err != nil {
		return
	}
	r := bufio.NewReaderSize(c, 64<<10)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if _, key := tr.traced(); key != "" && strings.Contains(line, key) {
			tr.storeCommand(strings.TrimSpace(line), key)
		}
	}
}

// storeCommand records a MONITOR line on the traced record: its time, the
// command and its short arguments (the record's key as S, long or binary
// ones by their length), and, for a plain SET, its TTL.
func (tr *sessionTrace) storeCommand(line, key string) {
	stamp, rest, _ := strings.Cut(strings.TrimPrefix(line, "+"), " ")
	secs, err := strconv.ParseFloat(stamp, 64)
	if err != nil {
		return
	}
	at := time.Unix(0, int64(secs*1e9))
	from, rest, _ := strings.Cut(rest, "] ")
	args := monitorArgs(rest)
	shown := make([]string, len(args))
	for i, a := range args {
		switch {
		case strings.Contains(a, key):
			shown[i] = "S"
		case len(a) > 48 || strings.ContainsFunc(a, func(r rune) bool { return r < ' ' || r > '~' }):
			shown[i] = fmt.Sprintf("<%d bytes>", len(a))
		default:
			shown[i] = a
		}
	}
	if len(args) == 5 && args[0] == "set" && strings.EqualFold(args[3], "px") {
		if ms, err := strconv.ParseInt(args[4], 10, 64); err == nil {
			tr.mu.Lock()
			tr.sets = append(tr.sets, storeSet{at: at, ttl: time.Duration(ms) * time.Millisecond})
			tr.mu.Unlock()
		}
	}
	tr.addAt(at, "redis %s]: %s", strings.TrimPrefix(from, "["), strings.Join(shown, " "))
}

// monitorArgs splits the arguments of a MONITOR line ("a" "b\x00" ...),
// undoing its escapes.
func monitorArgs(s string) []string {
	var args []string
	for {
		i := strings.IndexByte(s, '"')
		if i < 0 {
			return args
		}
		s = s[i+1:]
		var b strings.Builder
		for len(s) > 0 && s[0] != '"' {
			if s[0] == '\\' && len(s) > 1 {
				switch s[1] {
				case 'x':
					if len(s) >= 4 {
						if v, err := strconv.ParseUint(s[2:4], 16, 8); err == nil {
							b.WriteByte(byte(v))
							s = s[4:]
							continue
						}
					}
				case 'n':
					b.WriteByte('\n')
					s = s[2:]
					continue
				case 'r':
					b.WriteByte('\r')
					s = s[2:]
					continue
				}
				b.WriteByte(s[1])
				s = s[2:]
				continue
			}
			b.WriteByte(s[0])
			s = s[1:]
		}
		args = append(args, b.String())
		if len(s) > 0 {
			s = s[1:]
		}
	}
}
