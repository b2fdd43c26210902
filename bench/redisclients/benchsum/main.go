// Command benchsum reads go test -bench output on its standard input and
// prints, for each benchmark and each of its metrics, the median and the
// range of the runs.
package main

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

func main() {
	type key struct{ name, unit string }
	vals := map[key][]float64{}
	var names, units []string
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		name := f[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			u := f[i+1]
			if !slices.Contains(units, u) {
				units = append(units, u)
			}
			vals[key{name, u}] = append(vals[key{name, u}], v)
		}
	}
	// One table for each top-level benchmark, with its own metrics.
	var groups []string
	for _, name := range names {
		if g, _, _ := strings.Cut(name, "/"); !slices.Contains(groups, g) {
			groups = append(groups, g)
		}
	}
	for _, g := range groups {
		var gu []string
		for _, u := range units {
			for _, name := range names {
				if strings.HasPrefix(name, g+"/") && len(vals[key{name, u}]) > 0 && !slices.Contains(gu, u) {
					gu = append(gu, u)
				}
			}
		}
		fmt.Printf("\n| %s | n |", strings.TrimPrefix(g, "Benchmark"))
		for _, u := range gu {
			fmt.Printf(" %s |", u)
		}
		fmt.Printf("\n|---|---|")
		for range gu {
			fmt.Printf("---|")
		}
		fmt.Println()
		for _, name := range names {
			if !strings.HasPrefix(name, g+"/") {
				continue
			}
			n := 0
			var cells []string
			for _, u := range gu {
				v := vals[key{name, u}]
				if len(v) == 0 {
					cells = append(cells, "")
					continue
				}
				n = len(v)
				slices.Sort(v)
				cells = append(cells, fmt.Sprintf("%s [%s–%s]", num(median(v)), num(v[0]), num(v[len(v)-1])))
			}
			fmt.Printf("| %s | %d | %s |\n", strings.TrimPrefix(name, g+"/"), n, strings.Join(cells, " | "))
		}
	}
	// Round by round, each rueidis case against go-redis's in the same
	// round (the i-th result of each benchmark is of the i-th round).
	fmt.Printf("\n| against go-redis, round by round | metric | median ratio [range] |\n|---|---|---|\n")
	for _, name := range names {
		base := baseline(name)
		if base == "" || !slices.Contains(names, base) {
			continue
		}
		for _, u := range units {
			if !strings.Contains(u, "us/") && u != "ns/op" {
				continue
			}
			v, w := vals[key{name, u}], vals[key{base, u}]
			if len(v) == 0 || len(v) != len(w) {
				continue
			}
			var r []float64
			for i := range v {
				r = append(r, v[i]/w[i])
			}
			slices.Sort(r)
			fmt.Printf("| %s | %s | %.2f [%.2f–%.2f] |\n", strings.TrimPrefix(name, "Benchmark"), u, median(r), r[0], r[len(r)-1])
		}
	}
}

// baseline returns the go-redis case that name, a rueidis case, is
// compared with: client=rueidis-pipe with client=goredis-pipe, every other
// client=rueidis… with client=goredis; "" for a go-redis case.
func baseline(name string) string {
	i := strings.Index(name, "client=rueidis")
	if i < 0 {
		return ""
	}
	rest := strings.TrimPrefix(name[i:], "client=rueidis")
	if rest == "-pipe" {
		return name[:i] + "client=goredis-pipe"
	}
	return name[:i] + "client=goredis"
}

// median returns the median of sorted v.
func median(v []float64) float64 {
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// num formats v with three significant digits at most past the point.
func num(v float64) string {
	switch {
	case v >= 1000:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}
