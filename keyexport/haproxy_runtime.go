package keyexport

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"
)

// defaultRuntimeTimeout bounds one command to HAProxy's runtime API when the
// context has no earlier deadline.
const defaultRuntimeTimeout = 5 * time.Second

// HAProxyRuntime talks to a running HAProxy's runtime API (its "stats
// socket", which must be at level admin) about one tls-ticket-keys
// reference. Each command it sends waits at most 5 seconds, or less if
// its context ends sooner.
type HAProxyRuntime struct {
	// Socket is the runtime API's address: a Unix socket path, or host:port
	// for a TCP socket on a loopback address (127.0.0.0/8, ::1 or
	// localhost). The runtime API has no encryption, and "set ssl tls-key"
	// carries the key: any other host is refused, so that no key crosses
	// a network in the clear (HAProxy reads the keys file on its own
	// machine anyway, so its agent runs there too).
	Socket string

	// ID names the keys reference: the file name exactly as haproxy.cfg
	// gives it to tls-ticket-keys, or "#" and the numeric ID.
	ID string
}

// runtimeNetwork returns the network of a runtime API address ("unix" or
// "tcp"), and an error for a TCP address that is not on a loopback
// address (see HAProxyRuntime.Socket).
func runtimeNetwork(socket string) (string, error) {
	if strings.Contains(socket, "/") || !strings.Contains(socket, ":") {
		return "unix", nil
	}
	host, _, err := net.SplitHostPort(socket)
	if err != nil {
		return "", fmt.Errorf("runtime API address %q: %v", socket, err)
	}
	if ip, err := netip.ParseAddr(host); (err == nil && ip.Unmap().IsLoopback()) || strings.EqualFold(host, "localhost") {
		return "tcp", nil
	}
	return "", fmt.Errorf("runtime API address %q is not a loopback address: the runtime API is not encrypted, and the keys would cross the network in the clear (use a Unix socket, or 127.0.0.1)", socket)
}

// command sends one command and returns HAProxy's whole answer.
func (rt *HAProxyRuntime) command(ctx context.Context, cmd string) (string, error) {
	network, err := runtimeNetwork(rt.Socket)
	if err != nil {
		return "", err
	}
	// At most defaultRuntimeTimeout, whatever the context's deadline: only
	// a context that ended when the command was sent had its own deadline
	// applied, so a context with a later one let a hung HAProxy hold the
	// export (and every target after it) until then.
	ctx, cancel := context.WithTimeout(ctx, defaultRuntimeTimeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, network, rt.Socket)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := checkRuntimePeer(network, c.RemoteAddr()); err != nil {
		return "", err
	}
	dl, _ := ctx.Deadline()
	c.SetDeadline(dl)
	// A context cancelled meanwhile (the agent stopping) ends the exchange
	// at once: the deadline alone left it waiting for a hung HAProxy.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := io.WriteString(c, cmd+"\n"); err != nil {
		return "", ctxErr(ctx, err)
	}
	b, err := io.ReadAll(io.LimitReader(c, maxRuntimeAnswer+1))
	if err == nil && len(b) > maxRuntimeAnswer {
		// Cut, its last line could read as a key line that is not.
		return "", fmt.Errorf("the runtime API's answer to %q is longer than %d bytes", strings.Fields(cmd)[0]+" "+strings.Fields(cmd)[1], maxRuntimeAnswer)
	}
	return string(b), ctxErr(ctx, err)
}

// maxRuntimeAnswer bounds an answer of the runtime API; HAProxy's to the
// commands sent here are a few hundred bytes.
const maxRuntimeAnswer = 1 << 20

// checkRuntimePeer refuses a TCP connection whose peer is not on a loopback
// address: "localhost" is resolved by the system's resolver, which on a
// host without a hosts entry for it may ask DNS, and "set ssl tls-key"
// would then carry a key off the machine in the clear.
func checkRuntimePeer(network string, peer net.Addr) error {
	if network != "tcp" {
		return nil
	}
	if a, ok := peer.(*net.TCPAddr); ok && a.IP.IsLoopback() {
		return nil
	}
	return fmt.Errorf("runtime API address resolved to %v, not a loopback address: refused, the keys would cross the network in the clear", peer)
}

// ctxErr returns the context's error, with err, if the context ended (its
// end cut the connection short), and err otherwise.
func ctxErr(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", context.Cause(ctx), err)
	}
	return err
}

// cliWord returns s as one word of a runtime API command: HAProxy splits a
// command line into words at spaces and tabs, and into commands at ';',
// unless a backslash escapes them. A key file's path with a space in it
// (quoted in haproxy.cfg) named no reference, and one with ';' would have
// ended the command there and run the rest as another.
func cliWord(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		if c == ' ' || c == '\t' || c == ';' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	return b.String()
}

// Keys returns the keys HAProxy holds for the reference, oldest first, as
// base64 text (the second of them encrypts when HAProxy holds three). The
// strings are key material: never log them.
func (rt *HAProxyRuntime) Keys(ctx context.Context) ([]string, error) {
	out, err := rt.command(ctx, "show tls-keys "+cliWord(rt.ID))
	if err != nil {
		return nil, err
	}
	keys, err := parseShowTLSKeys(out)
	if err != nil {
		return nil, fmt.Errorf("show tls-keys %s: %w", rt.ID, err)
	}
	return keys, nil
}

// parseShowTLSKeys parses the answer to "show tls-keys ID": comment lines
// starting with "#", then one line per key, "REF.N BASE64", oldest first.
func parseShowTLSKeys(out string) ([]string, error) {
	var keys []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		idx, key, ok := strings.Cut(line, " ")
		key = strings.TrimSpace(key)
		if !ok || !strings.Contains(idx, ".") || key == "" || strings.ContainsAny(key, " \t") {
			// An error message, such as an unknown reference; or a
			// key line of a shape not expected, whose key must not
			// reach the error.
			return nil, errors.New(firstLineMasked(out))
		}
		keys = append(keys, key)
	}
	if len(keys) == 0 {
		return nil, errors.New("no keys in the answer: " + firstLineMasked(out))
	}
	return keys, nil
}

// push makes key HAProxy's next key: its former next key starts encrypting
// and its oldest key is dropped.
func (rt *HAProxyRuntime) push(ctx context.Context, key string) error {
	out, err := rt.command(ctx, "set ssl tls-key "+cliWord(rt.ID)+" "+key)
	if err != nil {
		return err
	}
	if !strings.Contains(out, "TLS ticket key updated") {
		// Never let the key reach an error message, should HAProxy echo it:
		// mask it before the line is cut short, which could cut it too.
		return fmt.Errorf("set ssl tls-key %s: %s", rt.ID, firstLineMasked(strings.ReplaceAll(out, key, "<key>")))
	}
	return nil
}

// Sync brings the keys of the running HAProxy in line with s, as few
// "set ssl tls-key" commands as it takes: one at a routine rotation, none if
// they already match, at most as many as HAProxy holds after it missed
// several rotations or was restarted from an older file. Each command moves
// HAProxy's keys one step, and every intermediate state encrypts with a key
// the farm still accepts. Sync reads the keys back to check, and returns
// how many keys it pushed.
func (rt *HAProxyRuntime) Sync(ctx context.Context, s *Set) (int, error) {
	have, err := rt.Keys(ctx)
	if err != nil {
		return 0, err
	}
	want := haproxyWant(s, len(have))
	pushed := 0
	for _, k := range want[overlap(have, want):] {
		if err := rt.push(ctx, k); err != nil {
			return pushed, err
		}
		pushed++
	}
	got, err := rt.Keys(ctx)
	if err != nil {
		return pushed, err
	}
	if !slices.Equal(got, want) {
		return pushed, errors.New("after the update, HAProxy holds other keys than the farm's (is another program setting them?)")
	}
	return pushed, nil
}

// haproxyWant returns the last n keys of s's tls-ticket-keys file, base64
// encoded, padded in front with filler keys if s has fewer.
func haproxyWant(s *Set, n int) []string {
	all := haproxyKeysN(s, n)
	defer clear(all)
	keys := all[len(all)-n:]
	out := make([]string, len(keys))
	for i, k := range keys {
		b := HAProxyKey(k)
		out[i] = base64.StdEncoding.EncodeToString(b[:])
		clear(b[:])
	}
	return out
}

// overlap returns the largest m such that want starts with the last m keys
// of have: those keys are in place, and only want[m:] needs pushing.
func overlap(have, want []string) int {
	for m := min(len(have), len(want)); m > 0; m-- {
		if slices.Equal(have[len(have)-m:], want[:m]) {
			return m
		}
	}
	return 0
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

// firstLineMasked is firstLine with maskKeys applied before the line is
// cut short, so that no part of a key is left.
func firstLineMasked(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return firstLine(maskKeys(s))
}

// keyLike matches what could be a key: 32 or more characters of the
// base64 alphabet in a row (HAProxy's keys are 64 or 108).
var keyLike = regexp.MustCompile(`[A-Za-z0-9+/=]{32,}`)

// maskKeys returns s with every run of characters that could be a key
// replaced by "<key>", wherever it stands (a word of its own, or glued to
// punctuation), so that an answer of an unexpected shape reaches an error
// message without the key material in it.
func maskKeys(s string) string {
	return keyLike.ReplaceAllLiteralString(s, "<key>")
}
