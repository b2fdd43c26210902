package farm_test

import (
	"flag"
	"os"
	"runtime"
	"strconv"
	"testing"
)

// minParallel is how many of the package's parallel tests run at once, at
// the least, unless -parallel says otherwise. Go's default is GOMAXPROCS,
// two on the CI machine; but the farm tests wait far more than they
// compute (outage windows, grace periods, rotations, TTLs): ~1,000 s of
// parallel tests took ~520 s at two at a time and ~330 s at three, with
// the CPU still idle half the time (docs/design.md, test discipline).
const minParallel = 3

// TestMain raises the package's -parallel to minParallel where the
// machine's GOMAXPROCS is lower and the flag was not given.
func TestMain(m *testing.M) {
	flag.Parse()
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "test.parallel" })
	if !given && runtime.GOMAXPROCS(0) < minParallel {
		if err := flag.Set("test.parallel", strconv.Itoa(minParallel)); err != nil {
			panic(err)
		}
	}
	os.Exit(m.Run())
}
