package haproxy

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drawbridge-lb/drawbridge/internal/procfs"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

func TestManagerEndToEnd(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.Settings.BindAddress = "" // all addresses, as in production
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	m := startManager(t, cfg)
	st := m.Status()
	if !st.Running || st.MasterPID == 0 || st.Adopted || !strings.HasPrefix(st.Version, "2.") {
		t.Fatalf("status after start: %+v", st)
	}

	backend := echoBackend(t, "hello from backend")
	port := testenv.FreePort(t)
	m.Submit(1, []Frontend{route(port, "web", backend)})
	waitApplied(t, m, 1)
	got, err := dialRead(port)
	if err != nil || got != "hello from backend" {
		t.Fatalf("through haproxy: %q, %v", got, err)
	}
	st = m.Status()
	onDisk, err := os.ReadFile(filepath.Join(cfg.Dir, "haproxy.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Reloads != 1 || st.ConfigHash != Hash(onDisk) || st.LastReloadDuration <= 0 || st.LastError != "" {
		t.Fatalf("status after apply: %+v", st)
	}
	if _, err := os.Stat(filepath.Join(cfg.Dir, "haproxy.cfg.last-good")); err != nil {
		t.Fatalf("last-good not kept: %v", err)
	}
	t.Logf("reload took %v", st.LastReloadDuration)
	for name, want := range map[string]float64{
		"drawbridge_haproxy_reloads_total":               1,
		"drawbridge_haproxy_reload_duration_seconds":     1,
		"drawbridge_haproxy_validation_duration_seconds": 1,
		"drawbridge_haproxy_running":                     1,
		"drawbridge_haproxy_applied_index":               1,
		"drawbridge_haproxy_reload_failures_total":       0,
		"drawbridge_haproxy_validation_failures_total":   0,
	} {
		if got := testenv.MetricValue(t, reg, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}

	// Identical render: index recorded, no reload.
	m.Submit(2, []Frontend{route(port, "web", backend)})
	waitApplied(t, m, 2)
	if st := m.Status(); st.Reloads != 1 {
		t.Fatalf("identical render reloaded: %+v", st)
	}

	// Removing every route is a valid (empty) configuration.
	m.Submit(3, nil)
	waitApplied(t, m, 3)
	if _, err := dialRead(port); err == nil {
		t.Fatal("removed frontend still answers")
	}
}

func TestManagerCoalescesBursts(t *testing.T) {
	m := startManager(t, testConfig(t, t.TempDir()))
	backend := echoBackend(t, "burst")
	port := testenv.FreePort(t)
	for i := 1; i <= 200; i++ {
		m.Submit(uint64(i), []Frontend{route(port, fmt.Sprintf("r-%d", i), backend)})
	}
	waitApplied(t, m, 200)
	st := m.Status()
	if st.Reloads > 10 {
		t.Fatalf("%d reloads for 200 rapid submissions", st.Reloads)
	}
	cfg, _ := os.ReadFile(filepath.Join(m.cfg.Dir, "haproxy.cfg"))
	if !strings.Contains(string(cfg), "# route r-200\n") {
		t.Fatalf("latest submission not live:\n%s", cfg)
	}
	if got, err := dialRead(port); err != nil || got != "burst" {
		t.Fatalf("through haproxy: %q, %v", got, err)
	}
	t.Logf("200 submissions -> %d reloads", st.Reloads)
}

// dialer connects repeatedly until stopped and counts failures.
type dialer struct {
	ok, failed atomic.Int64
	lastErr    atomic.Value
	stop       chan struct{}
	wg         sync.WaitGroup
}

func startDialer(port int, want string) *dialer {
	d := &dialer{stop: make(chan struct{})}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		for {
			select {
			case <-d.stop:
				return
			default:
			}
			got, err := dialRead(port)
			if err == nil && got != want {
				err = fmt.Errorf("got %q", got)
			}
			if err != nil {
				d.failed.Add(1)
				d.lastErr.Store(err.Error())
			} else {
				d.ok.Add(1)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return d
}

func (d *dialer) halt() { close(d.stop); d.wg.Wait() }

func TestManagerAdoptKeepsTraffic(t *testing.T) {
	dir := t.TempDir()
	backend := echoBackend(t, "adopted")
	port := testenv.FreePort(t)
	fes := []Frontend{route(port, "web", backend)}

	m1 := startManager(t, testConfig(t, dir))
	m1.Submit(1, fes)
	waitApplied(t, m1, 1)
	pid := m1.Status().MasterPID

	d := startDialer(port, "adopted")
	time.Sleep(50 * time.Millisecond)
	if err := m1.Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)

	// The file is trusted as what runs only because the reload that
	// installed it was confirmed (no runtime.pending); see
	// TestManagerAdoptAfterCrashBeforeReload for the other case.
	if _, err := os.Stat(filepath.Join(dir, "runtime.pending")); !os.IsNotExist(err) {
		t.Fatalf("runtime.pending after a confirmed reload: %v", err)
	}
	m2 := startManager(t, testConfig(t, dir))
	st := m2.Status()
	onDisk, _ := os.ReadFile(filepath.Join(dir, "haproxy.cfg"))
	if !st.Adopted || st.MasterPID != pid || !st.Running || st.ConfigHash != Hash(onDisk) {
		t.Fatalf("second manager did not adopt master %d: %+v", pid, st)
	}
	m2.Submit(2, fes)
	waitApplied(t, m2, 2)
	if st := m2.Status(); st.Reloads != 0 {
		t.Fatalf("adopted manager reloaded an identical config: %+v", st)
	}
	// A real change through the adopted master.
	other := testenv.FreePort(t)
	m2.Submit(3, append(fes, route(other, "other", backend)))
	waitApplied(t, m2, 3)
	if st := m2.Status(); st.Reloads != 1 || st.MasterPID != pid {
		t.Fatalf("after change: %+v", st)
	}
	if got, err := dialRead(other); err != nil || got != "adopted" {
		t.Fatalf("new frontend: %q, %v", got, err)
	}
	time.Sleep(50 * time.Millisecond)
	d.halt()
	if n := d.failed.Load(); n != 0 {
		t.Fatalf("%d of %d connections failed during the switch, last: %v", n, n+d.ok.Load(), d.lastErr.Load())
	}
	t.Logf("%d connections, none failed", d.ok.Load())
}

func TestManagerHoldsBackTakenPort(t *testing.T) {
	m := startManager(t, testConfig(t, t.TempDir()))
	backend := echoBackend(t, "held")
	free, taken := testenv.FreePort(t), testenv.FreePort(t)
	squatter, err := net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(taken))
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()

	m.Submit(1, []Frontend{route(free, "free", backend), route(taken, "taken", backend)})
	waitServed(t, m, 1)
	st := m.Status()
	if len(st.FailedPorts) != 1 || st.FailedPorts[0].Port != taken || st.FailedPorts[0].Name != "taken" ||
		!strings.Contains(st.LastError, strconv.Itoa(taken)) {
		t.Fatalf("taken port not reported: %+v", st)
	}
	// A route that is not served is not applied: index 1 is not live.
	if st.AppliedIndex != 0 {
		t.Fatalf("index with a held-back route counted as applied: %+v", st)
	}
	if got, err := dialRead(free); err != nil || got != "held" {
		t.Fatalf("other frontend not live: %q, %v", got, err)
	}

	squatter.Close()
	testenv.Eventually(t, 10*time.Second, "held-back frontend to come up", func() bool {
		return len(m.Status().FailedPorts) == 0
	})
	waitApplied(t, m, 1)
	if got, err := dialRead(taken); err != nil || got != "held" {
		t.Fatalf("frontend after retry: %q, %v", got, err)
	}
}

func TestManagerRestartsDeadMaster(t *testing.T) {
	m := startManager(t, testConfig(t, t.TempDir()))
	backend := echoBackend(t, "reborn")
	port := testenv.FreePort(t)
	m.Submit(1, []Frontend{route(port, "web", backend)})
	waitApplied(t, m, 1)

	pid := m.Status().MasterPID
	workers := procfs.Children(pid)
	if len(workers) == 0 {
		t.Fatal("no workers found")
	}
	for _, p := range append([]int{pid}, workers...) {
		if err := syscall.Kill(p, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 10*time.Second, "master restart", func() bool {
		st := m.Status()
		return st.Running && st.Restarts >= 1 && st.MasterPID != pid
	})
	if got, err := dialRead(port); err != nil || got != "reborn" {
		t.Fatalf("after restart: %q, %v (status %+v)", got, err, m.Status())
	}
}

// TestManagerNeverLoadsRejectedConfig swaps the binary for a wrapper whose
// -c refuses configurations naming route "poison", and checks that such a
// configuration never becomes haproxy.cfg.
func TestManagerNeverLoadsRejectedConfig(t *testing.T) {
	real := haproxyBin(t)
	dir := t.TempDir()
	wrapper := filepath.Join(t.TempDir(), "haproxy-wrapper")
	script := "#!/bin/sh\n" +
		"if [ \"$2\" = \"-c\" ] && grep -q 'route poison' \"$4\"; then\n" +
		"  echo \"[ALERT]    (1) : config : parsing [$4:16] : poisoned route\" >&2; exit 1\nfi\n" +
		"exec " + real + " \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, dir)
	cfg.Bin = wrapper
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	m := startManager(t, cfg)
	backend := echoBackend(t, "safe")
	port := testenv.FreePort(t)
	m.Submit(1, []Frontend{route(port, "good", backend)})
	waitApplied(t, m, 1)
	before, _ := os.ReadFile(filepath.Join(dir, "haproxy.cfg"))

	m.Submit(2, []Frontend{route(port, "poison", backend)})
	testenv.Eventually(t, 5*time.Second, "validation failure", func() bool {
		return strings.Contains(m.Status().LastError, "poisoned route")
	})
	st := m.Status()
	after, _ := os.ReadFile(filepath.Join(dir, "haproxy.cfg"))
	if st.AppliedIndex != 1 || st.Reloads != 1 || string(after) != string(before) {
		t.Fatalf("rejected config was applied: %+v", st)
	}
	if got := testenv.MetricValue(t, reg, "drawbridge_haproxy_validation_failures_total"); got != 1 {
		t.Fatalf("validation failures = %v", got)
	}
	if got, err := dialRead(port); err != nil || got != "safe" {
		t.Fatalf("old config not serving: %q, %v", got, err)
	}
	// The next good submission goes through.
	m.Submit(3, []Frontend{route(port, "better", backend)})
	waitApplied(t, m, 3)
}

func TestManagerStopHAProxy(t *testing.T) {
	m := startManager(t, testConfig(t, t.TempDir()))
	pid := m.Status().MasterPID
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.StopHAProxy(ctx); err != nil {
		t.Fatal(err)
	}
	if processAlive(pid) {
		t.Fatal("master still alive")
	}
	time.Sleep(300 * time.Millisecond) // several health ticks: must not restart
	if st := m.Status(); st.Running || st.Restarts != 0 {
		t.Fatalf("status after stop: %+v", st)
	}
}

func BenchmarkApply(b *testing.B) {
	m := startManager(b, testConfig(b, b.TempDir()))
	backend := echoBackend(b, "bench")
	port := testenv.FreePort(b)
	var total time.Duration
	i := uint64(0)
	for b.Loop() {
		i++
		m.Submit(i, []Frontend{route(port, fmt.Sprintf("r-%d", i), backend)})
		waitApplied(b, m, i)
		total += m.Status().LastReloadDuration
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(i), "reload-ms/op")
}

// TestManagerReloadFailureRestoresLastGood makes the master's reload fail on
// a port taken behind the bind probe's back (as a race would) and checks
// that the live config file is restored and the old workers keep serving.
func TestManagerReloadFailureRestoresLastGood(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	m := startManager(t, cfg)
	backend := echoBackend(t, "still here")
	port, taken := testenv.FreePort(t), testenv.FreePort(t)
	m.Submit(1, []Frontend{route(port, "web", backend)})
	waitApplied(t, m, 1)
	before, _ := os.ReadFile(m.cfgPath)

	squatter, err := net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(taken))
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	m.opMu.Lock()
	m.served.add(taken) // the probe believes haproxy binds it already
	m.opMu.Unlock()

	m.Submit(2, []Frontend{route(port, "web", backend), route(taken, "raced", backend)})
	testenv.Eventually(t, 15*time.Second, "reload failure", func() bool {
		return strings.Contains(m.Status().LastError, "failed reload")
	})
	st := m.Status()
	after, _ := os.ReadFile(m.cfgPath)
	if st.AppliedIndex != 1 || st.Reloads != 1 || string(after) != string(before) {
		t.Fatalf("failed reload not rolled back: %+v\n%s", st, after)
	}
	if got := testenv.MetricValue(t, reg, "drawbridge_haproxy_reload_failures_total"); got != 1 {
		t.Fatalf("reload failures = %v", got)
	}
	if got, err := dialRead(port); err != nil || got != "still here" {
		t.Fatalf("old workers not serving: %q, %v", got, err)
	}
	t.Logf("error: %s", st.LastError)
}

// TestManagerBoundsHungCheck swaps the binary for a wrapper whose -c hangs
// (in a child that keeps the output pipe open) on configurations naming
// route "hang": the check is killed after CheckTimeout, the error says so,
// the live config keeps serving, and the Manager stays usable (its lock is
// free: a later good submission applies and StopHAProxy returns).
func TestManagerBoundsHungCheck(t *testing.T) {
	real := haproxyBin(t)
	wrapper := filepath.Join(t.TempDir(), "haproxy-wrapper")
	script := "#!/bin/sh\n" +
		"if [ \"$2\" = \"-c\" ] && grep -q 'route hang' \"$4\"; then\n" +
		"  sleep 3600; exit 0\nfi\n" +
		"exec " + real + " \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, t.TempDir())
	cfg.Bin = wrapper
	cfg.CheckTimeout = 2 * time.Second
	m := startManager(t, cfg)
	backend := echoBackend(t, "not hung")
	port := testenv.FreePort(t)
	m.Submit(1, []Frontend{route(port, "good", backend)})
	waitApplied(t, m, 1)

	m.Submit(2, []Frontend{route(port, "hang", backend)})
	testenv.Eventually(t, 10*time.Second, "the hung check to be killed", func() bool {
		return strings.Contains(m.Status().LastError, "no answer in time")
	})
	if st := m.Status(); st.AppliedIndex != 1 {
		t.Fatalf("hung check counted as applied: %+v", st)
	}
	if got, err := dialRead(port); err != nil || got != "not hung" {
		t.Fatalf("live config not serving: %q, %v", got, err)
	}
	m.Submit(3, []Frontend{route(port, "better", backend)})
	waitApplied(t, m, 3)
}

// TestManagerAdoptAfterCrashBeforeReload reproduces an agent killed after it
// installed a new haproxy.cfg and before the reload: the file names a port
// the running worker does not bind. The next manager must not trust the
// file: it reloads (once, through the master CLI) and only then reports the
// index applied, with the new port answering.
func TestManagerAdoptAfterCrashBeforeReload(t *testing.T) {
	dir := t.TempDir()
	backend := echoBackend(t, "proven")
	port, added := testenv.FreePort(t), testenv.FreePort(t)
	one := []Frontend{route(port, "web", backend)}
	two := append(slices.Clone(one), route(added, "added", backend))

	m1 := startManager(t, testConfig(t, dir))
	m1.Submit(1, one)
	waitApplied(t, m1, 1)
	crashed := make(chan struct{})
	m1.crashAfterInstall = func() bool { close(crashed); return true }
	m1.Submit(2, two)
	select {
	case <-crashed:
	case <-time.After(15 * time.Second):
		t.Fatalf("apply of index 2 never reached the install: %+v", m1.Status())
	}
	if err := m1.Close(); err != nil {
		t.Fatal(err)
	}
	onDisk, _ := os.ReadFile(filepath.Join(dir, "haproxy.cfg"))
	if !strings.Contains(string(onDisk), ":"+strconv.Itoa(added)) {
		t.Fatalf("crash window not reproduced: haproxy.cfg lacks port %d", added)
	}
	if _, err := dialRead(added); err == nil {
		t.Fatal("crash window not reproduced: the new port answers before any reload")
	}

	m2 := startManager(t, testConfig(t, dir))
	if st := m2.Status(); !st.Adopted {
		t.Fatalf("did not adopt: %+v", st)
	}
	m2.Submit(2, two)
	waitApplied(t, m2, 2)
	st := m2.Status()
	if st.Reloads != 1 {
		t.Fatalf("adopted manager trusted the file of a reload that never happened: %+v", st)
	}
	if got, err := dialRead(added); err != nil || got != "proven" {
		t.Fatalf("index 2 reported applied but port %d: %q, %v", added, got, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "runtime.pending")); !os.IsNotExist(err) {
		t.Fatalf("runtime.pending left after a confirmed reload: %v", err)
	}
}

// TestManagerFailedReloadDoesNotStallLaterChanges runs HAProxy under a
// descriptor limit too small for the routes a change adds (as 10,000 routes
// under a 20,000-descriptor limit did), so the reload that would add them
// really fails. The rest of the change (a server swap on an existing
// route, a removed route) still applies, the new routes are reported held
// back with the reason, the index does not count as applied, and a later
// server change applies at once, without trying the failing reload again.
func TestManagerFailedReloadDoesNotStallLaterChanges(t *testing.T) {
	real := haproxyBin(t)
	wrapper := filepath.Join(t.TempDir(), "haproxy-limited")
	script := "#!/bin/sh\nulimit -n 400 || exit 1\nexec " + real + " \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := runtimeConfig(t, t.TempDir())
	cfg.Bin = wrapper
	cfg.Settings.MaxConn = 20
	cfg.RetryInterval = time.Second // held back for 10 s: longer than the test
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	m := startManager(t, cfg)
	a, b, c := echoBackend(t, "a"), echoBackend(t, "b"), echoBackend(t, "c")
	keep, drop := testenv.FreePort(t), testenv.FreePort(t)
	m.Submit(1, []Frontend{route(keep, "keep", a), route(drop, "drop", a)})
	waitApplied(t, m, 1)

	// Index 2: swap keep's server, remove drop, add 500 routes (a listener
	// each: more than 400 descriptors). Their ports are one range below the
	// kernel's ephemeral ports: 500 of those would, now and then, meet a
	// port another test process listens on, and be held back for that.
	two := []Frontend{route(keep, "keep", b)}
	added := map[int]bool{}
	first := testenv.FreePortRange(t, 500)
	for p := first; p < first+500; p++ {
		added[p] = true
		two = append(two, route(p, fmt.Sprintf("new-%d", p), a))
	}
	slices.SortFunc(two, func(x, y Frontend) int { return x.Port - y.Port })
	m.Submit(2, two)
	waitServed(t, m, 2)
	st := m.Status()
	if st.AppliedIndex != 1 {
		t.Fatalf("index 2 counted as applied with routes held back: %+v", st.AppliedIndex)
	}
	if len(st.FailedPorts) != len(added) {
		t.Fatalf("%d routes reported held back, want %d", len(st.FailedPorts), len(added))
	}
	for _, f := range st.FailedPorts {
		if !added[f.Port] || !strings.Contains(f.Error, "reload adding it failed") {
			t.Fatalf("held back: %+v", f)
		}
	}
	if got, err := dialRead(keep); err != nil || got != "b" {
		t.Fatalf("server change on an existing route not applied: %q, %v", got, err)
	}
	if _, err := dialRead(drop); err == nil {
		t.Fatal("removed route still answers")
	}
	failures := testenv.MetricValue(t, reg, "drawbridge_haproxy_reload_failures_total")
	if failures < 1 {
		t.Fatal("the reload adding the routes did not fail: the test did not reproduce the limit")
	}
	if got := testenv.MetricValue(t, reg, "drawbridge_haproxy_held_back_routes"); got != float64(len(added)) {
		t.Fatalf("held-back metric %v", got)
	}

	// Index 3: another server change. It applies, and the failing reload
	// is not tried again meanwhile.
	three := slices.Clone(two)
	for i := range three {
		if three[i].Port == keep {
			three[i] = route(keep, "keep", c)
		}
	}
	m.Submit(3, three)
	waitServed(t, m, 3)
	if got, err := dialRead(keep); err != nil || got != "c" {
		t.Fatalf("later server change not applied: %q, %v", got, err)
	}
	if got := testenv.MetricValue(t, reg, "drawbridge_haproxy_reload_failures_total"); got != failures {
		t.Fatalf("failing reload tried again: %v failures, was %v", got, failures)
	}
}

// TestListeningPortsOwnsOnlyHAProxysListeners: a port this HAProxy listens
// on counts as served when the files do not say so (after adopting a
// worker ahead of them); a port another process holds never does.
func TestListeningPortsOwnsOnlyHAProxysListeners(t *testing.T) {
	m := startManager(t, testConfig(t, t.TempDir()))
	backend, port, other := ownAndSquattedPorts(t, m)
	own := listeningPorts(m.Status().MasterPID)
	if !own[port] || own[other] {
		t.Fatalf("own ports %v: want %d and not %d", own, port, other)
	}

	// The files forget the port (as after an adoption whose files lag):
	// the route is still kept, not held back.
	m.opMu.Lock()
	m.served.del(port)
	m.opMu.Unlock()
	m.Submit(2, []Frontend{route(port, "web", backend)})
	waitApplied(t, m, 2)
	if st := m.Status(); len(st.FailedPorts) != 0 {
		t.Fatalf("a port this HAProxy binds was held back: %+v", st.FailedPorts)
	}
}

// BenchmarkProbeServed is the probe of an update at 10,000 routes the live
// worker already binds (every runtime API change makes one).
func BenchmarkProbeServed(b *testing.B) {
	m := &Manager{served: &portSet{}}
	fes := make([]Frontend, 10000)
	for i := range fes {
		fes[i] = Frontend{Port: 20000 + i, Name: "r"}
		m.served.add(fes[i].Port)
	}
	for b.Loop() {
		if kept, failed := m.probe(fes); len(kept) != len(fes) || len(failed) != 0 {
			b.Fatal("a served port was held back")
		}
	}
}
