package testenv

import (
	"strings"
	"testing"
)

// recorder is a testing.TB that records Skip and Fatal instead of ending
// the goroutine, so both outcomes can be checked.
type recorder struct {
	testing.TB
	skipped, failed string
}

func (r *recorder) Helper()                           {}
func (r *recorder) Skip(args ...any)                  { r.skipped = args[0].(string) }
func (r *recorder) Fatalf(format string, args ...any) { r.failed = format }

func TestMissingSkipsOrFails(t *testing.T) {
	t.Setenv(FullEnv, "")
	r := &recorder{TB: t}
	Command(r, "drawbridge-no-such-program", "some-package")
	if !strings.Contains(r.skipped, "apt-get install some-package") || r.failed != "" {
		t.Errorf("without %s: skipped %q, failed %q; want a skip naming the package", FullEnv, r.skipped, r.failed)
	}

	t.Setenv(FullEnv, "1")
	r = &recorder{TB: t}
	Command(r, "drawbridge-no-such-program", "some-package")
	if r.failed == "" || r.skipped != "" {
		t.Errorf("with %s=1: skipped %q, failed %q; want a failure", FullEnv, r.skipped, r.failed)
	}
}

func TestCommandFindsProgram(t *testing.T) {
	t.Setenv(FullEnv, "1")
	r := &recorder{TB: t}
	if p := Command(r, "go", "golang"); p == "" || r.failed != "" || r.skipped != "" {
		t.Errorf("Command(go) = %q (skipped %q, failed %q); want the go binary that runs this test", p, r.skipped, r.failed)
	}
}
