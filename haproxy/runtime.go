package haproxy

import (
	"fmt"
	"slices"
	"strconv"
)

// Server-only changes go through HAProxy's runtime API instead of a reload.
// Every reload leaves the old worker alive for as long as its connections
// last (bounded by hard-stop-after), and mworker-max-reloads kills workers
// that outlived too many reloads: long-lived TCP (game servers, stratum)
// suffers from churn that only adds or removes backends, which is exactly
// what sidecars do. So when the next configuration differs from the running
// one only in the servers of existing backends, the manager installs the
// file (so any later reload or restart agrees) and then adds and deletes
// those servers on the running worker. Anything unexpected falls back to a
// reload.

// dynamicBalance lists the balance algorithms whose backends accept servers
// added at runtime (hash-based ones need hash-type consistent).
var dynamicBalance = map[string]bool{"roundrobin": true, "leastconn": true, "first": true, "random": true}

// change is one frontend that differs between the running state and the
// next one: had/has say whether it exists before/after.
type change struct {
	a, b     Frontend
	had, has bool
}

// byPort returns fes sorted by port (fes itself when it already is, which
// the route table's order is), and whether its ports are distinct.
func byPort(fes []Frontend) ([]Frontend, bool) {
	cmp := func(a, b Frontend) int { return a.Port - b.Port }
	if !slices.IsSortedFunc(fes, cmp) {
		fes = slices.Clone(fes)
		slices.SortFunc(fes, cmp)
	}
	for i := 1; i < len(fes); i++ {
		if fes[i].Port == fes[i-1].Port {
			return nil, false
		}
	}
	return fes, true
}

// changes walks running and next in port order and returns the frontends
// that differ, in port order. It allocates nothing for frontends that did
// not change, so a change of one route costs about the same at any table
// size. ok is false when either holds a port twice.
func changes(running, next []Frontend) (out []change, ok bool) {
	old, ok1 := byPort(running)
	cur, ok2 := byPort(next)
	if !ok1 || !ok2 {
		return nil, false
	}
	i, j := 0, 0
	for i < len(old) || j < len(cur) {
		switch {
		case j == len(cur) || (i < len(old) && old[i].Port < cur[j].Port):
			out = append(out, change{a: old[i], had: true})
			i++
		case i == len(old) || cur[j].Port < old[i].Port:
			out = append(out, change{b: cur[j], has: true})
			j++
		default:
			if !frontendEqual(old[i], cur[j]) {
				out = append(out, change{a: old[i], b: cur[j], had: true, has: true})
			}
			i++
			j++
		}
	}
	return out, true
}

// planServerChanges returns the runtime API commands that turn the running
// frontends into next, or ok=false when anything but the servers of
// existing backends differs, or a changed backend cannot take dynamic
// servers. Adds come before deletes, so a backend never empties on the way.
func planServerChanges(s Settings, running, next []Frontend) (cmds []string, ok bool) {
	if running == nil {
		return nil, false
	}
	chs, ok := changes(running, next)
	if !ok {
		return nil, false
	}
	s, _, _ = checkSettings(s, func(string, ...any) {}) // the values Render used
	var adds, dels []string
	for _, ch := range chs {
		a, d, ok := serverChanges(s, ch)
		if !ok {
			return nil, false
		}
		adds, dels = append(adds, a...), append(dels, d...)
	}
	return append(adds, dels...), true
}

// serverChanges returns the commands that change the servers of one
// frontend outside the dynamic range, or ok=false when more than its
// servers changed (or its balance cannot take servers at run time).
func serverChanges(s Settings, ch change) (adds, dels []string, ok bool) {
	a, b := ch.a, ch.b
	norm := func(x string) string {
		if x == "" {
			return "roundrobin"
		}
		return x
	}
	if !ch.had || !ch.has || a.Name != b.Name || norm(a.Balance) != norm(b.Balance) || a.Sticky != b.Sticky ||
		a.ProxyProtocol != b.ProxyProtocol || a.HealthCheck != b.HealthCheck || a.CheckPort != b.CheckPort ||
		a.CheckHTTP != b.CheckHTTP {
		return nil, nil, false
	}
	ignore := func(string, ...any) {}
	was, now := sortServers(a, ignore), sortServers(b, ignore)
	if slices.Equal(was, now) {
		return nil, nil, true
	}
	if !dynamicBalance[norm(b.Balance)] {
		return nil, nil, false
	}
	backend := fmt.Sprintf("be_%d", b.Port)
	for _, sv := range now {
		if slices.Contains(was, sv) {
			continue
		}
		name := backend + "/" + serverName(sv)
		adds = append(adds, "add server "+name+" "+serverAddr(sv)+serverOptions(s, b), "enable server "+name)
		if b.HealthCheck {
			adds = append(adds, "enable health "+name)
		}
	}
	for _, sv := range was {
		if slices.Contains(now, sv) {
			continue
		}
		name := backend + "/" + serverName(sv)
		dels = append(dels, "set server "+name+" state maint", "shutdown sessions server "+name, "del server "+name)
	}
	return adds, dels, true
}

// serverOptions renders the options of fe's server lines (shared with Render).
func serverOptions(s Settings, fe Frontend) string {
	var opts string
	if fe.HealthCheck {
		opts += " check inter " + formatDuration(s.CheckInterval)
		if fe.CheckPort != 0 {
			opts += " port " + strconv.Itoa(fe.CheckPort)
		}
	}
	switch fe.ProxyProtocol {
	case "v1":
		opts += " send-proxy"
	case "v2":
		opts += " send-proxy-v2"
	}
	return opts
}
