package haproxy

import (
	"context"
	"fmt"
	"slices"
	"strings"
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

// planServerChanges returns the runtime API commands that turn the running
// frontends into next, or ok=false when anything but the servers of
// existing backends differs, or a changed backend cannot take dynamic
// servers. Adds come before deletes, so a backend never empties on the way.
func planServerChanges(s Settings, running, next []Frontend) (cmds []string, ok bool) {
	if running == nil || len(running) != len(next) {
		return nil, false
	}
	byPort := func(fes []Frontend) map[int]Frontend {
		m := make(map[int]Frontend, len(fes))
		for _, fe := range fes {
			if fe.Balance == "" {
				fe.Balance = "roundrobin"
			}
			m[fe.Port] = fe
		}
		return m
	}
	old, cur := byPort(running), byPort(next)
	if len(old) != len(running) || len(cur) != len(next) {
		return nil, false
	}
	ports := make([]int, 0, len(cur))
	for p := range cur {
		ports = append(ports, p)
	}
	slices.Sort(ports)
	ignore := func(string, ...any) {}
	s, _, _ = checkSettings(s, ignore) // the values Render used
	var adds, dels []string
	for _, p := range ports {
		a, found := old[p]
		b := cur[p]
		if !found || a.Name != b.Name || a.Balance != b.Balance || a.Sticky != b.Sticky ||
			a.ProxyProtocol != b.ProxyProtocol || a.HealthCheck != b.HealthCheck {
			return nil, false
		}
		was, now := sortServers(a, ignore), sortServers(b, ignore)
		if slices.Equal(was, now) {
			continue
		}
		if !dynamicBalance[b.Balance] {
			return nil, false
		}
		backend := fmt.Sprintf("be_%d", p)
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
	}
	return append(adds, dels...), true
}

// serverOptions renders the options of fe's server lines (shared with Render).
func serverOptions(s Settings, fe Frontend) string {
	var opts string
	if fe.HealthCheck {
		opts += " check inter " + formatDuration(s.CheckInterval)
	}
	switch fe.ProxyProtocol {
	case "v1":
		opts += " send-proxy"
	case "v2":
		opts += " send-proxy-v2"
	}
	return opts
}

// runtimeCommand sends one command to the runtime API (the stats socket)
// and checks its answer: "add server" and "del server" say so on success,
// the other commands answer nothing.
func runtimeCommand(ctx context.Context, sock, cmd string) error {
	out, err := masterCommand(ctx, sock, cmd)
	if err != nil {
		return err
	}
	out = strings.TrimSpace(out)
	var want string
	switch {
	case strings.HasPrefix(cmd, "add server "):
		want = "New server registered."
	case strings.HasPrefix(cmd, "del server "):
		want = "Server deleted."
	}
	if out != want {
		return fmt.Errorf("runtime API %q: %s", cmd, out)
	}
	return nil
}
