package haproxy

import (
	"context"
	"encoding/csv"
	"errors"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// healthPort starts an HTTP server on 127.0.0.1 and one on 127.0.0.2, on
// the same port, answering GET with status ok and bad respectively: two
// "nodes" of a Service with externalTrafficPolicy Local, as kube-proxy's
// healthCheckNodePort answers on them. It returns the port and the paths
// requested on the first.
func healthPort(t *testing.T, ok, bad int) (int, func() []string) {
	t.Helper()
	var mu sync.Mutex
	var paths []string
	serve := func(l net.Listener, code int, record bool) {
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if record {
				mu.Lock()
				paths = append(paths, r.Method+" "+r.URL.Path)
				mu.Unlock()
			}
			w.WriteHeader(code)
		}), ReadHeaderTimeout: time.Second}
		go func() { _ = srv.Serve(l) }()
		t.Cleanup(func() { srv.Close() })
	}
	for try := 0; try < 50; try++ {
		l1, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l1.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp4", "127.0.0.2:"+strconv.Itoa(port))
		if err != nil {
			l1.Close()
			continue
		}
		serve(l1, ok, true)
		serve(l2, bad, false)
		return port, func() []string { mu.Lock(); defer mu.Unlock(); return slices.Clone(paths) }
	}
	t.Fatal("no port free on both 127.0.0.1 and 127.0.0.2")
	return 0, nil
}

// echoOn is echoBackend on a given loopback address.
func echoOn(t *testing.T, addr, reply string) int {
	t.Helper()
	l, err := net.Listen("tcp4", addr+":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte(reply + "\n"))
			c.Close()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

// serverStatus reads `show stat` from the runtime API: server name ->
// status (UP, DOWN, ...) for backend be.
func serverStatus(sock, be string) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	out, err := masterCommand(ctx, sock, "show stat")
	if err != nil {
		return nil, err
	}
	recs, err := csv.NewReader(strings.NewReader(strings.TrimPrefix(out, "# "))).ReadAll()
	if err != nil || len(recs) == 0 {
		return nil, errors.Join(err, errors.New("no stat"))
	}
	col := slices.Index(recs[0], "status")
	got := map[string]string{}
	for _, r := range recs[1:] {
		if len(r) > col && r[0] == be && r[1] != "BACKEND" {
			got[r[1]] = r[col]
		}
	}
	return got, nil
}

func waitStatus(t *testing.T, sock, be string, want map[string]string) {
	t.Helper()
	var last map[string]string
	testenv.Eventually(t, 15*time.Second, be+" servers "+strconv.Quote(strings.Join(slices.Sorted(mapKeys(want)), ",")), func() bool {
		got, err := serverStatus(sock, be)
		last = got
		if err != nil || len(got) != len(want) {
			return false
		}
		for k, v := range want {
			if got[k] != v {
				return false
			}
		}
		return true
	})
	t.Logf("%s: %v", be, last)
}

// slotOf waits until exactly one backend other than not holds server and
// returns it.
func slotOf(t *testing.T, sock, server, not string) string {
	t.Helper()
	var found string
	testenv.Eventually(t, 15*time.Second, "server "+server+" in one slot other than "+not, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		out, err := masterCommand(ctx, sock, "show stat")
		if err != nil {
			return false
		}
		var in []string
		for _, line := range strings.Split(out, "\n") {
			f := strings.SplitN(line, ",", 3)
			if len(f) == 3 && f[1] == server {
				in = append(in, f[0])
			}
		}
		if len(in) != 1 || in[0] == not {
			return false
		}
		found = in[0]
		return true
	})
	return found
}

func mapKeys(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// Two backends share a check port: the one whose check port answers 200
// is UP and takes every connection, the one answering 503 is DOWN. A TCP
// connect check on the same port would pass on both (kube-proxy accepts on
// every node), which is why a Local Service's check is HTTP. Real HAProxy,
// a route outside the dynamic range (file render, reload).
func TestCheckPortHTTPMarksBackendsFileRender(t *testing.T) {
	dir := t.TempDir()
	cfg := runtimeConfig(t, dir)
	cfg.Settings.CheckInterval = 100 * time.Millisecond
	m := startManager(t, cfg)
	hp, paths := healthPort(t, http.StatusOK, http.StatusServiceUnavailable)
	one, two := echoOn(t, "127.0.0.1", "one"), echoOn(t, "127.0.0.2", "two")
	pub := testenv.FreePort(t)
	fe := Frontend{Port: pub, Name: "local", Balance: "roundrobin", HealthCheck: true, CheckPort: hp, CheckHTTP: true,
		Servers: []Server{{"127.0.0.1", one}, {"127.0.0.2", two}}}
	m.Submit(1, []Frontend{fe})
	waitApplied(t, m, 1)
	be := "be_" + strconv.Itoa(pub)
	up, down := "s_127_0_0_1_"+strconv.Itoa(one), "s_127_0_0_2_"+strconv.Itoa(two)
	waitStatus(t, cfg.Settings.StatsSocket, be, map[string]string{up: "UP", down: "DOWN"})
	for range 6 {
		if got, err := dialRead(pub); err != nil || got != "one" {
			t.Fatalf("through HAProxy: %q, %v; want only the UP backend", got, err)
		}
	}
	if p := paths(); len(p) == 0 || p[0] != "GET /healthz" {
		t.Errorf("check requests %q, want GET /healthz", p)
	}

	// The same check port by TCP connect: both pass, the wrong answer.
	fe.CheckHTTP = false
	m.Submit(2, []Frontend{fe})
	waitApplied(t, m, 2)
	waitStatus(t, cfg.Settings.StatsSocket, be, map[string]string{up: "UP", down: "UP"})

	// The check back on each backend's own port (0): both UP as well.
	fe.CheckHTTP, fe.CheckPort = false, 0
	m.Submit(3, []Frontend{fe})
	waitApplied(t, m, 3)
	waitStatus(t, cfg.Settings.StatsSocket, be, map[string]string{up: "UP", down: "UP"})
}

// The same in the dynamic range: servers added through the runtime API
// (`add server ... check port N`) into a slot with HTTP checks, and a
// change of check port moves the route to another slot without a reload.
func TestCheckPortHTTPMarksBackendsDynamic(t *testing.T) {
	dir := t.TempDir()
	cfg := dynConfig(t, dir, 10)
	cfg.Settings.CheckInterval = 100 * time.Millisecond
	m := startManager(t, cfg)
	hp, _ := healthPort(t, http.StatusOK, http.StatusServiceUnavailable)
	hp2, _ := healthPort(t, http.StatusServiceUnavailable, http.StatusOK)
	one, two := echoOn(t, "127.0.0.1", "one"), echoOn(t, "127.0.0.2", "two")
	pub := cfg.Settings.DynamicPorts.First + 2
	fe := Frontend{Port: pub, Name: "local", Balance: "roundrobin", HealthCheck: true, CheckPort: hp, CheckHTTP: true,
		Servers: []Server{{"127.0.0.1", one}}}
	// First a route with one server: the slot set up by the first render.
	m.Submit(1, []Frontend{fe})
	waitApplied(t, m, 1)
	reloads := m.Status().Reloads
	// The second server arrives through the runtime API.
	fe.Servers = append(fe.Servers, Server{"127.0.0.2", two})
	m.Submit(2, []Frontend{fe})
	waitApplied(t, m, 2)
	if st := m.Status(); st.Reloads != reloads {
		t.Fatalf("adding a server reloaded: %+v", st)
	}
	up, down := "s_127_0_0_1_"+strconv.Itoa(one), "s_127_0_0_2_"+strconv.Itoa(two)
	slot := slotOf(t, cfg.Settings.StatsSocket, up, "")
	if !strings.HasPrefix(slot, "dyn_roundrobin_httpchk_") {
		t.Fatalf("route in slot %s, want an HTTP-check slot", slot)
	}
	waitStatus(t, cfg.Settings.StatsSocket, slot, map[string]string{up: "UP", down: "DOWN"})
	for range 6 {
		if got, err := dialRead(pub); err != nil || got != "one" {
			t.Fatalf("through HAProxy: %q, %v; want only the UP backend", got, err)
		}
	}

	// The check port changes (the Service's healthCheckNodePort moved; the
	// new one has the other node ready): a move to a fresh slot, no reload.
	fe.CheckPort = hp2
	m.Submit(3, []Frontend{fe})
	waitApplied(t, m, 3)
	if st := m.Status(); st.Reloads != reloads {
		t.Fatalf("changing the check port reloaded: %+v", st)
	}
	slot2 := slotOf(t, cfg.Settings.StatsSocket, up, slot)
	if !strings.HasPrefix(slot2, "dyn_roundrobin_httpchk_") {
		t.Fatalf("route moved to slot %s, want an HTTP-check slot", slot2)
	}
	waitStatus(t, cfg.Settings.StatsSocket, slot2, map[string]string{up: "DOWN", down: "UP"})
	for range 6 {
		if got, err := dialRead(pub); err != nil || got != "two" {
			t.Fatalf("after the move: %q, %v; want only the UP backend", got, err)
		}
	}
}

// What a change of check settings plans: outside the range, a reload (the
// server lines change); inside it, a move to a slot of the right class.
func TestPlanCheckPortChanges(t *testing.T) {
	s := dynSettings()
	static := Frontend{Port: 8080, Name: "static", Balance: "roundrobin", HealthCheck: true, CheckPort: 31500, CheckHTTP: true,
		Servers: []Server{{"10.0.0.9", 80}}}
	web := Frontend{Port: 31005, Name: "web", Balance: "roundrobin", HealthCheck: true, CheckPort: 31500, CheckHTTP: true,
		Servers: []Server{{"10.0.0.1", 80}}}
	served := &portSet{}
	served.add(8080)
	for p := 31000; p <= 31099; p++ {
		served.add(p)
	}
	base := []Frontend{static, web}
	_, lay, _ := render(s, base, nil, nil)
	for _, tc := range []struct {
		name string
		f    func(st, dyn *Frontend)
		ok   bool
	}{
		{"static check port", func(st, _ *Frontend) { st.CheckPort = 31501 }, false},
		{"static check mode", func(st, _ *Frontend) { st.CheckHTTP = false }, false},
		{"dynamic check port", func(_, d *Frontend) { d.CheckPort = 31501 }, true},
		{"dynamic check mode to tcp", func(_, d *Frontend) { d.CheckHTTP = false }, true},
		{"dynamic check port cleared", func(_, d *Frontend) { d.CheckPort = 0 }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, d := static, web
			tc.f(&st, &d)
			p, ok := planRuntime(s, base, lay, []Frontend{st, d}, served)
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v: %q", ok, tc.ok, p.cmds)
			}
			if !ok {
				return
			}
			want := "set map " + s.MapFile + " 31005 "
			i := slices.IndexFunc(p.cmds, func(c string) bool { return strings.HasPrefix(c, want) })
			if i < 0 || strings.TrimPrefix(p.cmds[i], want) == slotName(classOf(web), lay.Ports[31005]) {
				t.Fatalf("no move to another slot: %q", p.cmds)
			}
			if d.CheckPort != 0 && !slices.ContainsFunc(p.cmds, func(c string) bool {
				return strings.HasPrefix(c, "add server ") && strings.HasSuffix(c, " check inter 2s port "+strconv.Itoa(d.CheckPort))
			}) {
				t.Errorf("no add server with the check port: %q", p.cmds)
			}
		})
	}
}
