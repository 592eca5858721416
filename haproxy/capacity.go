package haproxy

import (
	"fmt"
	"syscall"
)

// Capacity is what a node can run, in file descriptors: every listener is
// one in each HAProxy process, every health-checked server one while its
// check runs, every connection two. The limit is the process's
// RLIMIT_NOFILE hard limit (HAProxy raises its soft limit up to it). At
// about 10,000 routes under a 20,000-descriptor limit a reload failed, and
// HAProxy 2.6's master CLI said only "failed": capacity has to be
// computed before a change is admitted, not discovered by a failed reload.

// Descriptors kept out of what routes may use.
const (
	// baseDescriptors covers HAProxy itself: the master CLI, the stats
	// socket, logs, pipes, the master-worker channel.
	baseDescriptors = 64
	// minConnections are the connections a node must keep room for
	// (two descriptors each) when MaxConn leaves HAProxy to size them.
	minConnections = 256
)

// DescriptorLimit returns this process's hard RLIMIT_NOFILE (0 when unknown).
func DescriptorLimit() int {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil || r.Max > 1<<30 {
		if err == nil {
			return 1 << 30
		}
		return 0
	}
	return int(r.Max)
}

// RouteCapacity returns how many descriptors a node whose limit is limit
// has left for routes' listeners and health checks with settings s: the
// limit less HAProxy's own, the dynamic range's listeners and the room kept
// for connections (MaxConn's two each, or minConnections').
func RouteCapacity(s Settings, limit int) int {
	s = s.WithDefaults()
	conns := s.MaxConn
	if conns <= 0 {
		conns = minConnections
	}
	rangeListeners := 0
	if !s.DynamicPorts.Empty() {
		rangeListeners = s.DynamicPorts.Last - s.DynamicPorts.First + 1
	}
	return limit - baseDescriptors - rangeListeners - 2*conns
}

// RouteDescriptors is what one route needs beyond the fixed part: its
// listener (none for a port of the pre-bound dynamic range, counted in
// RouteCapacity) and one per server when health checks are on.
func RouteDescriptors(s Settings, port, servers int, healthCheck bool) int {
	n := 1
	if !s.DynamicPorts.Empty() && port >= s.DynamicPorts.First && port <= s.DynamicPorts.Last {
		n = 0
	}
	if healthCheck {
		n += servers
	}
	return n
}

// Needs returns the descriptors fes need beyond the fixed part.
func Needs(s Settings, fes []Frontend) int {
	n := 0
	for _, fe := range fes {
		n += RouteDescriptors(s, fe.Port, len(fe.Servers), fe.HealthCheck)
	}
	return n
}

// capacityNote says, for a failed reload, whether fes fit this node.
func capacityNote(s Settings, fes []Frontend) string {
	limit := DescriptorLimit()
	if limit == 0 {
		return ""
	}
	need, have := Needs(s, fes), RouteCapacity(s, limit)
	if need <= have {
		return ""
	}
	return fmt.Sprintf("; the routes need about %d descriptors for listeners and health checks, more than the %d this node has for them (limit %d)", need, have, limit)
}
