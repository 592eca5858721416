package floatingip

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// testLogger logs to the test's output (shown on failure only) and to the
// returned buffer, at debug level.
func testLogger(t *testing.T) (*slog.Logger, *testenv.Buffer) {
	t.Helper()
	buf := &testenv.Buffer{}
	h := slog.NewTextHandler(multiWriter{t.Output(), buf}, &slog.HandlerOptions{Level: slog.LevelDebug})
	return slog.New(h), buf
}

type multiWriter []interface{ Write([]byte) (int, error) }

func (m multiWriter) Write(p []byte) (int, error) {
	for _, w := range m {
		if _, err := w.Write(p); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// writeScript writes an executable shell script to dir and returns its path.
func writeScript(t *testing.T, dir, name, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// newTestExec builds an exec provider for script with short timings.
func newTestExec(t *testing.T, script string, timeout time.Duration, retries int) (*Exec, *testenv.Buffer) {
	t.Helper()
	log, buf := testLogger(t)
	p, err := New(Config{
		Provider:    "exec",
		Address:     "203.0.113.10",
		NodeName:    "edge-1",
		ExecCommand: script,
		ExecTimeout: timeout,
		Logger:      log,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e := p.(*Exec)
	e.retries = retries // 0 allowed here: New maps 0 to the default
	e.backoff = 10 * time.Millisecond
	return e, buf
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func TestExecClaimReleaseArgsAndState(t *testing.T) {
	dir := t.TempDir()
	args := filepath.Join(dir, "args")
	script := writeScript(t, dir, "ok.sh", fmt.Sprintf("echo \"$@\" >> %q\necho done \"$1\"\n", args))
	e, logs := newTestExec(t, script, 5*time.Second, 3)
	ctx := context.Background()

	// Releasing what was never claimed does not run the script.
	if err := e.Release(ctx); err != nil {
		t.Fatalf("Release before Claim: %v", err)
	}
	if got := readLines(t, args); got != nil {
		t.Fatalf("Release before Claim ran the script: %q", got)
	}
	mustHeld(t, e, false)

	for range 2 { // the second Claim is a no-op
		if err := e.Claim(ctx); err != nil {
			t.Fatalf("Claim: %v", err)
		}
	}
	mustHeld(t, e, true)
	for range 2 { // the second Release is a no-op
		if err := e.Release(ctx); err != nil {
			t.Fatalf("Release: %v", err)
		}
	}
	mustHeld(t, e, false)

	want := []string{"claim 203.0.113.10 edge-1", "release 203.0.113.10 edge-1"}
	if got := readLines(t, args); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("script calls = %q, want %q", got, want)
	}
	if !strings.Contains(logs.String(), "done claim") || !strings.Contains(logs.String(), "level=INFO") {
		t.Errorf("script output not logged at info:\n%s", logs)
	}
}

func TestExecRetriesUntilSuccess(t *testing.T) {
	dir := t.TempDir()
	counter := filepath.Join(dir, "count")
	script := writeScript(t, dir, "flaky.sh", fmt.Sprintf(`n=$(cat %[1]q 2>/dev/null || echo 0)
n=$((n+1))
echo $n > %[1]q
if [ $n -le 2 ]; then echo "api busy (try $n)" >&2; exit 1; fi
echo "assigned on try $n"
`, counter))
	e, logs := newTestExec(t, script, 5*time.Second, 3)

	if err := e.Claim(context.Background()); err != nil {
		t.Fatalf("Claim: %v", err)
	}
	mustHeld(t, e, true)
	if got := readLines(t, counter); len(got) != 1 || got[0] != "3" {
		t.Fatalf("script ran %q times, want 3", got)
	}
	l := logs.String()
	if !strings.Contains(l, "level=WARN") || !strings.Contains(l, "api busy (try 1)") {
		t.Errorf("failed attempts not logged at warn with their output:\n%s", l)
	}
}

func TestExecFailsAfterRetries(t *testing.T) {
	dir := t.TempDir()
	counter := filepath.Join(dir, "count")
	script := writeScript(t, dir, "fail.sh", fmt.Sprintf(`echo x >> %q
echo "reserved IP is locked" >&2
exit 3
`, counter))
	e, _ := newTestExec(t, script, 5*time.Second, 2)

	err := e.Claim(context.Background())
	if err == nil {
		t.Fatal("Claim succeeded with a script that always fails")
	}
	if !strings.Contains(err.Error(), "reserved IP is locked") || !strings.Contains(err.Error(), "3 attempt(s)") {
		t.Errorf("error lacks the script output or attempt count: %v", err)
	}
	if got := len(readLines(t, counter)); got != 3 {
		t.Errorf("script ran %d times, want 3 (1 + 2 retries)", got)
	}
	mustHeld(t, e, false)

	// The state is uncertain now: a Release runs the script rather than
	// assume nothing was claimed.
	_ = e.Release(context.Background())
	if got := len(readLines(t, counter)); got != 6 {
		t.Errorf("Release after a failed Claim ran the script %d times in total, want 6", got)
	}
}

func TestExecTimeoutKillsProcessGroup(t *testing.T) {
	dir := t.TempDir()
	childPID := filepath.Join(dir, "child")
	script := writeScript(t, dir, "hang.sh", fmt.Sprintf(`sleep 300 &
echo $! > %q
echo "waiting for the API"
sleep 300
`, childPID))
	e, _ := newTestExec(t, script, 300*time.Millisecond, 0)

	start := time.Now()
	err := e.Claim(context.Background())
	took := time.Since(start)
	if err == nil {
		t.Fatal("Claim succeeded with a hanging script")
	}
	if !strings.Contains(err.Error(), "timed out") || !strings.Contains(err.Error(), "waiting for the API") {
		t.Errorf("error should say it timed out and carry the output: %v", err)
	}
	if took > 5*time.Second {
		t.Errorf("Claim took %s with a 300ms timeout", took)
	}
	lines := readLines(t, childPID)
	if len(lines) != 1 {
		t.Fatalf("child pid file: %q", lines)
	}
	pid, err := strconv.Atoi(lines[0])
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "the script's child to die", func() bool { return !processAlive(pid) })
	mustHeld(t, e, false)
}

func TestExecCallerCancel(t *testing.T) {
	dir := t.TempDir()
	script := writeScript(t, dir, "slow.sh", "sleep 300\n")
	e, _ := newTestExec(t, script, time.Minute, 3)

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := e.Claim(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Claim error = %v, want context.DeadlineExceeded", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Claim took %s after its context ended", took)
	}
}

func TestExecSerializesCalls(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	script := writeScript(t, dir, "mark.sh", fmt.Sprintf(`echo "start $1 $$" >> %[1]q
sleep 0.03
echo "end $1 $$" >> %[1]q
`, log))
	e, _ := newTestExec(t, script, 5*time.Second, 0)

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 8 {
		wg.Go(func() {
			for i := range 3 {
				var err error
				if (g+i)%2 == 0 {
					err = e.Claim(context.Background())
				} else {
					err = e.Release(context.Background())
				}
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("call failed: %v", err)
	}

	lines := readLines(t, log)
	if len(lines) < 4 || len(lines)%2 != 0 {
		t.Fatalf("want at least two complete runs, got %q", lines)
	}
	for i := 0; i < len(lines); i += 2 {
		s, e := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(s) != 3 || len(e) != 3 || s[0] != "start" || e[0] != "end" || s[1] != e[1] || s[2] != e[2] {
			t.Fatalf("runs overlap at line %d:\n%s", i+1, strings.Join(lines, "\n"))
		}
	}
}

func TestLimitedBufferTruncates(t *testing.T) {
	var b limitedBuffer
	b.Write(bytes.Repeat([]byte("a"), execOutputLimit-1))
	b.Write([]byte("bcd"))
	s := b.String()
	if !strings.HasSuffix(s, "ab …[2 more bytes]") {
		t.Errorf("truncated output ends with %q", s[len(s)-30:])
	}
}

func mustHeld(t *testing.T, p Provider, want bool) {
	t.Helper()
	got, err := p.Held(context.Background())
	if err != nil {
		t.Fatalf("Held: %v", err)
	}
	if got != want {
		t.Fatalf("Held = %v, want %v", got, want)
	}
}

// processAlive reports whether pid runs (a zombie counts as dead).
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "pid (comm) S ...": the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || (s[i+2] != 'Z' && s[i+2] != 'X')
}

func TestExecScriptLeavesChildHoldingOutput(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	script := writeScript(t, dir, "daemon.sh", fmt.Sprintf(`echo $$ > %q
sleep 30 &
echo claimed
`, pidFile))
	e, _ := newTestExec(t, script, 10*time.Second, 0)
	t.Cleanup(func() {
		if lines := readLines(t, pidFile); len(lines) == 1 {
			if pgid, err := strconv.Atoi(lines[0]); err == nil {
				_ = syscall.Kill(-pgid, syscall.SIGKILL)
			}
		}
	})
	start := time.Now()
	if err := e.Claim(context.Background()); err != nil {
		t.Fatalf("Claim: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Claim waited %s for the script's child", took)
	}
	mustHeld(t, e, true)
}
