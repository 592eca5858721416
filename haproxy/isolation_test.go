package haproxy

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// procField returns a field of /proc/pid/status ("Uid", "CapEff").
func procField(t *testing.T, pid int, field string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return ""
}

// HAProxy runs as its own user, chrooted, with a scrubbed environment and
// only the capabilities it needs, whatever the agent holds; and it still
// serves, reloads and is stopped by the agent.
func TestIsolatedHAProxy(t *testing.T) {
	testenv.Root(t, "switching HAProxy to another user")
	testenv.Command(t, "setpriv", "util-linux")
	t.Setenv("DRAWBRIDGE_API_TOKEN", "fake-secret-in-the-agent-env")
	dir := t.TempDir()
	// HAProxy's user must reach its directory.
	if err := os.Chmod(filepath.Dir(dir), 0o711); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, dir)
	cfg.Isolation = Isolation{User: "65534", Group: "65534", Chroot: true}
	m := startManager(t, cfg)

	backend := echoBackend(t, "hello through an isolated haproxy")
	port := testenv.FreePort(t)
	for i := uint64(1); i <= 2; i++ { // a start, then a reload
		m.Submit(i, []Frontend{route(port+int(i)-1, "web", backend)})
		waitApplied(t, m, i)
		if got, err := dialRead(port + int(i) - 1); err != nil || got != "hello through an isolated haproxy" {
			t.Fatalf("through haproxy: %q, %v", got, err)
		}
	}
	// The current worker, from the master: the first one may still be
	// exiting after the reload, and /proc or the master CLI would then
	// answer for a process that is gone.
	p, err := showProc(context.Background(), m.sockPath)
	if err != nil {
		t.Fatal(err)
	}
	worker := 0
	for _, w := range p.Workers {
		if w.Reloads == 0 {
			worker = w.PID
		}
	}
	if worker == 0 {
		t.Fatalf("no current worker in %+v", p)
	}
	for _, pid := range []int{p.MasterPID, worker} {
		if uid := procField(t, pid, "Uid"); uid != "65534 65534 65534 65534" {
			t.Errorf("pid %d runs as uid %s, want 65534", pid, uid)
		}
		// CAP_NET_BIND_SERVICE (10) and CAP_SYS_CHROOT (18) only: no
		// CAP_NET_ADMIN, CAP_NET_RAW, CAP_SETUID or anything else root has.
		for _, set := range []string{"CapPrm", "CapEff", "CapAmb"} {
			if c := procField(t, pid, set); c != "0000000000040400" {
				t.Errorf("pid %d %s = %s, want 0000000000040400", pid, set, c)
			}
		}
		env, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "environ"))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(env), "fake-secret") || !strings.HasPrefix(string(env), "PATH=") {
			t.Errorf("pid %d environment not scrubbed: %q", pid, env)
		}
	}
	// Under ProtectProc=invisible the agent cannot read an isolated
	// worker's /proc; the memory budget then reads what the worker reports.
	info, err := masterCommand(context.Background(), m.sockPath, "@!"+strconv.Itoa(worker)+" show info")
	if err != nil || !strings.Contains(info, "PoolAlloc_MB: ") {
		t.Errorf("show info of a worker lacks PoolAlloc_MB (%v):\n%s", err, info)
	}
	root, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(worker), "root"))
	if err != nil {
		t.Fatal(err)
	}
	if root != filepath.Join(dir, "empty") {
		t.Errorf("worker root %s, want the chroot %s", root, filepath.Join(dir, "empty"))
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "empty")); len(entries) != 0 {
		t.Errorf("chroot not empty: %v", entries)
	}
}

// Switching isolation on while HAProxy runs as the agent's user: the next
// manager adopts the running master (never restarting it, which would drop
// connections), still reloads it through the files it now hands to
// HAProxy's group, and warns that the switch waits for a restart.
func TestIsolationSwitchedOnAdopts(t *testing.T) {
	testenv.Root(t, "switching HAProxy to another user")
	testenv.Command(t, "setpriv", "util-linux")
	dir := t.TempDir()
	if err := os.Chmod(filepath.Dir(dir), 0o711); err != nil {
		t.Fatal(err)
	}
	backend := echoBackend(t, "still served")
	port, port2 := testenv.FreePort(t), testenv.FreePort(t)

	m1 := startManager(t, testConfig(t, dir))
	m1.Submit(1, []Frontend{route(port, "web", backend)})
	waitApplied(t, m1, 1)
	master := m1.Status().MasterPID
	if err := m1.Close(); err != nil {
		t.Fatal(err)
	}

	var logs testenv.Buffer
	cfg := testConfig(t, dir)
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	cfg.Isolation = Isolation{User: "65534", Group: "65534", Chroot: true}
	m2 := startManager(t, cfg)
	if st := m2.Status(); !st.Adopted || st.MasterPID != master {
		t.Fatalf("not adopted: %+v", st)
	}
	if !strings.Contains(logs.String(), "the adopted HAProxy runs as another user than haproxy.user says") {
		t.Errorf("no warning that the running HAProxy is not isolated:\n%s", logs.String())
	}
	m2.Submit(2, []Frontend{route(port, "web", backend), route(port2, "web2", backend)})
	waitApplied(t, m2, 2)
	for _, p := range []int{port, port2} {
		if got, err := dialRead(p); err != nil || got != "still served" {
			t.Errorf("port %d: %q, %v", p, got, err)
		}
	}
	if uid := procField(t, m2.Status().MasterPID, "Uid"); uid != "0 0 0 0" {
		t.Errorf("the reload changed the master's user to %s: a reload keeps it", uid)
	}
}

// An isolated HAProxy's descriptors are another user's: an agent that is
// not root cannot read them in /proc. The ports its current worker serves
// come from the worker itself then, so a port the files forget (after
// adopting a worker ahead of them) is still served, not held back; a port
// another process holds never counts.
func TestIsolatedOwnPortsFromWorker(t *testing.T) {
	testenv.Root(t, "switching HAProxy to another user")
	testenv.Command(t, "setpriv", "util-linux")
	dir := t.TempDir()
	if err := os.Chmod(filepath.Dir(dir), 0o711); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, dir)
	cfg.Isolation = Isolation{User: "65534", Group: "65534"}
	m := startManager(t, cfg)
	backend, port, other := ownAndSquattedPorts(t, m)

	own := openFrontendPorts(context.Background(), m.sockPath)
	if !own[port] || own[other] || len(own) != 1 {
		t.Fatalf("worker reports %v: want %d alone", own, port)
	}

	m.opMu.Lock()
	m.served.del(port)
	m.opMu.Unlock()
	m.Submit(2, []Frontend{route(port, "web", backend), route(other, "squatted", backend)})
	waitServed(t, m, 2)
	st := m.Status()
	if len(st.FailedPorts) != 1 || st.FailedPorts[0].Port != other {
		t.Fatalf("held back %+v: want the squatted port %d alone", st.FailedPorts, other)
	}
	if got, err := dialRead(port); err != nil || got != "own" {
		t.Fatalf("port %d after the reload: %q, %v", port, got, err)
	}
}
