// Package testenv decides what a test does when the machine lacks something
// it needs (HAProxy, root, a Debian tool): on a developer's machine the test
// is skipped with a message that says what to install; where the full suite
// is required — DRAWBRIDGE_TEST_FULL=1, which .ci/run sets — it fails, so a
// run can never turn green by skipping what it was meant to test.
package testenv

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
)

// FullEnv names the environment variable that makes missing requirements
// fail instead of skip.
const FullEnv = "DRAWBRIDGE_TEST_FULL"

// Full reports whether the full suite is required.
func Full() bool { return os.Getenv(FullEnv) == "1" }

// Missing skips tb with the message, or fails it when [Full] is true.
func Missing(tb testing.TB, format string, args ...any) {
	tb.Helper()
	msg := fmt.Sprintf(format, args...)
	if Full() {
		tb.Fatalf("%s=1 but %s", FullEnv, msg)
		return
	}
	tb.Skip(msg)
}

// Command returns the path of the named program, or calls [Missing] with
// the Debian package that provides it.
func Command(tb testing.TB, name, debianPackage string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(tb, "%s is not installed (apt-get install %s)", name, debianPackage)
	}
	return p
}

// HAProxy returns the haproxy binary, or calls [Missing].
func HAProxy(tb testing.TB) string {
	tb.Helper()
	return Command(tb, "haproxy", "haproxy")
}

// Root calls [Missing] unless the test runs as root; why says what needs it.
func Root(tb testing.TB, why string) {
	tb.Helper()
	if os.Geteuid() != 0 {
		Missing(tb, "%s need root", why)
	}
}

// Buffer is a bytes.Buffer that is safe for concurrent use, for capturing
// the logs of code under test.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
