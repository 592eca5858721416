package testenv

import (
	"net"
	"slices"
	"strconv"
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

func TestConfigPathsAndRelocate(t *testing.T) {
	conf := []byte("# install /etc/drawbridge/commented\napi:\n  token_file: /etc/drawbridge/token # not /etc/drawbridge/other\n" +
		"  tls_cert_file: /etc/drawbridge/tls/node.pem\nraft:\n  tls_cert_file: /etc/drawbridge/tls/node.pem\ndata_dir: /var/lib/drawbridge\n")
	got := ConfigPaths(conf)
	if want := []string{"/etc/drawbridge/token", "/etc/drawbridge/tls/node.pem"}; !slices.Equal(got, want) {
		t.Errorf("ConfigPaths = %q, want %q", got, want)
	}
	r := string(Relocate(conf, "/tmp/x"))
	if !strings.Contains(r, "token_file: /tmp/x/token") || !strings.Contains(r, "/tmp/x/tls/node.pem") ||
		!strings.Contains(r, "data_dir: /tmp/x/data") || strings.Contains(r, "/etc/drawbridge") {
		t.Errorf("Relocate:\n%s", r)
	}
}

func TestFreePortNeverRepeats(t *testing.T) {
	seen := map[int]bool{}
	for range 200 {
		p := FreePort(t)
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
}

func TestFreePortRangeIsFreeAndNeverRepeats(t *testing.T) {
	first := FreePortRange(t, 40)
	if first < 20000 || first+40 > 30000 {
		t.Fatalf("range %d-%d outside 20000-29999", first, first+39)
	}
	for p := first; p < first+40; p++ {
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("port %d of the range is not free: %v", p, err)
		}
		ln.Close()
	}
	second := FreePortRange(t, 40)
	if second < first+40 && first < second+40 {
		t.Fatalf("ranges %d+40 and %d+40 overlap", first, second)
	}
}
