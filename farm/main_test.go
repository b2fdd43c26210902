package farm_test

import (
	"flag"
	"os"
	"testing"
)

// TestMain runs the package's parallel tests three at a time, not
// GOMAXPROCS (two on the CI machine) at a time, unless -parallel is given.
// Most of the package's time is spent waiting: on timers, bounds and
// outages its tests stage, not on CPU. Alone on two cores the package took
// 580 s at two and 385 s at three, and it is the CI test step's long pole.
func TestMain(m *testing.M) {
	flag.Parse()
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "test.parallel" })
	if !given {
		if err := flag.Set("test.parallel", "3"); err != nil {
			panic(err)
		}
	}
	os.Exit(m.Run())
}
