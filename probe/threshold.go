package probe

import (
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
)

// A fraction is a flag.Value for a share in [0, 1], given as a fraction
// ("0.99") or a percentage ("99%"). Its zero value is unset.
type fraction struct {
	set bool
	v   float64
	r   *big.Rat // v exactly as given, for comparisons
}

func (f *fraction) String() string {
	if f == nil || !f.set {
		return ""
	}
	return percentText(f.v, f.r)
}

func (f *fraction) Set(s string) error {
	v, r, _, err := parseShare(s)
	if err != nil {
		return err
	}
	if v > 1 || r.Cmp(big.NewRat(1, 1)) > 0 {
		return fmt.Errorf("want a fraction from 0 to 1 (0.99) or a percentage (99%%)")
	}
	f.set, f.v, f.r = true, v, r
	return nil
}

// A failureLimit is a flag.Value for the most failed connections a run may
// have: a count ("3") or a share of the connections ("1%"). Its zero value
// is unset.
type failureLimit struct {
	set   bool
	count int      // without share
	share float64  // a percentage given, as a fraction
	r     *big.Rat // share exactly as given, for comparisons
	pct   bool
}

func (l *failureLimit) String() string {
	switch {
	case l == nil || !l.set:
		return ""
	case l.pct:
		return percentText(l.share, l.r)
	}
	return strconv.Itoa(l.count)
}

func (l *failureLimit) Set(s string) error {
	if strings.HasSuffix(s, "%") {
		v, r, _, err := parseShare(s)
		if err != nil {
			return err
		}
		*l = failureLimit{set: true, share: v, r: r, pct: true}
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
// It returns the share both as a float64 and exactly, as the rational
// number the decimal text names: 99.9/100 in floating point is a little
// more than 999/1000, and a run that resumed 999 of 1000 sessions must
// meet "99.9%".
func parseShare(s string) (v float64, r *big.Rat, pct bool, err error) {
	num, pct := strings.CutSuffix(s, "%")
	v, err = strconv.ParseFloat(num, 64)
	if err != nil || math.IsNaN(v) || v < 0 || (pct && v > 100) {
		return 0, nil, pct, fmt.Errorf("want a fraction from 0 to 1 (0.99) or a percentage (99%%)")
	}
	r, ok := new(big.Rat).SetString(num)
	if !ok || r.Sign() < 0 {
		// A form ParseFloat takes and big.Rat does not (such as "Inf",
		// which the callers refuse as out of range): the float is exact.
		r = new(big.Rat)
		if !math.IsInf(v, 0) {
			r.SetFloat64(v)
		}
	}
	if pct {
		v /= 100
		r.Quo(r, big.NewRat(100, 1))
	}
	return v, r, pct, nil
}

// ratioBelow reports whether n/d < r, exactly; d must be positive.
func ratioBelow(n, d int, r *big.Rat) bool {
	return big.NewRat(int64(n), int64(d)).Cmp(r) < 0
}

// ratioAbove reports whether n/d > r, exactly; d must be positive.
func ratioAbove(n, d int, r *big.Rat) bool {
	return big.NewRat(int64(n), int64(d)).Cmp(r) > 0
}

// percentText writes a share as a percentage: exactly r, in the fewest
// decimals that say it ("0.45%", where 100*v in floating point is
// 0.45000000000000007), or v if r is nil or has no short decimal form.
func percentText(v float64, r *big.Rat) string {
	if r != nil {
		p := new(big.Rat).Mul(r, big.NewRat(100, 1))
		for prec := 0; prec <= 20; prec++ {
			t := p.FloatString(prec)
			if back, ok := new(big.Rat).SetString(t); ok && back.Cmp(p) == 0 {
				return t + "%"
			}
		}
	}
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
		case ratioBelow(tot.Resumed, tot.Offered, minResumption.r):
			failedNote := ""
			if tot.OfferFailed > 0 {
				failedNote = fmt.Sprintf(", %d of them in handshakes that failed", tot.OfferFailed)
			}
			out = append(out, fmt.Sprintf("resumption %s (%d of %d offered sessions resumed%s) is below -min-resumption %s",
				shareText(tot.Resumed, tot.Offered), tot.Resumed, tot.Offered, failedNote, minResumption))
		}
	}
	if maxFailures.set {
		over := tot.Failed > maxFailures.count
		if maxFailures.pct {
			over = tot.Connections > 0 && ratioAbove(tot.Failed, tot.Connections, maxFailures.r)
		}
		if over {
			out = append(out, fmt.Sprintf("%d of %d connections failed (%s), more than -max-failures %s",
				tot.Failed, tot.Connections, errorList(tot.Errors), maxFailures))
		}
	}
	return strings.Join(out, "; ")
}
