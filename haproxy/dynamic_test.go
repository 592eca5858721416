package haproxy

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drawbridge-lb/drawbridge/internal/procfs"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

func TestParsePortRange(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want PortRange
		err  bool
	}{
		{in: "", want: PortRange{}},
		{in: "30000-32767", want: PortRange{30000, 32767}},
		{in: " 31000 - 31099 ", want: PortRange{31000, 31099}},
		{in: "31000", want: PortRange{31000, 31000}},
		{in: "32767-30000", err: true},
		{in: "0-10", err: true},
		{in: "1-65536", err: true},
		{in: "1-20000", err: true}, // more listeners than MaxDynamicPorts
		{in: "a-b", err: true},
		{in: "30000-", err: true},
		{in: "30000-31000-32000", err: true},
	} {
		got, err := ParsePortRange(tc.in)
		if (err != nil) != tc.err || (!tc.err && got != tc.want) {
			t.Errorf("ParsePortRange(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestBindRanges(t *testing.T) {
	r := PortRange{100, 110}
	for _, tc := range []struct {
		holes []int
		want  string
	}{
		{nil, ":100-110"},
		{[]int{100}, ":101-110"},
		{[]int{110}, ":100-109"},
		{[]int{105}, ":100-104,:106-110"},
		{[]int{101, 102, 109}, ":100,:103-108,:110"},
		{[]int{50, 200}, ":100-110"},
	} {
		if got := bindRanges("", r, tc.holes); got != tc.want {
			t.Errorf("holes %v: %q, want %q", tc.holes, got, tc.want)
		}
	}
	all := make([]int, 0, 11)
	for p := 100; p <= 110; p++ {
		all = append(all, p)
	}
	if got := bindRanges("", r, all); got != "" {
		t.Errorf("every port a hole: %q", got)
	}
	if got := boundPorts([]byte("    bind 127.0.0.1:100,127.0.0.1:103-105\n")); countPorts(got) != 4 || !got.has(100) || !got.has(104) || got.has(101) {
		t.Errorf("boundPorts of a range: %d ports", countPorts(got))
	}
}

// countPorts counts the ports in s.
func countPorts(s *portSet) int {
	n := 0
	for p := 0; p <= 65536; p++ {
		if s.has(p) {
			n++
		}
	}
	return n
}

func TestPortSet(t *testing.T) {
	var s portSet
	for _, p := range []int{1, 63, 64, 65535} {
		s.add(p)
	}
	s.add(0)
	s.add(65536)
	s.add(-1)
	if countPorts(&s) != 4 || !s.has(1) || !s.has(63) || !s.has(64) || !s.has(65535) || s.has(2) || s.has(0) || s.has(65536) {
		t.Fatalf("after adding 1, 63, 64, 65535 and three out of range: %d ports", countPorts(&s))
	}
	s.del(64)
	s.del(70000)
	if s.has(64) || !s.has(63) || countPorts(&s) != 3 {
		t.Fatalf("after deleting 64: %d ports", countPorts(&s))
	}
}

// dynSettings is a dynamic range of 100 ports from 31000 for pure tests.
func dynSettings() Settings {
	return Settings{DynamicPorts: PortRange{31000, 31099}, MapFile: "/run/drawbridge/dynamic.map", CheckInterval: 2 * time.Second}.WithDefaults()
}

func TestRenderDynamicPassesCheck(t *testing.T) {
	s := dynSettings()
	fes := []Frontend{
		{Port: 8080, Name: "static", Servers: []Server{{"10.0.0.1", 80}}},
		{Port: 31005, Name: "dyn", Sticky: true, HealthCheck: true, Servers: []Server{{"10.0.0.2", 80}, {"10.0.0.1", 80}}},
		{Port: 31006, Name: "src", Balance: "source", ProxyProtocol: "v2", Servers: []Server{{"2001:db8::1", 443}}},
		{Port: 31007, Name: "local", HealthCheck: true, CheckPort: 31500, CheckHTTP: true, Servers: []Server{{"10.0.0.3", 30080}}},
	}
	r, err := RenderAll(s, fes)
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(r.Config)
	for _, want := range []string{
		"frontend fe_8080\n",
		"frontend fe_dynamic\n",
		"    bind :31000-31099\n",
		"    tcp-request connection reject unless { dst_port,map_int(/run/drawbridge/dynamic.map) -m found }\n",
		"    use_backend %[dst_port,map_int(/run/drawbridge/dynamic.map)]\n",
		"backend dyn_roundrobin_sticky_0\n    # route dyn port 31005\n",
		"backend dyn_source_0\n    # route src port 31006\n    balance source\n    hash-type consistent\n",
		"    server s_10_0_0_1_80 10.0.0.1:80 check inter 2s\n",
		"backend dyn_roundrobin_httpchk_0\n    # route local port 31007\n    balance roundrobin\n    option httpchk GET /healthz\n    http-check expect status 200\n" +
			"    server s_10_0_0_3_30080 10.0.0.3:30080 check inter 2s port 31500\n",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("missing %q in\n%s", want, cfg)
		}
	}
	if strings.Contains(cfg, "fe_31005") {
		t.Errorf("a route in the dynamic range got its own frontend:\n%s", cfg)
	}
	if want := "31005 dyn_roundrobin_sticky_0\n31006 dyn_source_0\n31007 dyn_roundrobin_httpchk_0\n"; string(r.Map) != want {
		t.Errorf("map %q, want %q", r.Map, want)
	}
	again, _ := RenderAll(s, []Frontend{fes[2], fes[3], fes[0], fes[1]})
	if again.Hash() != r.Hash() {
		t.Error("render depends on input order")
	}
	// HAProxy accepts it, map file included.
	dir := t.TempDir()
	s.MapFile = filepath.Join(dir, "dynamic.map")
	r, _ = RenderAll(s, fes)
	if err := os.WriteFile(s.MapFile, r.Map, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkConfig(t, r.Config); err != nil {
		t.Fatal(err)
	}
	// Holes are left out of the bind line, and routes on them with them.
	r2, _, _ := render(s, fes, nil, []int{31006})
	if !strings.Contains(string(r2.Config), "bind :31000-31005,:31007-31099\n") || strings.Contains(string(r2.Map), "31006") {
		t.Errorf("holes not respected:\n%s\n%s", r2.Config, r2.Map)
	}
	if err := checkConfig(t, r2.Config); err != nil {
		t.Fatal(err)
	}
	// A bad map path disables the range instead of reaching the file.
	s.MapFile = "/tmp/x map"
	if _, err := RenderAll(s, fes); err == nil {
		t.Error("map path with a space accepted")
	}
}

func TestPlanRuntimeDynamic(t *testing.T) {
	s := dynSettings()
	web := Frontend{Port: 31005, Name: "web", Balance: "roundrobin", Sticky: true, HealthCheck: true, Servers: []Server{{"10.0.0.1", 80}}}
	static := Frontend{Port: 8080, Name: "static", Balance: "roundrobin", Servers: []Server{{"10.0.0.9", 80}}}
	served := &portSet{}
	served.add(8080)
	for p := 31000; p <= 31099; p++ {
		served.add(p)
	}
	base := []Frontend{static, web}
	_, lay, _ := render(s, base, nil, nil)
	m := s.MapFile
	with := func(f func(*Frontend)) []Frontend {
		fe := web
		fe.Servers = slices.Clone(web.Servers)
		f(&fe)
		return []Frontend{static, fe}
	}
	for _, tc := range []struct {
		name string
		next []Frontend
		ok   bool
		cmds []string
	}{
		{name: "unchanged", next: base, ok: true},
		{name: "renamed: the comment only", next: with(func(f *Frontend) { f.Name = "other" }), ok: true},
		{name: "a route added in the range", ok: true,
			next: append(slices.Clone(base), Frontend{Port: 31006, Name: "new", Balance: "roundrobin", Sticky: true, Servers: []Server{{"10.0.0.2", 81}}}),
			cmds: []string{
				"add server dyn_roundrobin_sticky_1/s_10_0_0_2_81 10.0.0.2:81", "enable server dyn_roundrobin_sticky_1/s_10_0_0_2_81",
				"add map " + m + " 31006 dyn_roundrobin_sticky_1",
			}},
		{name: "the route removed", next: []Frontend{static}, ok: true, cmds: []string{
			"del map " + m + " 31005",
			"set server dyn_roundrobin_sticky_0/s_10_0_0_1_80 state maint",
			"shutdown sessions server dyn_roundrobin_sticky_0/s_10_0_0_1_80",
			"del server dyn_roundrobin_sticky_0/s_10_0_0_1_80",
			"clear table dyn_roundrobin_sticky_0",
		}},
		{name: "a backend replaced", ok: true, next: with(func(f *Frontend) { f.Servers = []Server{{"10.0.0.3", 80}} }), cmds: []string{
			"add server dyn_roundrobin_sticky_0/s_10_0_0_3_80 10.0.0.3:80 check inter 2s",
			"enable server dyn_roundrobin_sticky_0/s_10_0_0_3_80",
			"enable health dyn_roundrobin_sticky_0/s_10_0_0_3_80",
			"set server dyn_roundrobin_sticky_0/s_10_0_0_1_80 state maint",
			"shutdown sessions server dyn_roundrobin_sticky_0/s_10_0_0_1_80",
			"del server dyn_roundrobin_sticky_0/s_10_0_0_1_80",
		}},
		{name: "balance changed: moved to a free slot of the new class", ok: true,
			next: with(func(f *Frontend) { f.Balance = "leastconn"; f.Sticky = false }), cmds: []string{
				"add server dyn_leastconn_0/s_10_0_0_1_80 10.0.0.1:80 check inter 2s",
				"enable server dyn_leastconn_0/s_10_0_0_1_80",
				"enable health dyn_leastconn_0/s_10_0_0_1_80",
				"set map " + m + " 31005 dyn_leastconn_0",
				"set server dyn_roundrobin_sticky_0/s_10_0_0_1_80 state maint",
				"shutdown sessions server dyn_roundrobin_sticky_0/s_10_0_0_1_80",
				"del server dyn_roundrobin_sticky_0/s_10_0_0_1_80",
				"clear table dyn_roundrobin_sticky_0",
			}},
		{name: "a static route added needs a reload",
			next: append(slices.Clone(base), Frontend{Port: 9090, Name: "x", Servers: []Server{{"10.0.0.2", 81}}})},
		{name: "a static backend changed", ok: true, next: []Frontend{{Port: 8080, Name: "static", Balance: "roundrobin", Servers: []Server{{"10.0.0.8", 80}}}, web},
			cmds: []string{
				"add server be_8080/s_10_0_0_8_80 10.0.0.8:80", "enable server be_8080/s_10_0_0_8_80",
				"set server be_8080/s_10_0_0_9_80 state maint", "shutdown sessions server be_8080/s_10_0_0_9_80", "del server be_8080/s_10_0_0_9_80",
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, ok := planRuntime(s, base, lay, tc.next, served)
			if ok != tc.ok || !slices.Equal(p.cmds, tc.cmds) {
				t.Errorf("got %v %q\nwant %v %q", ok, p.cmds, tc.ok, tc.cmds)
			}
		})
	}

	t.Run("a port the worker does not bind", func(t *testing.T) {
		next := append(slices.Clone(base), Frontend{Port: 31050, Name: "hole", Servers: []Server{{"10.0.0.2", 81}}})
		notServed := &portSet{}
		notServed.add(8080)
		notServed.add(31005)
		if _, ok := planRuntime(s, base, lay, next, notServed); ok {
			t.Error("planned a route on a port the worker does not bind")
		}
	})
	t.Run("slots run out: reload", func(t *testing.T) {
		// Class "first" has minFreeIdle slots; one more route of it needs a reload.
		next := slices.Clone(base)
		for i := 0; i < minFreeIdle; i++ {
			next = append(next, Frontend{Port: 31010 + i, Name: "f", Balance: "first", Servers: []Server{{"10.0.0.2", 81}}})
		}
		if _, ok := planRuntime(s, base, lay, next, served); !ok {
			t.Fatal("free slots not used")
		}
		next = append(next, Frontend{Port: 31090, Name: "f", Balance: "first", Servers: []Server{{"10.0.0.2", 81}}})
		if _, ok := planRuntime(s, base, lay, next, served); ok {
			t.Fatal("planned more routes than free slots")
		}
		// The reload's render leaves headroom again.
		_, lay2, _ := render(s, next, nil, nil)
		if got := lay2.Pool["first"]; got != minFreeIdle+1+minFreeInUse {
			t.Errorf("pool of class first after reload = %d", got)
		}
	})
	t.Run("other settings than the layout's", func(t *testing.T) {
		s2 := s
		s2.CheckInterval = time.Second
		if _, ok := planRuntime(s2, base, lay, base, served); ok {
			t.Error("layout of other settings used")
		}
	})
	t.Run("a slot freed is not reused in the same plan", func(t *testing.T) {
		next := []Frontend{static, {Port: 31007, Name: "b", Balance: "roundrobin", Sticky: true, Servers: []Server{{"10.0.0.2", 81}}}}
		p, ok := planRuntime(s, base, lay, next, served)
		if !ok || p.layout.Ports[31007] == lay.Ports[31005] {
			t.Errorf("ok %v, slot %d reused: %q", ok, p.layout.Ports[31007], p.cmds)
		}
	})
}

// freeRange finds n consecutive ports on 127.0.0.1, below the ephemeral
// range, that can be bound now.
func freeRange(t *testing.T, n int) PortRange {
	t.Helper()
	first := testenv.FreePortRange(t, n)
	return PortRange{first, first + n - 1}
}

// dynConfig is testConfig with a runtime API and a dynamic range of n ports.
func dynConfig(t *testing.T, dir string, n int) Config {
	cfg := runtimeConfig(t, dir)
	cfg.Settings.DynamicPorts = freeRange(t, n)
	return cfg
}

// refused reports whether a connection to port is refused or closed
// without a greeting.
func refused(port int) bool {
	_, err := dialRead(port)
	return err != nil
}

// TestManagerDynamicRoutesWithoutReload is the reload-free path against a
// real HAProxy: routes in the range are added, changed (servers, balance,
// checks) and removed with no reload and the same worker; their neighbours
// are refused; slots that run out are added by one reload; and the files
// catch up so a reload renders exactly what the runtime API built.
func TestManagerDynamicRoutesWithoutReload(t *testing.T) {
	dir := t.TempDir()
	cfg := dynConfig(t, dir, 20)
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	m := startManager(t, cfg)
	r := cfg.Settings.DynamicPorts
	one, two := echoBackend(t, "one"), echoBackend(t, "two")
	p1, p2, p3 := r.First+3, r.First+4, r.First+10
	pidBefore := workerPIDs(t, dir)

	dyn := func(port int, name string, f func(*Frontend), backends ...int) Frontend {
		fe := route(port, name, backends...)
		fe.Sticky, fe.HealthCheck = true, true
		if f != nil {
			f(&fe)
		}
		return fe
	}
	idx := uint64(0)
	submit := func(fes ...Frontend) {
		t.Helper()
		idx++
		m.Submit(idx, fes)
		waitApplied(t, m, idx)
		if st := m.Status(); st.Reloads != 0 {
			t.Fatalf("index %d reloaded HAProxy: %+v", idx, st)
		}
	}
	expect := func(port int, want string) {
		t.Helper()
		if got, err := dialRead(port); err != nil || got != want {
			t.Fatalf("port %d: %q, %v; want %q", port, got, err, want)
		}
	}

	submit(dyn(p1, "a", nil, one))
	expect(p1, "one")
	for _, p := range []int{p1 - 1, p1 + 1, r.Last} {
		if !refused(p) {
			t.Fatalf("neighbour port %d of the route answers", p)
		}
	}
	submit(dyn(p1, "a", nil, two), dyn(p2, "b", func(f *Frontend) { f.Balance, f.Sticky = "leastconn", false }, one))
	expect(p1, "two")
	expect(p2, "one")
	// Checks off and PROXY-less: a move to another slot, still no reload.
	submit(dyn(p1, "a", func(f *Frontend) { f.HealthCheck = false }, two), dyn(p2, "b", func(f *Frontend) { f.Balance, f.Sticky = "leastconn", false }, one))
	expect(p1, "two")
	submit(dyn(p2, "b", func(f *Frontend) { f.Balance, f.Sticky = "leastconn", false }, one))
	if !refused(p1) {
		t.Fatal("removed route still answers")
	}
	expect(p2, "one")
	if got := workerPIDs(t, dir); !slices.Equal(got, pidBefore) {
		t.Fatalf("workers changed without a reload: %v -> %v", pidBefore, got)
	}
	if v := testenv.MetricValue(t, reg, "drawbridge_haproxy_runtime_updates_total"); v != 4 {
		t.Errorf("runtime updates = %v, want 4", v)
	}

	// More routes of an idle class than it has free slots: one reload adds
	// slots, and every route, runtime-built or not, answers after it.
	fes := []Frontend{dyn(p2, "b", func(f *Frontend) { f.Balance, f.Sticky = "leastconn", false }, one)}
	for i := 0; i <= minFreeIdle; i++ {
		fes = append(fes, dyn(p3+i, "f"+strconv.Itoa(i), func(f *Frontend) { f.Balance = "first" }, two))
	}
	idx++
	m.Submit(idx, fes)
	waitApplied(t, m, idx)
	if st := m.Status(); st.Reloads != 1 {
		t.Fatalf("slots ran out: %d reloads, want 1", st.Reloads)
	}
	expect(p2, "one")
	for i := 0; i <= minFreeIdle; i++ {
		expect(p3+i, "two")
	}
	// And the next route of that class takes a slot without a reload.
	fes = append(fes, dyn(p3+minFreeIdle+1, "g", func(f *Frontend) { f.Balance = "first" }, one))
	idx++
	m.Submit(idx, fes)
	waitApplied(t, m, idx)
	if st := m.Status(); st.Reloads != 1 {
		t.Fatalf("a route after the reload reloaded: %d reloads", st.Reloads)
	}
	expect(p3+minFreeIdle+1, "one")

	// The files catch up: haproxy.cfg and the map hold the runtime-built
	// route, and the state file matches them.
	testenv.Eventually(t, 10*time.Second, "files to catch up", func() bool {
		mp, _ := os.ReadFile(filepath.Join(dir, "dynamic.map"))
		_, err := os.Stat(filepath.Join(dir, "runtime.pending"))
		return strings.Contains(string(mp), strconv.Itoa(p3+minFreeIdle+1)+" dyn_first_") && os.IsNotExist(err)
	})
}

// workerPIDs lists the workers of the master running from dir.
func workerPIDs(t *testing.T, dir string) []int {
	t.Helper()
	p, err := showProc(context.Background(), filepath.Join(dir, "master.sock"))
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, w := range p.Workers {
		out = append(out, w.PID)
	}
	slices.Sort(out)
	return out
}

// TestManagerDynamicStateSurvives: what the runtime API built survives a
// reload (caused by a route outside the range), a restart of a dead master,
// and adoption by a new manager, which keeps changing routes without a
// reload. A manager that adopts a master whose files are behind its worker
// (runtime.pending) reloads on its next change and loses nothing.
func TestManagerDynamicStateSurvives(t *testing.T) {
	dir := t.TempDir()
	cfg := dynConfig(t, dir, 10)
	r := cfg.Settings.DynamicPorts
	m := startManager(t, cfg)
	one, two := echoBackend(t, "one"), echoBackend(t, "two")
	in1, in2, in3 := r.First, r.First+1, r.First+2
	out := testenv.FreePort(t)
	fes := []Frontend{route(in1, "a", one), route(in2, "b", two)}
	m.Submit(1, fes)
	waitApplied(t, m, 1)
	if st := m.Status(); st.Reloads != 0 {
		t.Fatalf("routes in the range reloaded: %+v", st)
	}
	check := func(what string) {
		t.Helper()
		for port, want := range map[int]string{in1: "one", in2: "two"} {
			if got, err := dialRead(port); err != nil || got != want {
				t.Fatalf("%s: port %d: %q, %v", what, port, got, err)
			}
		}
	}

	// A route outside the range reloads; the runtime-built routes stay.
	fes = append(fes, route(out, "static", one))
	m.Submit(2, fes)
	waitApplied(t, m, 2)
	if st := m.Status(); st.Reloads != 1 {
		t.Fatalf("a route outside the range: %d reloads, want 1", st.Reloads)
	}
	check("after a reload")

	// Runtime change, then the master dies once the files caught up.
	fes = append(fes, route(in3, "c", two))
	m.Submit(3, fes)
	waitApplied(t, m, 3)
	pending := filepath.Join(dir, "runtime.pending")
	testenv.Eventually(t, 10*time.Second, "files to catch up", func() bool {
		_, err := os.Stat(pending)
		return os.IsNotExist(err)
	})
	pid := m.Status().MasterPID
	for _, p := range append([]int{pid}, procfs.Children(pid)...) {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	testenv.Eventually(t, 10*time.Second, "master restart", func() bool {
		st := m.Status()
		return st.Running && st.Restarts >= 1 && st.MasterPID != pid
	})
	check("after a restart")
	if got, err := dialRead(in3); err != nil || got != "two" {
		t.Fatalf("runtime-built route after a restart: %q, %v", got, err)
	}
	reloads := m.Status().Reloads

	// Adoption: a new manager on the same directory keeps the worker and
	// keeps changing routes in the range without a reload.
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	m2 := startManager(t, cfg)
	if st := m2.Status(); !st.Adopted {
		t.Fatalf("not adopted: %+v", st)
	}
	fes = fes[1:] // drop in1
	m2.Submit(4, fes)
	waitApplied(t, m2, 4)
	if st := m2.Status(); st.Reloads != 0 {
		t.Fatalf("adopted manager reloaded for a change in the range: %+v (%d before)", st, reloads)
	}
	if !refused(in1) {
		t.Fatal("removed route answers after adoption")
	}

	// Adoption of a worker ahead of its files: the next change reloads and
	// renders the route table, so nothing is lost.
	if err := m2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pending, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	m3 := startManager(t, cfg)
	fes = append(fes, route(in1, "a", one))
	m3.Submit(5, fes)
	waitApplied(t, m3, 5)
	if st := m3.Status(); st.Reloads != 1 {
		t.Fatalf("adopting a worker ahead of its files: %d reloads, want 1", st.Reloads)
	}
	check("after adopting a worker ahead of its files")
	if _, err := os.Stat(pending); !os.IsNotExist(err) {
		t.Fatalf("runtime.pending after a reload: %v", err)
	}
}

// TestManagerDynamicRangeHole: a port of the range held by another process
// is left out of the bind line (the rest of the range is served) and a
// route on it is held back, not a failed reload.
func TestManagerDynamicRangeHole(t *testing.T) {
	dir := t.TempDir()
	cfg := dynConfig(t, dir, 10)
	r := cfg.Settings.DynamicPorts
	squatter, err := net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(r.First+5))
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	m := startManager(t, cfg)
	backend := echoBackend(t, "hole")
	m.Submit(1, []Frontend{route(r.First, "a", backend), route(r.First+5, "taken", backend)})
	waitServed(t, m, 1)
	st := m.Status()
	if len(st.FailedPorts) != 1 || st.FailedPorts[0].Port != r.First+5 || st.AppliedIndex != 0 {
		t.Fatalf("taken port in the range not held back (or counted as applied): %+v", st)
	}
	if got, err := dialRead(r.First); err != nil || got != "hole" {
		t.Fatalf("route beside the hole: %q, %v", got, err)
	}
	squatter.Close()
	testenv.Eventually(t, 10*time.Second, "the held-back route to come up", func() bool {
		return len(m.Status().FailedPorts) == 0
	})
	waitApplied(t, m, 1)
	if got, err := dialRead(r.First + 5); err != nil || got != "hole" {
		t.Fatalf("route on the freed port: %q, %v", got, err)
	}
}

// TestManagerDynamicRemoveWithHeldConnections: removing a route in the
// range, or one of its backends, while long-lived connections are open
// closes those connections and deletes the servers without a reload.
func TestManagerDynamicRemoveWithHeldConnections(t *testing.T) {
	dir := t.TempDir()
	cfg := dynConfig(t, dir, 5)
	r := cfg.Settings.DynamicPorts
	m := startManager(t, cfg)
	hold, other := holdBackend(t), holdBackend(t)
	m.Submit(1, []Frontend{route(r.First, "devices", hold), route(r.First+1, "more", hold, other)})
	waitApplied(t, m, 1)
	held := []net.Conn{longLived(t, r.First), longLived(t, r.First+1), longLived(t, r.First+1)}
	m.Submit(2, []Frontend{route(r.First+1, "more", other)})
	waitApplied(t, m, 2)
	if st := m.Status(); st.Reloads != 0 || st.LastError != "" {
		t.Fatalf("removal with connections open: %+v", st)
	}
	if !refused(r.First) {
		t.Fatal("removed route answers")
	}
	longLived(t, r.First+1) // served by the remaining backend
	_ = held[0].SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := held[0].Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("connection of a removed route still open: %v", err)
	}
}

// BenchmarkPlanRuntime10k plans one more backend on a table of 10,000
// routes in the dynamic range: the hot path of a server-only change.
func BenchmarkPlanRuntime10k(b *testing.B) {
	s := Settings{DynamicPorts: PortRange{20000, 30099}, MapFile: "/run/drawbridge/dynamic.map"}.WithDefaults()
	served := &portSet{}
	var fes []Frontend
	for p := 20000; p < 30000; p++ {
		served.add(p)
		fes = append(fes, Frontend{Port: p, Name: "r", Balance: "roundrobin", Sticky: true, Servers: []Server{{"10.0.0.1", 80}}})
	}
	_, lay, _ := render(s, fes, nil, nil)
	next := slices.Clone(fes)
	next[0].Servers = []Server{{"10.0.0.1", 80}, {"10.0.0.2", 80}}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if p, ok := planRuntime(s, fes, lay, next, served); !ok || len(p.cmds) != 2 {
			b.Fatalf("%v %q", ok, p.cmds)
		}
	}
}

// TestPlanRuntimeNoInjection: values that escaped the route table's
// validation never reach a runtime API command line, where ";" separates
// commands and a newline ends the request.
func TestPlanRuntimeNoInjection(t *testing.T) {
	s := dynSettings()
	served := &portSet{}
	for p := 31000; p <= 31099; p++ {
		served.add(p)
	}
	_, lay, _ := render(s, nil, nil, nil)
	for _, fe := range []Frontend{
		{Port: 31001, Name: "x", Servers: []Server{{"10.0.0.1;del server dyn_roundrobin_0/s", 80}}},
		{Port: 31002, Name: "x", Servers: []Server{{"10.0.0.1\nshutdown frontend fe_dynamic", 80}}},
		{Port: 31003, Name: "x", Servers: []Server{{"10.0.0.1", 0}, {"10.0.0.1", 70000}}},
		{Port: 31004, Name: "x;y", Servers: []Server{{"10.0.0.1", 80}}},
		{Port: 31005, Name: "x", Balance: "roundrobin;del map", Servers: []Server{{"10.0.0.1", 80}}},
		{Port: 31006, Name: "x", ProxyProtocol: "v3", Servers: []Server{{"10.0.0.1", 80}}},
	} {
		p, ok := planRuntime(s, []Frontend{}, lay, []Frontend{fe}, served)
		for _, c := range p.cmds {
			if strings.ContainsAny(c, ";\n") || strings.Contains(c, "shutdown frontend") {
				t.Errorf("%+v: command %q", fe, c)
			}
		}
		if ok && len(p.cmds) > 0 && strings.Contains(strings.Join(p.cmds, "|"), "add server") {
			t.Errorf("%+v: invalid server planned: %q", fe, p.cmds)
		}
	}
}

// SubmitShared hands over frontends without a copy: the agent's feed shares
// the frontends of unchanged routes between submissions. Through reloads,
// runtime server changes and routes added to and removed from the dynamic
// range on a real HAProxy, the Manager must never change a slice or a
// Servers array it was given.
func TestManagerNeverChangesSharedSubmissions(t *testing.T) {
	dir := t.TempDir()
	cfg := dynConfig(t, dir, 10)
	m := startManager(t, cfg)
	r := cfg.Settings.DynamicPorts
	one, two, three := echoBackend(t, "one"), echoBackend(t, "two"), echoBackend(t, "three")
	outside := testenv.FreePort(t)

	// Servers listed out of order, so anything sorting in place would show.
	web := route(outside, "web", three, one, two)
	web.HealthCheck = true
	dyn := route(r.First+2, "dyn", two, one)
	steps := [][]Frontend{
		{web},                                    // a reload
		{web, dyn},                               // a route in the range: runtime API
		{route(outside, "web", two, three), dyn}, // servers changed (del and add)
		{dyn},                                    // the route outside the range goes: a reload
		{},                                       // and the one inside: runtime API
		{web, dyn},                               // both back, sharing the first step's Servers
	}
	var given, copies [][]Frontend
	for i, fes := range steps {
		fes = slices.Clone(fes)
		given = append(given, fes)
		cp := make([]Frontend, len(fes))
		for j, fe := range fes {
			fe.Servers = slices.Clone(fe.Servers)
			cp[j] = fe
		}
		copies = append(copies, cp)
		m.SubmitShared(uint64(i+1), fes)
		waitApplied(t, m, uint64(i+1))
		for k := range given {
			if !reflect.DeepEqual(given[k], copies[k]) {
				t.Fatalf("after step %d the frontends of step %d changed:\n%+v\nwere\n%+v", i+1, k+1, given[k], copies[k])
			}
		}
	}
	if got, err := dialRead(r.First + 2); err != nil || (got != "one" && got != "two") {
		t.Fatalf("the dynamic route after the last step: %q, %v", got, err)
	}
	if st := m.Status(); st.RuntimeUpdates == 0 || st.Reloads < 2 {
		t.Fatalf("the steps did not take both paths: %+v", st)
	}
}
