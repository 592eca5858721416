// Package deploy_test checks what deploy/ ships: the Terraform for
// DigitalOcean (parsed and evaluated with hcl/v2, since the providers cannot
// be downloaded here), the cloud-init it renders (every node's agent config
// goes through `drawbridge agent --check-config`), the first-boot scripts,
// the systemd unit, the sample config and the Debian package (built with
// nfpm, inspected, and installed with dpkg when the test runs as root).
package deploy_test

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// tmpRoot holds what the tests build once (the drawbridge binary).
var tmpRoot string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "drawbridge-deploy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tmpRoot = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// repoRoot is the module root (the tests run in deploy/).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// testVersion is stamped into the binary the tests build.
const testVersion = "0.0.0-deploytest"

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
	buildOut  []byte
)

// drawbridgeBinary builds ./cmd/drawbridge once, static like `make dist`,
// and returns its path.
func drawbridgeBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildPath = filepath.Join(tmpRoot, "drawbridge")
		cmd := exec.Command(goTool(), "build", "-trimpath", "-buildvcs=false",
			"-ldflags", "-s -w -X main.version="+testVersion,
			"-o", buildPath, "./cmd/drawbridge")
		cmd.Dir = repoRoot(t)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("go build ./cmd/drawbridge: %v\n%s", buildErr, buildOut)
	}
	return buildPath
}

// goTool is the go command that runs these tests.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	// Not on PATH: try the usual install location; the error names it.
	return "/usr/local/go/bin/go"
}

// checkConfig runs `drawbridge agent --check-config --config path` (with
// more flags, such as --node-name) and fails the test with the agent's
// message when it rejects the file. The files the config names must exist:
// check-config opens them all.
func checkConfig(t *testing.T, path string, flags ...string) {
	t.Helper()
	wantValid(t, exec.Command(drawbridgeBinary(t), append([]string{"agent", "--check-config", "--config", path}, flags...)...))
}

// checkConfigRefused runs check-config on path, whose files are missing,
// and wants it refused with a message naming each of missing.
func checkConfigRefused(t *testing.T, path string, missing []string) {
	t.Helper()
	wantRefused(t, exec.Command(drawbridgeBinary(t), "agent", "--check-config", "--config", path), missing)
}

// wantValid runs cmd, a check-config, without DRAWBRIDGE_* variables and
// wants "configuration is valid".
func wantValid(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
		return
	}
	if !bytes.Contains(out, []byte("configuration is valid")) {
		t.Errorf("%s said %q", strings.Join(cmd.Args, " "), out)
	}
}

// wantRefused runs cmd, a check-config, and wants it to fail with a
// message naming each of missing as a file that does not exist (and no word
// of "valid").
func wantRefused(t *testing.T, cmd *exec.Cmd, missing []string) {
	t.Helper()
	if len(missing) == 0 {
		t.Fatalf("%s: no missing file to be named", strings.Join(cmd.Args, " "))
	}
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	if err == nil || bytes.Contains(out, []byte("configuration is valid")) {
		t.Errorf("%s accepted a config whose files are missing: %v\n%s", strings.Join(cmd.Args, " "), err, out)
		return
	}
	for _, f := range missing {
		if !bytes.Contains(out, []byte(f+": no such file or directory")) {
			t.Errorf("%s does not name the missing %s:\n%s", strings.Join(cmd.Args, " "), f, out)
		}
	}
}

// relocatedConfig writes the agent config data into a new temp dir with
// its /etc/drawbridge paths moved into that dir, and returns the dir, the
// config's path and the files the config names there.
func relocatedConfig(t *testing.T, data []byte) (dir, path string, files []string) {
	t.Helper()
	dir = t.TempDir()
	path = filepath.Join(dir, "drawbridge.yaml")
	if err := os.WriteFile(path, testenv.Relocate(data, dir), 0o640); err != nil {
		t.Fatal(err)
	}
	for _, f := range testenv.ConfigPaths(data) {
		files = append(files, filepath.Join(dir, strings.TrimPrefix(f, testenv.EtcDir+"/")))
	}
	return dir, path, files
}

// cleanEnv is the environment without DRAWBRIDGE_* variables, which would
// override the file under test.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DRAWBRIDGE_") {
			env = append(env, kv)
		}
	}
	return env
}

// TestSampleConfig: the packaged config, with the files its setup steps
// create (made by drawbridge keygen and drawbridge tls, in a temp dir), is
// valid; as shipped, without them, check-config refuses it and names each
// one, as the agent would fail at start.
func TestSampleConfig(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("drawbridge.yaml")
	if err != nil {
		t.Fatal(err)
	}
	named := testenv.ConfigPaths(b)
	for _, want := range []string{"/etc/drawbridge/token", "/etc/drawbridge/gossip.key",
		"/etc/drawbridge/tls/ca.pem", "/etc/drawbridge/tls/node.pem", "/etc/drawbridge/tls/node-key.pem"} {
		if !slices.Contains(named, want) {
			t.Errorf("the sample config does not name %s (it names %q)", want, named)
		}
	}

	_, shipped, files := relocatedConfig(t, b)
	checkConfigRefused(t, shipped, files)

	cfg := testenv.ConfigWithSecrets(t, drawbridgeBinary(t), "drawbridge.yaml", t.TempDir(), "edge-1")
	checkConfig(t, cfg, "--node-name", "edge-1")

	// The package installs it: secrets come from files, never inline.
	for _, line := range strings.Split(string(b), "\n") {
		l := strings.TrimSpace(line)
		if strings.HasPrefix(l, "token:") || strings.HasPrefix(l, "key:") || strings.HasPrefix(l, "tokens:") {
			t.Errorf("the sample config sets a secret inline: %q", line)
		}
	}
	if !strings.Contains(string(b), "token_file: /etc/drawbridge/token") {
		t.Error("the sample config should read the API token from /etc/drawbridge/token")
	}
}

// unitFile is a parsed systemd unit: section -> key -> values in order.
type unitFile map[string]map[string][]string

func parseUnit(t *testing.T, path string) unitFile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not a unit file line: %q", path, n, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

func (u unitFile) get(section, key string) string {
	vs := u[section][key]
	if len(vs) == 0 {
		return ""
	}
	return vs[len(vs)-1]
}

func TestSystemdUnit(t *testing.T) {
	testenv.SkipShort(t, "checks the unit with systemd-analyze and the built agent")
	t.Parallel()
	const path = "systemd/drawbridge.service"
	u := parseUnit(t, path)
	want := map[string]string{
		"User":            "drawbridge",
		"Group":           "drawbridge",
		"ExecStart":       "/usr/bin/drawbridge agent --config /etc/drawbridge/drawbridge.yaml",
		"KillSignal":      "SIGTERM",
		"KillMode":        "process", // HAProxy outlives the agent
		"TimeoutStopSec":  "30s",
		"Restart":         "on-failure",
		"NoNewPrivileges": "yes",
		"ProtectSystem":   "strict",
		"ProtectHome":     "yes",
		"PrivateTmp":      "yes",
		"ReadWritePaths":  "/var/lib/drawbridge",
		"StateDirectory":  "drawbridge",
		"LimitNOFILE":     "1048576",
		// Only what the agent and the digitalocean provider need; the vip
		// provider's CAP_NET_ADMIN and CAP_NET_RAW come from a drop-in.
		"AmbientCapabilities":   "CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID CAP_SYS_CHROOT CAP_KILL",
		"CapabilityBoundingSet": "CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID CAP_SYS_CHROOT CAP_KILL",
		"SecureBits":            "noroot-locked",
		"SystemCallFilter":      "~@swap @reboot @raw-io @module @obsolete @cpu-emulation @debug",
		"ProtectProc":           "default", // the agent reads the RSS of HAProxy's workers (another user)
		"ProcSubset":            "pid",
		"StateDirectoryMode":    "0711",
	}
	for k, v := range want {
		if got := u.get("Service", k); got != v {
			t.Errorf("[Service] %s = %q, want %q", k, got, v)
		}
	}
	if got := u.get("Service", "ExecReload"); got != "" {
		t.Errorf("ExecReload = %q: the agent reloads HAProxy itself; systemctl reload has no meaning", got)
	}
	if !slices.Contains(strings.Fields(u.get("Unit", "After")), "network-online.target") {
		t.Error("the unit should start after network-online.target (raft and gossip bind the VPC address)")
	}
	if got := u.get("Install", "WantedBy"); got != "multi-user.target" {
		t.Errorf("WantedBy = %q", got)
	}
	for _, k := range []string{"ExecStop", "RuntimeDirectory"} {
		if u.get("Service", k) != "" {
			t.Errorf("%s is set: ExecStop would stop HAProxy's manager differently from SIGTERM, and a RuntimeDirectory is removed at stop while HAProxy still uses its sockets", k)
		}
	}

	// systemd's own parser, when it is installed. ExecStart must exist, so
	// point it at the binary the test built.
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze is not installed; skipping systemd-analyze verify")
		return
	}
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(t.TempDir(), "drawbridge.service")
	if err := os.WriteFile(unit, bytes.ReplaceAll(src, []byte("/usr/bin/drawbridge"), []byte(drawbridgeBinary(t))), 0o644); err != nil {
		t.Fatal(err)
	}
	verifyUnit(t, sa, unit)
}

// verifyUnit runs systemd-analyze verify; it exits 0 on unknown keys, so any
// output counts as a failure.
func verifyUnit(t *testing.T, systemdAnalyze, unit string) {
	t.Helper()
	out, err := exec.Command(systemdAnalyze, "verify", unit).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, out)
	}
}
