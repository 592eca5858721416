package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// TestE2ECheckConfigOpensNamedFiles: --check-config on the packaged sample
// configuration fails, naming the token file it cannot open, exactly as
// the agent would at start (it used to say "configuration is valid"). With
// the file in place, it passes.
func TestE2ECheckConfigOpensNamedFiles(t *testing.T) {
	if _, err := os.Stat("/etc/drawbridge/token"); err == nil {
		t.Skip("/etc/drawbridge/token exists on this machine: the packaged config would pass")
	}
	sample, err := filepath.Abs("../../deploy/drawbridge.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binPath, "agent", "--check-config", "--config", sample)
	cmd.Env = withoutTokenEnv()
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "open /etc/drawbridge/token: no such file or directory") ||
		strings.Contains(string(out), "configuration is valid") {
		t.Fatalf("check of the packaged config: %v\n%s", err, out)
	}

	// The same config with the token, the gossip key and the node's
	// certificates present (made by drawbridge keygen and drawbridge tls,
	// in a temp dir) passes.
	cfg := testenv.ConfigWithSecrets(t, binPath, sample, t.TempDir(), "edge-1")
	cmd = exec.Command(binPath, "agent", "--check-config", "--config", cfg, "--node-name", "edge-1")
	cmd.Env = withoutTokenEnv()
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "configuration is valid") {
		t.Fatalf("check with the token file present: %v\n%s", err, out)
	}

	// A value that cannot work is refused at load.
	cmd = exec.Command(binPath, "agent", "--check-config", "--config", cfg, "--node-name", "edge-1")
	cmd.Env = append(withoutTokenEnv(), "DRAWBRIDGE_FLOATING_IP_PROVIDER=vip", "DRAWBRIDGE_FLOATING_IP_ADDRESS=192.0.2.10",
		"DRAWBRIDGE_FLOATING_IP_LAG_GRACE=0s")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "floating_ip.lag_grace 0s must be above 0") {
		t.Fatalf("lag_grace 0 accepted: %v\n%s", err, out)
	}
}

func withoutTokenEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "DRAWBRIDGE_") {
			env = append(env, e)
		}
	}
	return env
}

// TestE2EDevRelativeDataDirKeepsRuntimeAPI is `make run`: --dev with its
// default relative data dir. Its HAProxy must get the runtime API (an
// absolute stats socket path), so adding and removing a backend of a
// route reloads nothing; with the relative path the renderer dropped the socket and
// every change reloaded.
func TestE2EDevRelativeDataDirKeepsRuntimeAPI(t *testing.T) {
	requireHAProxy(t)
	wd := t.TempDir()
	a := &testAgent{t: t, dir: filepath.Join(wd, "drawbridge-data"), name: "e2e", apiPort: testenv.FreePort(t), wd: wd}
	a.args = []string{"agent", "--dev", "--node-name", a.name,
		"--api-addr", fmt.Sprintf("127.0.0.1:%d", a.apiPort),
		"--raft-addr", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		"--gossip-addr", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		"--log-level", "debug"}
	t.Cleanup(func() {
		a.stop()
		stopHAProxyIn(filepath.Join(a.dir, "haproxy"))
		if t.Failed() {
			t.Logf("agent logs:\n%s", a.logs.String())
		}
	})
	a.start()
	a.waitReady()
	be1, be2 := startBackend(t, "one"), startBackend(t, "two")
	port := testenv.FreePort(t)
	reloads := func() float64 {
		hs, _ := a.status()["haproxy"].(map[string]any)
		r, _ := hs["reloads"].(float64)
		return r
	}
	if code, body := a.request("POST", "/hooks/update-haproxy?wait=applied", bearer(), hookPayload("demo", port, be1.port(), "127.0.0.1", "add")); code != 200 {
		t.Fatalf("add: %d %s", code, body)
	}
	before := reloads()
	if code, body := a.request("POST", "/hooks/update-haproxy?wait=applied", bearer(), hookPayload("demo", port, be2.port(), "127.0.0.1", "add")); code != 200 {
		t.Fatalf("add second backend: %d %s", code, body)
	}
	if code, body := a.request("POST", "/hooks/update-haproxy?wait=applied", bearer(), hookPayload("demo", port, be1.port(), "127.0.0.1", "delete")); code != 200 {
		t.Fatalf("delete first backend: %d %s", code, body)
	}
	testenv.Eventually(t, 10*time.Second, "the second backend answers", func() bool {
		got, err := dialRead(fmt.Sprintf("127.0.0.1:%d", port))
		return err == nil && got == "two"
	})
	if after := reloads(); after != before {
		t.Fatalf("adding a backend reloaded HAProxy (%v -> %v reloads): the runtime API is off", before, after)
	}
	if strings.Contains(a.logs.String(), "StatsSocket") {
		t.Fatalf("the renderer dropped the stats socket:\n%s", a.logs.String())
	}
}
