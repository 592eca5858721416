package testenv

import (
	"log/slog"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago, for
// programs that take a port number rather than a listener. Prefer handing a
// ":0" listener to the code under test where it accepts one. A port is
// handed out once per test process: the kernel may offer a port it just
// gave back, and two agents of one test given the same port would fail.
func FreePort(tb testing.TB) int {
	tb.Helper()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		portsMu.Lock()
		taken := portsGiven[port]
		portsGiven[port] = true
		portsMu.Unlock()
		if !taken {
			return port
		}
	}
	tb.Fatal("no port on 127.0.0.1 that this process has not handed out already")
	return 0
}

// FreeAddr returns "127.0.0.1:port" for a port from [FreePort].
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(tb)))
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// PollInterval is how often [Eventually] checks its condition.
const PollInterval = 10 * time.Millisecond

// Eventually checks cond every [PollInterval] until it holds, and fails tb
// when it still does not after timeout; what names the awaited condition in
// the failure.
func Eventually(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	EventuallyEvery(tb, timeout, PollInterval, what, cond)
}

// EventuallyEvery is [Eventually] checking every interval: shorter for a
// condition that holds only for a moment, longer for an expensive one.
func EventuallyEvery(tb testing.TB, timeout, interval time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(interval)
	}
}

// Logger returns a debug-level logger writing to tb.Log, so component logs
// print only when a test fails. Lines logged after the test has ended (by
// goroutines winding down) are dropped: testing panics on a Log after
// completion.
func Logger(tb testing.TB) *slog.Logger {
	w := &tbWriter{tb: tb}
	tb.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tbWriter struct {
	tb   testing.TB
	mu   sync.Mutex
	done bool
}

func (w *tbWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.tb.Log(string(p))
	}
	return len(p), nil
}

// WaitClosed fails tb when done is not closed within timeout; what names
// what should have finished.
func WaitClosed(tb testing.TB, done <-chan struct{}, timeout time.Duration, what string) {
	tb.Helper()
	select {
	case <-done:
	case <-time.After(timeout):
		tb.Fatalf("%s did not finish within %v", what, timeout)
	}
}

// SkipShort skips tb under `go test -short` (make test-short), for a test
// that takes seconds: why says what the full run covers that the short one
// does not.
func SkipShort(tb testing.TB, why string) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("slow (" + why + "); make test runs it")
	}
}
