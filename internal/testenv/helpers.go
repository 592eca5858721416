package testenv

import (
	"log/slog"
	"math/rand/v2"
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

// FreePortRange returns the first of n consecutive TCP ports on 127.0.0.1
// that were all free a moment ago and that this process has not handed out,
// for settings that take a port range (a register token's ports). It looks
// in 20000-29999: below the kernel's default ephemeral range (32768-60999),
// where the ":0" listeners of [FreePort] and of other programs land, and
// below Kubernetes' NodePort range (30000-32767).
func FreePortRange(tb testing.TB, n int) int {
	tb.Helper()
	const lo, hi = 20000, 30000
	if n < 1 || n > 1000 {
		tb.Fatalf("FreePortRange(%d): n must be from 1 to 1000", n)
	}
	for range 100 {
		first := lo + rand.IntN(hi-lo-n)
		if ok := claimRange(first, n); ok {
			return first
		}
	}
	tb.Fatalf("no %d free consecutive ports in %d-%d on 127.0.0.1", n, lo, hi-1)
	return 0
}

// claimRange marks ports first..first+n-1 handed out when none was and
// every one can be listened on now.
func claimRange(first, n int) bool {
	portsMu.Lock()
	defer portsMu.Unlock()
	for p := first; p < first+n; p++ {
		if portsGiven[p] {
			return false
		}
	}
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for p := first; p < first+n; p++ {
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			return false
		}
		lns = append(lns, ln)
	}
	for p := first; p < first+n; p++ {
		portsGiven[p] = true
	}
	return true
}

// FreeAddr returns "127.0.0.1:port" for a port from [FreePort].
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(tb)))
}

// DeadURL returns "http://127.0.0.1:port" where nothing listens, for a
// member that is down. The port comes from [FreePortRange]'s range, below
// the kernel's ephemeral ports: a server closed to make a dead URL frees a
// port that the next ":0" listener (often the test's own live member) may
// be handed, and the "dead" member answers.
func DeadURL(tb testing.TB) string {
	tb.Helper()
	return "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePortRange(tb, 1)))
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
