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

// checkConfig runs `drawbridge agent --check-config --config path` and fails
// the test with the agent's message when it rejects the file.
func checkConfig(t *testing.T, path string) {
	t.Helper()
	cmd := exec.Command(drawbridgeBinary(t), "agent", "--check-config", "--config", path)
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("drawbridge agent --check-config --config %s: %v\n%s", filepath.Base(path), err, out)
		return
	}
	if !bytes.Contains(out, []byte("configuration is valid")) {
		t.Errorf("check-config said %q", out)
	}
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

func TestSampleConfig(t *testing.T) {
	t.Parallel()
	checkConfig(t, "drawbridge.yaml")

	// The package installs it: secrets come from files, never inline.
	b, err := os.ReadFile("drawbridge.yaml")
	if err != nil {
		t.Fatal(err)
	}
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
	t.Parallel()
	const path = "systemd/drawbridge.service"
	u := parseUnit(t, path)
	want := map[string]string{
		"User":                  "drawbridge",
		"Group":                 "drawbridge",
		"ExecStart":             "/usr/bin/drawbridge agent --config /etc/drawbridge/drawbridge.yaml",
		"KillSignal":            "SIGTERM",
		"KillMode":              "process", // HAProxy outlives the agent
		"TimeoutStopSec":        "30s",
		"Restart":               "on-failure",
		"NoNewPrivileges":       "yes",
		"ProtectSystem":         "strict",
		"ProtectHome":           "yes",
		"PrivateTmp":            "yes",
		"ReadWritePaths":        "/var/lib/drawbridge",
		"StateDirectory":        "drawbridge",
		"LimitNOFILE":           "1048576",
		"AmbientCapabilities":   "CAP_NET_BIND_SERVICE CAP_NET_ADMIN CAP_NET_RAW",
		"CapabilityBoundingSet": "CAP_NET_BIND_SERVICE CAP_NET_ADMIN CAP_NET_RAW",
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
