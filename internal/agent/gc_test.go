package agent

import (
	"math"
	"runtime/debug"
	"testing"
)

func TestTuneGC(t *testing.T) {
	prevPercent := debug.SetGCPercent(100)
	prevLimit := debug.SetMemoryLimit(math.MaxInt64)
	t.Cleanup(func() {
		debug.SetGCPercent(prevPercent)
		debug.SetMemoryLimit(prevLimit)
	})

	// The operator's variables win: nothing is changed.
	env := map[string]string{"GOGC": "50", "GOMEMLIMIT": "1GiB"}
	if got := TuneGC(func(k string) string { return env[k] }); got != "GOGC from the environment, GOMEMLIMIT from the environment" {
		t.Errorf("with both set: %q", got)
	}
	if p := debug.SetGCPercent(100); p != 100 {
		t.Errorf("GOGC set by the environment was overridden: %d", p)
	}
	if l := debug.SetMemoryLimit(-1); l != math.MaxInt64 {
		t.Errorf("GOMEMLIMIT set by the environment was overridden: %d", l)
	}

	// Unset: the agent's defaults.
	if got := TuneGC(func(string) string { return "" }); got != "GOGC 400, GOMEMLIMIT 256MiB" {
		t.Errorf("with neither set: %q", got)
	}
	if p := debug.SetGCPercent(100); p != DefaultGCPercent {
		t.Errorf("GC percent %d, want %d", p, DefaultGCPercent)
	}
	if l := debug.SetMemoryLimit(-1); l != DefaultMemoryLimit {
		t.Errorf("memory limit %d, want %d", l, DefaultMemoryLimit)
	}

	// One set, the other not.
	debug.SetMemoryLimit(math.MaxInt64)
	if got := TuneGC(func(k string) string { return map[string]string{"GOGC": "off"}[k] }); got != "GOGC from the environment, GOMEMLIMIT 256MiB" {
		t.Errorf("with GOGC set: %q", got)
	}
}
