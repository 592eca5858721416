package haproxy

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// TestRuntimeConnKeepsOneConnection: lines sent to a real HAProxy over the
// kept-open connection get the same answers the one-shot CLI gives, on one
// connection, and an idle one is replaced before use.
func TestRuntimeConnKeepsOneConnection(t *testing.T) {
	dir := t.TempDir()
	cfg := runtimeConfig(t, dir)
	sock := cfg.Settings.StatsSocket
	m := startManager(t, cfg)
	port := testenv.FreePort(t)
	m.Submit(1, []Frontend{route(port, "web", echoBackend(t, "one"))})
	waitApplied(t, m, 1)
	m.Close()

	rc := &runtimeConn{sock: sock}
	t.Cleanup(rc.close)
	be := "be_" + itoa(port)
	cmds := []string{"add server " + be + "/extra 127.0.0.1:9", "enable server " + be + "/extra", "set server " + be + "/extra state maint"}
	out, err := rc.exchange(t.Context(), strings.Join(cmds, ";"), len(cmds))
	if err != nil {
		t.Fatal(err)
	}
	if busy, err := readAnswers(cmds, out); err != nil || len(busy) != 0 {
		t.Fatalf("answer %q: %v %v", out, busy, err)
	}
	first := rc.c
	out, err = rc.exchange(t.Context(), "del server "+be+"/extra", 1)
	if err != nil || out != "Server deleted.\n" {
		t.Fatalf("del server: %q %v", out, err)
	}
	out, err = rc.exchange(t.Context(), "set server "+be+"/nope state maint", 1)
	if err != nil || out != "No such server.\n\n" {
		t.Fatalf("an error answer: %q %v", out, err)
	}
	if rc.c != first {
		t.Fatal("a second exchange dialled a new connection")
	}
	rc.used = time.Now().Add(-2 * runtimeIdle)
	if _, err := rc.exchange(t.Context(), "set server "+be+"/nope state maint", 1); err != nil {
		t.Fatal(err)
	}
	if rc.c == first {
		t.Fatal("an idle connection was used again")
	}
}

// TestRuntimeConnFollowsReloads: after a reload the runtime API changes
// reach the new worker. A connection kept across the reload would still
// talk to the old worker, and the new one would never get the server.
func TestRuntimeConnFollowsReloads(t *testing.T) {
	dir := t.TempDir()
	cfg := runtimeConfig(t, dir)
	m := startManager(t, cfg)
	one, two, three := echoBackend(t, "one"), echoBackend(t, "two"), echoBackend(t, "three")
	port, other := testenv.FreePort(t), testenv.FreePort(t)

	m.Submit(1, []Frontend{route(port, "web", one)})
	waitApplied(t, m, 1)
	m.Submit(2, []Frontend{route(port, "web", two)}) // runtime API: opens the connection
	waitApplied(t, m, 2)
	runtimeUpdates, reloads := m.Status().RuntimeUpdates, m.Status().Reloads
	if runtimeUpdates == 0 {
		t.Fatal("the server change did not go through the runtime API")
	}
	m.Submit(3, []Frontend{route(port, "web", two), route(other, "other", one)}) // a new frontend: reload
	waitApplied(t, m, 3)
	if m.Status().Reloads == reloads {
		t.Fatal("a new frontend did not reload")
	}
	m.Submit(4, []Frontend{route(port, "web", three), route(other, "other", one)}) // runtime API again
	waitApplied(t, m, 4)
	if m.Status().RuntimeUpdates == runtimeUpdates {
		t.Fatal("the change after the reload did not go through the runtime API")
	}
	for i := 0; i < 10; i++ {
		if got, err := dialRead(port); err != nil || got != "three" {
			t.Fatalf("after the reload and a runtime change: %q %v (the change went to the old worker?)", got, err)
		}
	}
}

// fakeCLI serves one connection on a unix socket with answer for every
// line after the first (the "prompt" one, answered as HAProxy does).
func fakeCLI(t *testing.T, answer string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "cli.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		if _, err := r.ReadString('\n'); err != nil {
			return
		}
		c.Write([]byte("\n> "))
		if _, err := r.ReadString('\n'); err != nil {
			return
		}
		c.Write([]byte(answer))
	}()
	return sock
}

func TestRuntimeConnRefusesAnswersOutOfStep(t *testing.T) {
	for _, tc := range []struct{ name, answer, want string }{
		{"more prompts than commands", "\n> \n> ", errTrailing.Error()},
		{"closed before the last prompt", "New server registered.\n\n> ", "EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := &runtimeConn{sock: fakeCLI(t, tc.answer)}
			t.Cleanup(rc.close)
			n := 1
			if tc.name == "closed before the last prompt" {
				n = 2
			}
			_, err := rc.exchange(t.Context(), "x", n)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if rc.c != nil {
				t.Error("the connection was kept after an answer out of step")
			}
		})
	}
}

// TestOutsideReloadIsReapplied: HAProxy reloaded behind the Manager's back
// right after a runtime API change, before the files caught up with it,
// starts a worker without that change. The Manager notices the master's
// reload count, drops its runtime API connection (which could still reach
// the old worker) and applies the table again, so the change is served
// without waiting for another one.
func TestOutsideReloadIsReapplied(t *testing.T) {
	dir := t.TempDir()
	cfg := runtimeConfig(t, dir)
	m := startManager(t, cfg)
	one, two := echoBackend(t, "one"), echoBackend(t, "two")
	port := testenv.FreePort(t)
	master := filepath.Join(dir, "master.sock")

	m.Submit(1, []Frontend{route(port, "web", one)})
	waitApplied(t, m, 1)
	before, err := showProc(t.Context(), master)
	if err != nil {
		t.Fatal(err)
	}
	m.Submit(2, []Frontend{route(port, "web", two)}) // runtime API; the files follow 200 ms later
	waitApplied(t, m, 2)
	_, _ = masterCommand(t.Context(), master, "reload") // at once: the new worker reads the old files
	testenv.Eventually(t, 10*time.Second, "the outside reload to be noticed", func() bool {
		m.opMu.Lock()
		defer m.opMu.Unlock()
		return m.masterReloads > before.Reloads
	})
	testenv.Eventually(t, 10*time.Second, "the change to be served again after the outside reload", func() bool {
		for i := 0; i < 5; i++ {
			if got, err := dialRead(port); err != nil || got != "two" {
				return false
			}
		}
		return true
	})
}

// TestRuntimeChangesReachOnlyTheCurrentWorker: a runtime API change counts
// as applied only when the worker the master names as current made it.
// Right after a reload the old worker can still accept on the stats socket
// the workers share, for a few milliseconds; here another HAProxy with the
// same backends answers on the socket's path, which makes that moment last.
// The change must not be made there and reported applied: it is made by a
// reload instead, and served.
func TestRuntimeChangesReachOnlyTheCurrentWorker(t *testing.T) {
	dir := t.TempDir()
	cfg := runtimeConfig(t, dir)
	m := startManager(t, cfg)
	one, two := echoBackend(t, "one"), echoBackend(t, "two")
	port := testenv.FreePort(t)
	m.Submit(1, []Frontend{route(port, "web", one)})
	waitApplied(t, m, 1)

	// The other HAProxy runs the same file, listening on another port, its
	// stats socket then renamed over the Manager's (a hard link keeps it
	// reachable for the check below).
	rendered, err := os.ReadFile(filepath.Join(dir, "haproxy.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	odir := t.TempDir()
	osock, olink := filepath.Join(odir, "admin.sock"), filepath.Join(odir, "other.sock")
	text := strings.ReplaceAll(string(rendered), cfg.Settings.StatsSocket, osock)
	text = strings.ReplaceAll(text, "bind 127.0.0.1:"+itoa(port)+"\n", "bind 127.0.0.1:"+itoa(testenv.FreePort(t))+"\n")
	ocfg := filepath.Join(odir, "haproxy.cfg")
	if err := os.WriteFile(ocfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	other := exec.Command(haproxyBin(t), "-db", "-f", ocfg)
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Process.Kill(); _ = other.Wait() })
	testenv.Eventually(t, 10*time.Second, "the other HAProxy's stats socket", func() bool {
		c, err := net.Dial("unix", osock)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if err := os.Link(osock, olink); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(osock, cfg.Settings.StatsSocket); err != nil {
		t.Fatal(err)
	}

	reloads := m.Status().Reloads
	m.Submit(2, []Frontend{route(port, "web", two)}) // a server-only change
	waitApplied(t, m, 2)
	for i := 0; i < 5; i++ {
		if got, err := dialRead(port); err != nil || got != "two" {
			t.Fatalf("after the change: %q %v (it was made in the other HAProxy?)", got, err)
		}
	}
	if m.Status().Reloads == reloads {
		t.Fatal("the change was applied without a reload, though the stats socket reached another process")
	}
	rc := &runtimeConn{sock: olink}
	t.Cleanup(rc.close)
	out, err := rc.exchange(t.Context(), "show servers state be_"+itoa(port), 1)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, " "+itoa(one)+" ") || strings.Contains(out, " "+itoa(two)+" ") {
		t.Fatalf("the other HAProxy's servers changed:\n%s", out)
	}
}

// TestRuntimeChangeAfterAnUnnoticedOutsideReload: HAProxy reloaded by
// someone else, before the periodic check notices, runs its files, which
// may lack the latest runtime changes. The next change must not be made
// on top of that worker as if it ran what this Manager last put there: the
// runtime API refuses it at once (the master names that worker as current)
// and the reload that follows renders everything.
func TestRuntimeChangeAfterAnUnnoticedOutsideReload(t *testing.T) {
	dir := t.TempDir()
	cfg := runtimeConfig(t, dir)
	cfg.HealthInterval = time.Hour // no periodic check to notice the reload
	m := startManager(t, cfg)
	one, two, three := echoBackend(t, "one"), echoBackend(t, "two"), echoBackend(t, "three")
	a, b := testenv.FreePort(t), testenv.FreePort(t)

	m.Submit(1, []Frontend{route(a, "a", one), route(b, "b", one)})
	waitApplied(t, m, 1)
	m.Submit(2, []Frontend{route(a, "a", two), route(b, "b", one)}) // runtime API; the files follow later
	waitApplied(t, m, 2)
	m.opMu.Lock()
	m.rt.close() // the next change dials, as after an idle spell
	m.opMu.Unlock()
	_, _ = masterCommand(t.Context(), filepath.Join(dir, "master.sock"), "reload") // at once: the new worker may read the old files
	testenv.Eventually(t, 10*time.Second, "the outside reload's new worker", func() bool {
		p, err := showProc(t.Context(), filepath.Join(dir, "master.sock"))
		return err == nil && p.Reloads > 0 && p.hasNewWorker()
	})
	reloads := m.Status().Reloads
	m.Submit(3, []Frontend{route(a, "a", two), route(b, "b", three)})
	waitApplied(t, m, 3)
	for i := 0; i < 5; i++ {
		if got, err := dialRead(a); err != nil || got != "two" {
			t.Fatalf("route a after the outside reload and a change to b: %q %v", got, err)
		}
		if got, err := dialRead(b); err != nil || got != "three" {
			t.Fatalf("route b: %q %v", got, err)
		}
	}
	if m.Status().Reloads == reloads {
		t.Fatal("the change was made through the runtime API of a worker this Manager did not start")
	}
}
