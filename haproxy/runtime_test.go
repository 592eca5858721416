package haproxy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drawbridge-lb/drawbridge/internal/procfs"
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
	cfg := runtimeConfig(t, dir)
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
	if v := testenv.MetricValue(t, reg, "drawbridge_haproxy_runtime_updates_total"); v != 2 {
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

func TestReadAnswers(t *testing.T) {
	add := "add server be_1/s_a 10.0.0.1:80"
	enable := "enable server be_1/s_a"
	maint := "set server be_1/s_b state maint"
	del := "del server be_1/s_b"
	del2 := "del server be_1/s_c"
	busyAnswer := "Server still has connections attached to it, cannot remove it.\n"
	for _, tc := range []struct {
		name    string
		cmds    []string
		out     string
		busy    []string
		wantErr string
	}{
		{name: "all applied", cmds: []string{add, enable, maint, del},
			out: "New server registered.\n\n" + "\n" + "\n" + "Server deleted.\n"},
		{name: "a busy server is left for a retry", cmds: []string{add, maint, del, del2, enable},
			out:  "New server registered.\n\n" + "\n" + busyAnswer + "Server deleted.\n" + "\n",
			busy: []string{del}},
		{name: "two busy servers", cmds: []string{del, del2}, out: busyAnswer + busyAnswer, busy: []string{del, del2}},
		{name: "a refused add", cmds: []string{add, enable}, out: "Already exists a server with the same name in backend.\n\n\n",
			wantErr: "add server be_1/s_a"},
		{name: "a del refused for another reason", cmds: []string{del}, out: "Only servers in maintenance mode can be deleted.\n",
			wantErr: "maintenance mode"},
		{name: "an unknown server", cmds: []string{maint}, out: "No such server.\n\n", wantErr: "No such server"},
		{name: "an answer cut short", cmds: []string{add, enable}, out: "New server registered.\n\n", wantErr: "enable server"},
		{name: "more than asked for", cmds: []string{enable}, out: "\nUnknown command\n", wantErr: "unexpected answer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			busy, err := readAnswers(tc.cmds, tc.out)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(busy, tc.busy) {
				t.Fatalf("got %q %v, want %q", busy, err, tc.busy)
			}
		})
	}
}

func TestBatchRuntimeSplitsLongLines(t *testing.T) {
	var cmds []string
	for i := 0; i < 400; i++ {
		cmds = append(cmds, "enable server be_8080/s_10_0_0_"+itoa(i)+"_80")
	}
	lines := batchRuntime(cmds)
	if len(lines) < 2 {
		t.Fatalf("%d commands in %d line(s)", len(cmds), len(lines))
	}
	var again []string
	for _, l := range lines {
		if len(l.text) > maxRuntimeLine || l.text != strings.Join(l.cmds, ";") {
			t.Fatalf("line of %d bytes does not join its %d commands", len(l.text), len(l.cmds))
		}
		again = append(again, l.cmds...)
	}
	if !slices.Equal(again, cmds) {
		t.Fatal("the lines do not carry the commands in order")
	}
}

// TestRuntimeBusyServerDeletedAfterItsConnections pins HAProxy's answer to
// deleting a server that still has a connection, and shows the Manager
// replacing such a server through the runtime API: the connection is shut
// down, the server deleted once it is gone, and no reload happens.
func TestRuntimeBusyServerDeletedAfterItsConnections(t *testing.T) {
	dir := t.TempDir()
	cfg := runtimeConfig(t, dir)
	sock := cfg.Settings.StatsSocket
	m := startManager(t, cfg)
	held := greetBackend(t, "hold", true)
	port := testenv.FreePort(t)
	m.Submit(1, []Frontend{route(port, "web", held)})
	waitApplied(t, m, 1)

	// HAProxy's own answer, while the connection is open.
	longLived(t, port)
	name := "be_" + itoa(port) + "/" + serverName(Server{Address: "127.0.0.1", Port: held})
	cmds := []string{"set server " + name + " state maint", "del server " + name, "set server " + name + " state ready"}
	line := batchRuntime(cmds)[0]
	out, err := masterCommand(t.Context(), sock, line.text)
	if err != nil {
		t.Fatal(err)
	}
	busy, err := readAnswers(line.cmds, out)
	if err != nil || !slices.Equal(busy, cmds[1:2]) {
		t.Fatalf("answer %q read as busy %q, %v", out, busy, err)
	}

	// The Manager replaces the busy server without a reload.
	c := longLived(t, port)
	reloads := m.Status().Reloads
	other := echoBackend(t, "other")
	m.Submit(2, []Frontend{route(port, "web", other)})
	waitApplied(t, m, 2)
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("the replaced server's connection is still open")
	}
	if got, err := dialRead(port); err != nil || got != "other" {
		t.Fatalf("after the replacement: %q %v", got, err)
	}
	out, err = masterCommand(t.Context(), sock, "show servers state be_"+itoa(port))
	if err != nil || strings.Contains(out, itoa(held)) || !strings.Contains(out, itoa(other)) {
		t.Fatalf("servers after the replacement: %q %v", out, err)
	}
	if st := m.Status(); st.Reloads != reloads || st.RuntimeUpdates == 0 {
		t.Errorf("replacing a busy server: reloads %d -> %d, %d runtime updates", reloads, st.Reloads, st.RuntimeUpdates)
	}
}

// BenchmarkRuntimeReplaceServer replaces the one server of each of 1 or 40
// routes through the runtime API per iteration (one change alone, or a
// burst coalesced into one update), and reports the CPU the HAProxy worker
// and this process spend per replaced server, three ways:
// "oneshot-del-alone" is the path before `del server` joined the request
// lines (a connection per line, and one per deleted server),
// "oneshot-in-line" a connection per line, "kept-open" what applyRuntime
// does now.
func BenchmarkRuntimeReplaceServer(b *testing.B) {
	for _, bc := range []struct {
		mode   string
		routes int
	}{
		{"oneshot-del-alone", 1}, {"oneshot-in-line", 1}, {"kept-open", 1},
		{"oneshot-del-alone", 40}, {"oneshot-in-line", 40}, {"kept-open", 40},
	} {
		mode, routes := bc.mode, bc.routes
		b.Run(fmt.Sprintf("%s/routes-%d", mode, routes), func(b *testing.B) {
			dir := b.TempDir()
			cfg := runtimeConfig(b, dir)
			sock := cfg.Settings.StatsSocket
			m := startManager(b, cfg)
			fes := make([]Frontend, routes)
			for i := range fes {
				fes[i] = route(testenv.FreePort(b), "r"+itoa(i), 10000+i)
			}
			m.Submit(1, fes)
			waitApplied(b, m, 1)
			pi, err := showProc(b.Context(), filepath.Join(dir, "master.sock"))
			if err != nil || len(pi.Workers) != 1 {
				b.Fatalf("show proc: %+v %v", pi, err)
			}
			worker := pi.Workers[0].PID
			m.Close() // the loop stays out of the way; HAProxy keeps running
			oneshot := func(ctx context.Context, cmds []string) error {
				for _, line := range batchRuntime(cmds) {
					out, err := masterCommand(ctx, sock, line.text)
					if err != nil {
						return err
					}
					if busy, err := readAnswers(line.cmds, out); err != nil || len(busy) > 0 {
						return fmt.Errorf("%q: %v %v", out, busy, err)
					}
				}
				return nil
			}
			apply := m.applyRuntime
			switch mode {
			case "oneshot-in-line":
				apply = oneshot
			case "oneshot-del-alone":
				apply = func(ctx context.Context, cmds []string) error {
					start := 0
					for i, c := range cmds {
						if !strings.HasPrefix(c, "del server ") {
							continue
						}
						if err := oneshot(ctx, cmds[start:i+1]); err != nil {
							return err
						}
						start = i + 1
					}
					return oneshot(ctx, cmds[start:])
				}
			}
			w0, _ := procfs.CPUTime(worker)
			s0, _ := procfs.CPUTime(os.Getpid())
			next := 20000
			n := 0
			for b.Loop() {
				running := fes
				fes = slices.Clone(fes)
				for i := range fes {
					fes[i].Servers = []Server{{Address: "10.99.0.1", Port: next}}
					next = 20000 + (next-20000+1)%40000
				}
				cmds, ok := planServerChanges(cfg.Settings, running, fes)
				if !ok {
					b.Fatal("not a runtime change")
				}
				if err := apply(b.Context(), cmds); err != nil {
					b.Fatal(err)
				}
				n += routes
			}
			w1, _ := procfs.CPUTime(worker)
			s1, _ := procfs.CPUTime(os.Getpid())
			b.ReportMetric(float64((w1-w0).Microseconds())/float64(n), "haproxy-cpu-us/server")
			b.ReportMetric(float64((s1-s0).Microseconds())/float64(n), "agent-cpu-us/server")
		})
	}
}
