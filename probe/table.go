package probe

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
)

// WriteTable writes r to w for a person to read: a line about the run, a
// table of counts and a table of latencies in milliseconds, each with a
// row per target and a total.
func (r *Report) WriteTable(w io.Writer) error {
	rate := 0.0
	if r.Elapsed > 0 {
		rate = float64(r.Total.Connections) / r.Elapsed.Seconds()
	}
	version := versionLabel(r.Version)
	if r.HTTP3 {
		version = "HTTP/3 over QUIC"
	}
	fmt.Fprintf(w, "%s to %s from %s (%s, %s, server name %q) in %v, %.0f/s\n\n",
		plural(r.Total.Connections, "connection"), plural(len(r.Targets), "target"), plural(r.Concurrency, "client"),
		r.Pick, version, r.ServerName, r.Elapsed.Round(time.Millisecond), rate)

	stats := append(slices.Clip(r.Targets), r.Total)
	counts := [][]string{{"TARGET", "CONNS", "FULL", "RESUMED", "FAILED", "OFFERED", "RESUMPTION", "CROSS-NODE"}}
	align := "lrrrrrrr"
	if r.HTTP3 {
		counts[0] = append(counts[0], "0-RTT")
		align += "r"
	}
	offerFailed := r.Total.OfferFailed > 0
	if offerFailed {
		counts[0] = append(counts[0], "OFFER-FAILED")
		align += "r"
	}
	if len(r.Total.Errors) > 0 {
		counts[0] = append(counts[0], "ERRORS")
		align += "l"
	}
	for _, s := range stats {
		row := []string{s.Target, strconv.Itoa(s.Connections), strconv.Itoa(s.Full), strconv.Itoa(s.Resumed),
			strconv.Itoa(s.Failed), strconv.Itoa(s.Offered), percent(s), strconv.Itoa(s.CrossNode)}
		if r.HTTP3 {
			row = append(row, strconv.Itoa(s.EarlyData))
		}
		if offerFailed {
			row = append(row, strconv.Itoa(s.OfferFailed))
		}
		if len(align) > len(row) {
			row = append(row, errorList(s.Errors))
		}
		counts = append(counts, row)
	}
	if err := writeColumns(w, align, counts); err != nil {
		return err
	}

	latency := [][]string{{"TARGET", "KIND", "COUNT", "CONNECT p50", "p90", "p99", "max", "HANDSHAKE p50", "p90", "p99", "max"}}
	for _, s := range stats {
		for _, k := range []struct {
			name string
			l    Latency
		}{{"full", s.FullLatency}, {"resumed", s.ResumedLatency}} {
			if k.l.Connect.Count == 0 {
				continue
			}
			c, h := k.l.Connect, k.l.Handshake
			latency = append(latency, []string{s.Target, k.name, strconv.Itoa(c.Count),
				msText(c.P50), msText(c.P90), msText(c.P99), msText(c.Max),
				msText(h.P50), msText(h.P90), msText(h.P99), msText(h.Max)})
		}
	}
	if len(latency) == 1 {
		_, err := fmt.Fprintln(w, "\nno handshake completed")
		return err
	}
	fmt.Fprintln(w, "\nlatency in ms; connect: from the start of the dial to the end of the handshake; handshake: TLS alone")
	return writeColumns(w, "llrrrrrrrrr", latency)
}

// writeColumns writes rows of cells in columns two spaces apart, each
// aligned to the left or right as align says ('l' or 'r' per column).
func writeColumns(w io.Writer, align string, rows [][]string) error {
	width := make([]int, len(align))
	for _, row := range rows {
		for i, c := range row {
			width[i] = max(width[i], len(c))
		}
	}
	var b strings.Builder
	for _, row := range rows {
		b.Reset()
		for i, c := range row {
			if i > 0 {
				b.WriteString("  ")
			}
			pad := strings.Repeat(" ", width[i]-len(c))
			if align[i] == 'r' {
				b.WriteString(pad)
			}
			b.WriteString(c)
			if align[i] == 'l' && i < len(row)-1 {
				b.WriteString(pad)
			}
		}
		b.WriteByte('\n')
		if _, err := io.WriteString(w, b.String()); err != nil {
			return err
		}
	}
	return nil
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func versionLabel(v string) string {
	if v == "any" || v == "" {
		return "any TLS version"
	}
	return v
}

func percent(s Stats) string {
	if s.Offered == 0 {
		return "-"
	}
	return shareText(s.Resumed, s.Offered)
}

// shareText writes n/d, with d positive, as a percentage with one
// decimal, rounded to the nearest tenth, except that it reads "100.0%"
// only if n is d and "0.0%" only if n is 0: 1999 resumed of 2000 offered
// is "99.9%", not a perfect score.
func shareText(n, d int) string {
	t := (2000*int64(n) + int64(d)) / (2 * int64(d)) // tenths of a percent
	switch {
	case n < d && t >= 1000:
		t = 999
	case n > 0 && t <= 0:
		t = 1
	}
	return fmt.Sprintf("%d.%d%%", t/10, t%10)
}

func msText(d time.Duration) string { return fmt.Sprintf("%.2f", ms(d)) }

func errorList(errs map[string]int) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(errs)) {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%d", k, errs[k])
	}
	return b.String()
}
