package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// TestE2ESecondAgentOnDataDirExits: a second agent on a data dir an agent
// holds exits non-zero at once, naming the holder's PID, and touches
// nothing there (the first agent's pid file and token are unchanged); the
// first keeps running. Before, the second wrote agent.pid and then hung on
// the raft store's lock, and `drawbridge leave` signalled it instead.
func TestE2ESecondAgentOnDataDirExits(t *testing.T) {
	requireHAProxy(t)
	a := startDevAgent(t)
	first, _ := a.proc()
	pidBefore, err := os.ReadFile(filepath.Join(a.dir, "agent.pid"))
	if err != nil {
		t.Fatal(err)
	}

	second := exec.Command(binPath, "agent", "--dev", "--data-dir", a.dir, "--node-name", "e2e",
		"--api-addr", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		"--raft-addr", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		"--gossip-addr", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)))
	second.Env = append(os.Environ(), "DRAWBRIDGE_API_TOKEN="+testToken)
	var out bytes.Buffer
	second.Stdout, second.Stderr = &out, &out
	start := time.Now()
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- second.Wait() }()
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		second.Process.Kill()
		<-done
		t.Fatalf("second agent on the same data dir still running after 10s:\n%s", out.String())
	}
	t.Logf("second agent exited after %v: %v\n%s", time.Since(start).Round(time.Millisecond), err, out.String())
	if err == nil {
		t.Fatal("second agent exited 0")
	}
	want := fmt.Sprintf("held by agent PID %d", first.Process.Pid)
	if !strings.Contains(out.String(), want) {
		t.Fatalf("error does not name the holder (%q):\n%s", want, out.String())
	}
	if pidAfter, _ := os.ReadFile(filepath.Join(a.dir, "agent.pid")); !bytes.Equal(pidAfter, pidBefore) {
		t.Fatalf("second agent touched agent.pid: %q -> %q", pidBefore, pidAfter)
	}
	if !a.running() {
		t.Fatal("the first agent stopped")
	}

	// leave signals the agent that holds the dir, and it stops.
	if out, err := exec2(binPath, "leave", "--data-dir", a.dir); err != nil || !strings.Contains(out, strconv.Itoa(first.Process.Pid)) {
		t.Fatalf("leave: %v\n%s", err, out)
	}
	if a.running() {
		t.Fatal("agent still running after leave")
	}
}

// TestE2ELeaveNeverSignalsAStalePID: with no agent running, agent.pid left
// behind (a crash) may name another process by now. leave refuses and that
// process lives on.
func TestE2ELeaveNeverSignalsAStalePID(t *testing.T) {
	dir := t.TempDir()
	bystander := exec.Command("sleep", "60")
	if err := bystander.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bystander.Process.Kill(); bystander.Wait() })
	pid := strconv.Itoa(bystander.Process.Pid) + "\n"
	for _, f := range []string{"agent.pid", "agent.lock"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(pid), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec2(binPath, "leave", "--data-dir", dir)
	if err == nil || !strings.Contains(out, "no agent is running") {
		t.Fatalf("leave with a stale pid: %v\n%s", err, out)
	}
	// A signalled sleep is dead (a zombie: nobody waited for it yet) by
	// the time leave has returned.
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", bystander.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:])); len(f) == 0 || f[0] == "Z" {
		t.Fatalf("leave signalled the bystander: %s", stat)
	}
}
