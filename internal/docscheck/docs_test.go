package docscheck

import (
	"bufio"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// A span is the text of one backquoted span in a Markdown file (or one
// line of a fenced code block), with where it starts.
type span struct {
	file string
	line int
	text string
}

// repoRoot is the module root: two directories up from this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("no go.mod at %s: %v", root, err)
	}
	return root
}

// docFiles returns README.md and docs/*.md, relative to root.
func docFiles(t *testing.T, root string) []string {
	t.Helper()
	files := []string{"README.md"}
	more, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range more {
		rel, _ := filepath.Rel(root, f)
		files = append(files, rel)
	}
	return files
}

// spans returns the backquoted spans of a Markdown file: each inline code
// span (which may run over lines within a paragraph) and each line of a
// fenced code block. Inline spans are paired within a paragraph, so that
// one stray backquote cannot turn a whole file inside out.
func spans(file string, text string) []span {
	var out []span
	var para []string
	paraLine := 0
	flush := func() {
		if len(para) == 0 {
			return
		}
		p := strings.Join(para, "\n")
		for i := 0; i < len(p); {
			open := strings.IndexByte(p[i:], '`')
			if open < 0 {
				break
			}
			open += i
			n := 1 // a span opened by n backquotes closes at the next run of n
			for open+n < len(p) && p[open+n] == '`' {
				n++
			}
			fence := strings.Repeat("`", n)
			end := strings.Index(p[open+n:], fence)
			if end < 0 {
				break
			}
			end += open + n
			out = append(out, span{file, paraLine + strings.Count(p[:open], "\n"), p[open+n : end]})
			i = end + n
		}
		para = para[:0]
	}
	inFence := false
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(nil, 1<<20)
	for ln := 1; sc.Scan(); ln++ {
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			flush()
			inFence = !inFence
			continue
		}
		if inFence {
			out = append(out, span{file, ln, line})
			continue
		}
		if strings.TrimSpace(line) == "" {
			flush()
			continue
		}
		if len(para) == 0 {
			paraLine = ln
		}
		para = append(para, line)
	}
	flush()
	return out
}

// code is what the repository holds: test function names, metric names
// and the top-level entries that a quoted path may start with.
type code struct {
	tests   map[string]bool // TestX, BenchmarkX, FuzzX, ExampleX functions (and suites such as farmtest.TestStore)
	metrics map[string]bool // "tlsfarm_..." string literals in non-test Go files
	top     map[string]bool // top-level files and directories
}

var (
	funcDecl   = regexp.MustCompile(`(?m)^func ((?:Test|Benchmark|Fuzz|Example)\w*)\(`)
	metricLit  = regexp.MustCompile(`"(tlsfarm_[a-z0-9_]+)"`)
	testRef    = regexp.MustCompile(`(?:^|[^A-Za-z0-9_])((?:Test|Benchmark|Fuzz|Example)[A-Z0-9_][A-Za-z0-9_]*\*?)`)
	metricRef  = regexp.MustCompile(`(?:^|[^A-Za-z0-9_])(tlsfarm_[a-z0-9_]*\*?)`)
	pathToken  = regexp.MustCompile(`[^\s'"(),;|<>\[\]{}=]+`)
	lineSuffix = regexp.MustCompile(`(:\d+)+$`)
)

func scanCode(t *testing.T, root string) code {
	t.Helper()
	c := code{tests: map[string]bool{}, metrics: map[string]bool{}, top: map[string]bool{}}
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != ".git" {
			c.top[e.Name()] = true
		}
	}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == ".git" || d.Name() == "testdata" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range funcDecl.FindAllSubmatch(b, -1) {
			c.tests[string(m[1])] = true
		}
		if !strings.HasSuffix(p, "_test.go") {
			for _, m := range metricLit.FindAllSubmatch(b, -1) {
				c.metrics[string(m[1])] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// isCommand reports whether a span is a go test command line, whose -run,
// -bench and -fuzz arguments are regular expressions that may name a
// prefix of several tests.
func isCommand(s string) bool {
	return strings.Contains(s, "go test") || strings.Contains(s, "-run ") ||
		strings.Contains(s, "-bench ") || strings.Contains(s, "-fuzz ")
}

func (c code) testExists(name string, prefixOK bool) bool {
	if n, ok := strings.CutSuffix(name, "*"); ok {
		name, prefixOK = n, true // TestCarriedTicket*: the tests it names
	}
	if c.tests[name] {
		return true
	}
	if prefixOK {
		for n := range c.tests {
			if strings.HasPrefix(n, name) {
				return true
			}
		}
	}
	return false
}

// gone lists names the docs quote as removed, each with where they say so.
// A name is here only while a doc says it is gone; anything else quoted
// must exist.
var gone = map[string]string{
	"tlsfarm_farm_write_through_*": "docs/operations.md: the series are gone (replaced by tlsfarm_farm_young_waits_total and tlsfarm_farm_young_wait_seconds)",
}

func (c code) metricExists(name string) bool {
	if gone[name] != "" {
		return true
	}
	if strings.HasSuffix(name, "*") || strings.HasSuffix(name, "_") {
		prefix := strings.TrimSuffix(name, "*")
		for n := range c.metrics {
			if strings.HasPrefix(n, prefix) {
				return true
			}
		}
		return false
	}
	if c.metrics[name] {
		return true
	}
	// A histogram's series: name_bucket, name_sum, name_count.
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suf); ok && c.metrics[base] {
			return true
		}
	}
	return false
}

// repoPath returns the repository path a token quotes, and whether it
// quotes one: a token whose first element is a top-level entry of the
// repository and that has at least one slash, such as farm/publish.go,
// ./farm/natsbus/..., scripts/bench or docs/farm.md#anchor.
func (c code) repoPath(tok string) (string, bool) {
	tok = strings.TrimPrefix(tok, "./")
	tok = strings.TrimRight(tok, ".,:;")
	if i := strings.IndexByte(tok, '#'); i >= 0 {
		tok = tok[:i]
	}
	tok = lineSuffix.ReplaceAllString(tok, "")
	tok = strings.TrimSuffix(tok, "/...")
	tok = strings.TrimSuffix(tok, "/")
	first, _, ok := strings.Cut(tok, "/")
	if !ok || !c.top[first] {
		return "", false
	}
	return tok, true
}

func pathExists(root, p string) bool {
	if strings.ContainsAny(p, "*?") {
		m, _ := filepath.Glob(filepath.Join(root, filepath.FromSlash(p)))
		return len(m) > 0
	}
	_, err := os.Stat(filepath.Join(root, filepath.FromSlash(p)))
	return err == nil
}

// flagArg finds a go test -run, -bench or -fuzz flag and its argument in
// a command line.
var flagArg = regexp.MustCompile(`(?:^|\s)-(run|bench|fuzz)[= ]('[^']*'|"[^"]*"|[^\s'"]+)`)

// exprsMatch reports the alternatives of a -run, -bench or -fuzz
// expression that match no function of their kind: -bench 'Receive$' must
// match a BenchmarkX, -run Example some TestX, ExampleX or FuzzX. Only the
// top level (before the first slash) is checked, since a subtest's name
// is not declared; an expression that matches nothing on purpose ('^$')
// and one that does not compile are let be; so is -run XXX, the old idiom
// for no tests (docs/transports.md uses it).
func (c code) exprsMatch(flag, expr string) (missing []string) {
	expr = strings.Trim(expr, `'"`)
	expr = strings.ReplaceAll(expr, `\|`, "|") // an escaped pipe in a Markdown table
	expr, _, _ = strings.Cut(expr, "/")
	for _, alt := range strings.Split(expr, "|") {
		if alt == "" || alt == "^$" || alt == "XXX" || alt == "." {
			continue
		}
		re, err := regexp.Compile(alt)
		if err != nil {
			continue
		}
		found := false
		for n := range c.tests {
			ok := strings.HasPrefix(n, "Benchmark")
			switch flag {
			case "run":
				ok = !ok
			case "fuzz":
				ok = strings.HasPrefix(n, "Fuzz")
			}
			if ok && re.MatchString(n) {
				found = true
				break
			}
		}
		if !found {
			missing = append(missing, alt)
		}
	}
	return missing
}

// check returns the stale references in one Markdown file's text, as
// "file:line: kind name", and how many references it checked.
func (c code) check(root, file, text string) (stale []string, checked int) {
	seen := map[string]bool{}
	report := func(s span, kind, name string) {
		msg := s.file + ":" + strconv.Itoa(s.line) + ": " + kind + " " + name
		if !seen[msg] {
			seen[msg] = true
			stale = append(stale, msg)
		}
	}
	for _, s := range spans(file, strings.ReplaceAll(text, "\r\n", "\n")) {
		cmd := isCommand(s.text)
		for _, m := range testRef.FindAllStringSubmatch(s.text, -1) {
			checked++
			if !c.testExists(m[1], cmd) {
				report(s, "test", m[1])
			}
		}
		for _, m := range flagArg.FindAllStringSubmatch(s.text, -1) {
			checked++
			for _, alt := range c.exprsMatch(m[1], m[2]) {
				report(s, "-"+m[1]+" expression", alt)
			}
		}
		for _, m := range metricRef.FindAllStringSubmatch(s.text, -1) {
			checked++
			if !c.metricExists(m[1]) {
				report(s, "metric", m[1])
			}
		}
		for _, tok := range pathToken.FindAllString(s.text, -1) {
			p, ok := c.repoPath(tok)
			if !ok {
				continue
			}
			checked++
			if !pathExists(root, p) {
				report(s, "path", p)
			}
		}
	}
	return stale, checked
}

// TestDocsNameWhatExists checks that every test, benchmark, fuzz target
// and example, every go test -run/-bench/-fuzz expression, every
// repository path and every tlsfarm_* metric that README.md and docs/*.md
// quote in backquotes exists. A subtest (TestX/case) is checked by its
// parent's name; in a go test command line a name may be the prefix that
// its -run or -bench expression matches.
func TestDocsNameWhatExists(t *testing.T) {
	root := repoRoot(t)
	c := scanCode(t, root)
	if len(c.tests) == 0 || len(c.metrics) == 0 {
		t.Fatalf("found %d test functions and %d metric names in %s: the scan is broken", len(c.tests), len(c.metrics), root)
	}
	var stale []string
	checked := 0
	for _, f := range docFiles(t, root) {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		st, n := c.check(root, f, string(b))
		stale = append(stale, st...)
		checked += n
	}
	if checked < 100 {
		t.Fatalf("checked only %d names: the Markdown scan is broken", checked)
	}
	sort.Strings(stale)
	for _, m := range stale {
		t.Errorf("%s: quoted in the docs, not in the repository", m)
	}
	t.Logf("checked %d quoted names; %d stale", checked, len(stale))
}

// TestCheckFindsStale runs the check on made-up Markdown: what it must
// accept and what it must report, so that a scan that silently finds
// nothing cannot pass.
func TestCheckFindsStale(t *testing.T) {
	root := repoRoot(t)
	c := scanCode(t, root)
	md := "Prose `TestDocsNameWhatExists/sub` and `TestCheckFindsStale`, `TestCheckFinds*`,\n" +
		"`internal/docscheck/docs_test.go:12`, `./internal/docscheck/...`, `README.md`-less `docs/farm.md#scale`,\n" +
		"`/etc/tlsfarm/x.yaml`, `tlsfarm/3`, `redis://h:6379/0`.\n" +
		"A span over\nlines: `go test -run 'TestDocsName|TestCheck' -bench 'NoSuchBench$'\n./internal/docscheck/`\n\n" +
		"```sh\ngo test -run TestGoneAway ./internal/nosuchdir/\n```\n\n" +
		"| a | `TestDocsNameWhatExists\\|TestAlsoGone` |\n\n" +
		"`internal/docscheck/gone.go` and `FuzzNothingHere` and `ExampleNothing_Here` and `BenchmarkNope`.\n"
	c.metrics["tlsfarm_docscheck_probe_total"] = true
	md += "\n`tlsfarm_docscheck_probe_total{kind=\"a\"}`, `tlsfarm_docscheck_*`, `tlsfarm_docscheck_probe_total_bucket`, `tlsfarm_docscheck_gone_total`.\n"
	stale, _ := c.check(root, "x.md", md)
	want := []string{
		"x.md:5: -bench expression NoSuchBench$", // the span starts on line 5
		"x.md:9: test TestGoneAway",
		"x.md:9: -run expression TestGoneAway",
		"x.md:9: path internal/nosuchdir",
		"x.md:12: test TestAlsoGone",
		"x.md:14: path internal/docscheck/gone.go",
		"x.md:14: test FuzzNothingHere",
		"x.md:14: test ExampleNothing_Here",
		"x.md:14: test BenchmarkNope",
		"x.md:16: metric tlsfarm_docscheck_gone_total",
	}
	sort.Strings(stale)
	sort.Strings(want)
	if strings.Join(stale, "\n") != strings.Join(want, "\n") {
		t.Errorf("stale:\n%s\nwant:\n%s", strings.Join(stale, "\n"), strings.Join(want, "\n"))
	}
}

// notSeries are tlsfarm_ names in the code that no scrape shows as a
// series: the admin's safe collector reports a panicking collector under
// this name as a scrape error.
var notSeries = map[string]bool{"tlsfarm_admin_collector_panic": true}

// TestMetricsListed checks the other way: every metric name in the code
// is listed in docs/metrics.md, so that a new series cannot go
// undocumented.
func TestMetricsListed(t *testing.T) {
	root := repoRoot(t)
	c := scanCode(t, root)
	b, err := os.ReadFile(filepath.Join(root, "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, m := range metricRef.FindAllStringSubmatch(string(b), -1) {
		listed[m[1]] = true
	}
	var missing []string
	for name := range c.metrics {
		if !listed[name] && !notSeries[name] {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	for _, name := range missing {
		t.Errorf("metric %s is not listed in docs/metrics.md", name)
	}
	if len(c.metrics) < 50 {
		t.Fatalf("found only %d metric names in the code: the scan is broken", len(c.metrics))
	}
}
