package agent

import (
	"fmt"
	"runtime/debug"
)

// The agent's garbage collector settings, unless the operator sets GOGC or
// GOMEMLIMIT. Its live heap is small (26-61 MB resident at 1,000-10,000
// routes in `make bench-scale`) while a write burst allocates quickly: at
// Go's default GOGC of 100 the collector took about a tenth of the agents'
// CPU in the three-node write benchmark. GOGC 400 collects a fifth as
// often; the soft limit makes the collector work harder as the heap nears
// it, so the agent's heap stays well inside a 1 GB droplet beside HAProxy.
const (
	DefaultGCPercent   = 400
	DefaultMemoryLimit = 256 << 20
)

// TuneGC applies DefaultGCPercent and DefaultMemoryLimit, each unless its
// environment variable (GOGC, GOMEMLIMIT) is set, in which case Go has
// applied the operator's value already. It returns what is in force, for
// the start-up log.
func TuneGC(getenv func(string) string) string {
	percent := "GOGC from the environment"
	if getenv("GOGC") == "" {
		debug.SetGCPercent(DefaultGCPercent)
		percent = fmt.Sprintf("GOGC %d", DefaultGCPercent)
	}
	limit := "GOMEMLIMIT from the environment"
	if getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(DefaultMemoryLimit)
		limit = fmt.Sprintf("GOMEMLIMIT %dMiB", DefaultMemoryLimit>>20)
	}
	return percent + ", " + limit
}
