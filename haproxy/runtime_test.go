package haproxy

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

func TestPlanServerChanges(t *testing.T) {
	s := Settings{CheckInterval: 2 * time.Second}
	base := func() Frontend {
		return Frontend{Port: 8080, Name: "web", Balance: "roundrobin", HealthCheck: true,
			Servers: []Server{{Address: "10.0.0.1", Port: 80}}}
	}
	with := func(f func(*Frontend)) []Frontend { fe := base(); f(&fe); return []Frontend{fe} }
	for _, tc := range []struct {
		name    string
		running []Frontend
		next    []Frontend
		ok      bool
		cmds    []string
	}{
		{name: "nothing known about the running worker", running: nil, next: []Frontend{base()}},
		{name: "a new frontend", running: []Frontend{base()}, next: append([]Frontend{base()}, Frontend{Port: 9090, Name: "x"})},
		{name: "renamed", running: []Frontend{base()}, next: with(func(f *Frontend) { f.Name = "other" })},
		{name: "balance changed", running: []Frontend{base()}, next: with(func(f *Frontend) { f.Balance = "leastconn" })},
		{name: "sticky changed", running: []Frontend{base()}, next: with(func(f *Frontend) { f.Sticky = true })},
		{name: "proxy protocol changed", running: []Frontend{base()}, next: with(func(f *Frontend) { f.ProxyProtocol = "v2" })},
		{name: "checks changed", running: []Frontend{base()}, next: with(func(f *Frontend) { f.HealthCheck = false })},
		{name: "hash balance cannot take dynamic servers", running: with(func(f *Frontend) { f.Balance = "source" }),
			next: with(func(f *Frontend) {
				f.Balance = "source"
				f.Servers = append(f.Servers, Server{Address: "10.0.0.2", Port: 80})
			})},
		{name: "unchanged", running: []Frontend{base()}, next: []Frontend{base()}, ok: true},
		{name: "empty balance means roundrobin", running: []Frontend{base()}, next: with(func(f *Frontend) { f.Balance = "" }), ok: true},
		{name: "add a server", running: []Frontend{base()}, next: with(func(f *Frontend) {
			f.Servers = append(f.Servers, Server{Address: "2001:db8::5", Port: 8443})
		}), ok: true, cmds: []string{
			"add server be_8080/s_2001_db8__5_8443 [2001:db8::5]:8443 check inter 2s",
			"enable server be_8080/s_2001_db8__5_8443",
			"enable health be_8080/s_2001_db8__5_8443",
		}},
		{name: "replace a server: add first, then delete", running: []Frontend{base()}, next: with(func(f *Frontend) {
			f.Servers = []Server{{Address: "10.0.0.9", Port: 80}}
			f.HealthCheck = true
		}), ok: true, cmds: []string{
			"add server be_8080/s_10_0_0_9_80 10.0.0.9:80 check inter 2s",
			"enable server be_8080/s_10_0_0_9_80",
			"enable health be_8080/s_10_0_0_9_80",
			"set server be_8080/s_10_0_0_1_80 state maint",
			"shutdown sessions server be_8080/s_10_0_0_1_80",
			"del server be_8080/s_10_0_0_1_80",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmds, ok := planServerChanges(s, tc.running, tc.next)
			if ok != tc.ok || !slices.Equal(cmds, tc.cmds) {
				t.Errorf("got %v %q\nwant %v %q", ok, cmds, tc.ok, tc.cmds)
			}
		})
	}
}

// TestManagerServerChangesWithoutReload: adding and removing backends of an
// existing route goes through the runtime API: no reload, the same worker
// keeps serving (so its long-lived connections are untouched), the file on
// disk agrees, and traffic reaches exactly the new set of servers.
func TestManagerServerChangesWithoutReload(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.Settings.StatsSocket = filepath.Join(dir, "admin.sock")
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	m := startManager(t, cfg)

	one := echoBackend(t, "one")
	two := echoBackend(t, "two")
	port := testenv.FreePort(t)
	m.Submit(1, []Frontend{route(port, "web", one)})
	waitApplied(t, m, 1)
	reloads := m.Status().Reloads
	before, err := showProc(t.Context(), filepath.Join(dir, "master.sock"))
	if err != nil {
		t.Fatal(err)
	}

	m.Submit(2, []Frontend{route(port, "web", one, two)})
	waitApplied(t, m, 2)
	if got := m.Status().Reloads; got != reloads {
		t.Fatalf("adding a server reloaded HAProxy (%d -> %d reloads)", reloads, got)
	}
	seen := map[string]bool{}
	for i := 0; i < 20 && len(seen) < 2; i++ {
		if got, err := dialRead(port); err == nil {
			seen[got] = true
		}
	}
	if !seen["one"] || !seen["two"] {
		t.Fatalf("after adding a server, answers from %v", seen)
	}

	m.Submit(3, []Frontend{route(port, "web", two)})
	waitApplied(t, m, 3)
	for i := 0; i < 10; i++ {
		if got, err := dialRead(port); err != nil || got != "two" {
			t.Fatalf("after removing a server: %q %v", got, err)
		}
	}
	st := m.Status()
	if st.Reloads != reloads {
		t.Errorf("server changes reloaded HAProxy (%d -> %d reloads)", reloads, st.Reloads)
	}
	if v := metricValue(t, reg, "drawbridge_haproxy_runtime_updates_total"); v != 2 {
		t.Errorf("runtime updates = %v, want 2", v)
	}
	// The master never re-executed and the same single worker serves.
	after, err := showProc(t.Context(), filepath.Join(dir, "master.sock"))
	if err != nil || after.Reloads != before.Reloads || len(after.Workers) != 1 ||
		len(before.Workers) != 1 || after.Workers[0].PID != before.Workers[0].PID {
		t.Errorf("worker changed: before %+v, after %+v (%v)", before, after, err)
	}
	// The file on disk catches up with what runs, for the next reload or
	// restart, without holding the change back.
	var data []byte
	testenv.Eventually(t, 10*time.Second, "haproxy.cfg to match the running servers", func() bool {
		data, err = os.ReadFile(filepath.Join(dir, "haproxy.cfg"))
		return err == nil && strings.Contains(string(data), itoa(two)) && !strings.Contains(string(data), ":"+itoa(one)+"\n") &&
			m.Status().ConfigHash == Hash(data)
	})
	if _, err := os.Stat(filepath.Join(dir, "runtime.pending")); !os.IsNotExist(err) {
		t.Errorf("runtime.pending left after the files caught up: %v", err)
	}
}
