package probe

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// A fraction is a flag.Value for a share in [0, 1], given as a fraction
// ("0.99") or a percentage ("99%"). Its zero value is unset.
type fraction struct {
	set bool
	v   float64
}

func (f *fraction) String() string {
	if f == nil || !f.set {
		return ""
	}
	return percentText(f.v)
}

func (f *fraction) Set(s string) error {
	v, pct, err := parseShare(s)
	if err != nil {
		return err
	}
	if !pct && v > 1 {
		return fmt.Errorf("want a fraction from 0 to 1 (0.99) or a percentage (99%%)")
	}
	f.set, f.v = true, v
	return nil
}

// A failureLimit is a flag.Value for the most failed connections a run may
// have: a count ("3") or a share of the connections ("1%"). Its zero value
// is unset.
type failureLimit struct {
	set   bool
	count int     // without share
	share float64 // a percentage given, as a fraction
	pct   bool
}

func (l *failureLimit) String() string {
	switch {
	case l == nil || !l.set:
		return ""
	case l.pct:
		return percentText(l.share)
	}
	return strconv.Itoa(l.count)
}

func (l *failureLimit) Set(s string) error {
	if strings.HasSuffix(s, "%") {
		v, _, err := parseShare(s)
		if err != nil {
			return err
		}
		*l = failureLimit{set: true, share: v, pct: true}
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return fmt.Errorf("want a number of connections (0 or more) or a percentage (1%%)")
	}
	*l = failureLimit{set: true, count: n}
	return nil
}

// parseShare parses "0.99" or "99%" into 0.99, saying which form it had.
func parseShare(s string) (v float64, pct bool, err error) {
	num, pct := strings.CutSuffix(s, "%")
	v, err = strconv.ParseFloat(num, 64)
	if err != nil || math.IsNaN(v) || v < 0 || (pct && v > 100) {
		return 0, pct, fmt.Errorf("want a fraction from 0 to 1 (0.99) or a percentage (99%%)")
	}
	if pct {
		v /= 100
	}
	return v, pct, nil
}

func percentText(v float64) string {
	return strconv.FormatFloat(100*v, 'f', -1, 64) + "%"
}

// missed returns, in one line, the thresholds that rep misses: the
// resumption rate under minResumption (or nothing offered to measure it
// by), more failed connections than maxFailures allows. It returns "" if
// rep meets every threshold set.
func missed(rep *Report, minResumption *fraction, maxFailures *failureLimit) string {
	var out []string
	tot := rep.Total
	if minResumption.set {
		switch {
		case tot.Offered == 0:
			out = append(out, fmt.Sprintf("no handshake offered a session, so resumption is unmeasured (-min-resumption %s)", minResumption))
		case tot.ResumptionRate < minResumption.v:
			failedNote := ""
			if tot.OfferFailed > 0 {
				failedNote = fmt.Sprintf(", %d of them in handshakes that failed", tot.OfferFailed)
			}
			out = append(out, fmt.Sprintf("resumption %.1f%% (%d of %d offered sessions resumed%s) is below -min-resumption %s",
				100*tot.ResumptionRate, tot.Resumed, tot.Offered, failedNote, minResumption))
		}
	}
	if maxFailures.set {
		over := tot.Failed > maxFailures.count
		if maxFailures.pct {
			over = tot.Connections > 0 && float64(tot.Failed)/float64(tot.Connections) > maxFailures.share
		}
		if over {
			out = append(out, fmt.Sprintf("%d of %d connections failed (%s), more than -max-failures %s",
				tot.Failed, tot.Connections, errorList(tot.Errors), maxFailures))
		}
	}
	return strings.Join(out, "; ")
}
