package haproxy

import (
	"bufio"
	"net"
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
