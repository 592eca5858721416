package haproxy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestValidateBrokenConfig(t *testing.T) {
	bin := haproxyBin(t)
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	cfg := Render(Settings{MaxConn: 100}, []Frontend{route(18080, "web", 9000)})
	cfg = append(cfg, "    server s_bad 10.0.0.1:1 bogus-keyword\n"...)
	line := strings.Count(string(cfg), "\n")
	if err := os.WriteFile(path, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	err := Validate(context.Background(), bin, path)
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("err = %v (%T), want *ValidationError", err, err)
	}
	msg := ve.Error()
	for _, want := range []string{path + ":" + itoa(line) + "]", "bogus-keyword"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
	if strings.Contains(msg, "[ALERT]") {
		t.Errorf("error keeps the raw prefix: %q", msg)
	}
	if !strings.Contains(ve.Output, "[ALERT]") {
		t.Errorf("raw output not kept: %q", ve.Output)
	}
	t.Logf("error: %v", ve)
}

func TestValidateGoodAndMissingBinary(t *testing.T) {
	bin := haproxyBin(t)
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, Render(Settings{}, nil), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Validate(context.Background(), bin, path); err != nil {
		t.Fatalf("empty config: %v", err)
	}
	err := Validate(context.Background(), filepath.Join(t.TempDir(), "no-haproxy"), path)
	var ve *ValidationError
	if err == nil || errors.As(err, &ve) {
		t.Fatalf("missing binary: err = %v, want a plain error", err)
	}
	if _, err := NewManager(Config{Bin: "drawbridge-no-such-haproxy", Dir: t.TempDir()}); err == nil ||
		!strings.Contains(err.Error(), "apt-get install haproxy") {
		t.Fatalf("NewManager with missing binary: %v", err)
	}
}

func TestParseAlerts(t *testing.T) {
	out := `[NOTICE]   (3748) : haproxy version is 2.6.12-1+deb12u4
[ALERT]    (3748) : config : parsing [b.cfg:5] : 'bind' : invalid character 'x' in port number 'x' in ':x'
[ALERT]    (3748) : config : parsing [b.cfg:7] : 'listen' expects an <id> argument
[ALERT]    (3748) : config : Error(s) found in configuration file : b.cfg
`
	got := parseAlerts(out)
	want := []string{
		"parsing [b.cfg:5] : 'bind' : invalid character 'x' in port number 'x' in ':x'",
		"parsing [b.cfg:7] : 'listen' expects an <id> argument",
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("parseAlerts = %q, want %q", got, want)
	}
	if g := parseAlerts("[ALERT]    (1) : [haproxy.main()] Cannot raise FD limit to 40043, limit is 20000.\n"); len(g) != 1 ||
		g[0] != "[haproxy.main()] Cannot raise FD limit to 40043, limit is 20000." {
		t.Fatalf("parseAlerts(startup) = %q", g)
	}
}

func TestParseShowProc(t *testing.T) {
	out := `#<PID>          <type>          <reloads>       <uptime>        <version>      
3385            master          2 [failed: 1]   0d00h00m08s     2.6.12-1+deb12u4
# workers
3386            worker          1               0d00h00m08s     2.6.12-1+deb12u4
3390            worker          0               0d00h00m01s     2.6.12-1+deb12u4
# programs

`
	p, err := parseShowProc(out)
	if err != nil {
		t.Fatal(err)
	}
	if p.MasterPID != 3385 || p.Reloads != 2 || p.Failed != 1 || p.Version != "2.6.12-1+deb12u4" ||
		len(p.Workers) != 2 || !p.hasNewWorker() || p.currentWorker() != 3390 {
		t.Fatalf("parsed %+v", p)
	}
	// A failed reload leaves the worker that survived it serving.
	kept := procInfo{Workers: []workerInfo{{PID: 10, Reloads: 3}, {PID: 11, Reloads: 1}}}
	if kept.hasNewWorker() || kept.currentWorker() != 11 || (procInfo{}).currentWorker() != 0 {
		t.Fatalf("current worker of %+v: %d", kept, kept.currentWorker())
	}
	if _, err := parseShowProc("Unknown command\n"); !errors.Is(err, errNoMaster) {
		t.Fatalf("err = %v", err)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// The check runs HAProxy with the master's scrubbed environment, not the
// agent's (which may hold a token).
func TestValidateScrubsEnvironment(t *testing.T) {
	t.Setenv("DRAWBRIDGE_API_TOKEN", "fake-secret-in-the-agent-env")
	dir := t.TempDir()
	dump := filepath.Join(dir, "env")
	bin := filepath.Join(dir, "haproxy")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nenv > "+dump+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Validate(context.Background(), bin, filepath.Join(dir, "haproxy.cfg")); err != nil {
		t.Fatal(err)
	}
	env, err := os.ReadFile(dump)
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range strings.Split(strings.TrimSpace(string(env)), "\n") {
		// sh itself adds PWD (and SHLVL, _ in some shells).
		k, _, _ := strings.Cut(kv, "=")
		if !slices.Contains([]string{"PATH", "PWD", "SHLVL", "_"}, k) {
			t.Errorf("haproxy -c saw %q", kv)
		}
	}
}
