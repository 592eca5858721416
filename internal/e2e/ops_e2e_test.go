package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/api/client"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

func TestE2ESnapshotSaveRestore(t *testing.T) {
	requireHAProxy(t)
	a := startDevAgent(t)
	for _, p := range []int{testenv.FreePort(t), testenv.FreePort(t)} {
		if code, body := a.request("PUT", fmt.Sprintf("/v1/routes/%d", p), bearer(),
			map[string]any{"name": fmt.Sprintf("r%d", p), "backends": []map[string]any{{"address": "10.1.2.3", "port": 80}}}); code != 200 {
			t.Fatalf("put: %d %s", code, body)
		}
	}
	file := filepath.Join(t.TempDir(), "table.json")
	if out, err := runCLI(a, "snapshot", "save", file); err != nil {
		t.Fatalf("save: %v\n%s", err, out)
	}
	_, before := a.request("GET", "/v1/routes", bearer(), nil)
	var list client.RouteList
	json.Unmarshal(before, &list)
	// Lose one route, then restore.
	if code, body := a.request("DELETE", fmt.Sprintf("/v1/routes/%d", list.Routes[0].Port), bearer(), nil); code != 200 {
		t.Fatalf("delete: %d %s", code, body)
	}
	if out, err := runCLI(a, "snapshot", "restore", file); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	_, after := a.request("GET", "/v1/routes", bearer(), nil)
	var restored client.RouteList
	json.Unmarshal(after, &restored)
	if len(restored.Routes) != 2 {
		t.Fatalf("after restore: %s", after)
	}
	// A file that is not a snapshot is refused with a clear message.
	bad := filepath.Join(t.TempDir(), "bad.json")
	writeFile(t, bad, `{"format": 99, "routes": []}`)
	if out, err := runCLI(a, "snapshot", "restore", bad); err == nil || !strings.Contains(out, "400") {
		t.Errorf("bad snapshot accepted: %v\n%s", err, out)
	}
}

// TestE2EPairWithoutWitnessRecover: one node of a pair dies for good. The
// survivor keeps serving traffic, refuses writes with the explanatory 503,
// and after `drawbridge raft recover` on its stopped data dir it continues
// alone.
func TestE2EPairWithoutWitnessRecover(t *testing.T) {
	requireHAProxy(t)
	c := startLocalCluster(t, 2)
	be := startBackend(t, "pair")
	fport := testenv.FreePort(t)
	var leader *testAgent
	testenv.Eventually(t, 15*time.Second, "a leader", func() bool { leader = c.leader(); return leader != nil })
	if code, body := leader.request("POST", "/hooks/update-haproxy?wait=applied", bearer(), hookPayload("pair", fport, be.port(), "127.0.0.1", "add")); code != 200 {
		t.Fatalf("add: %d %s", code, body)
	}
	survivorIdx := 0
	if c.agents[0] == leader {
		survivorIdx = 1
	}
	survivor := c.agents[survivorIdx]
	survivorAddr := fmt.Sprintf("127.0.1.%d:%d", survivorIdx+1, fport)
	leader.kill()
	stopHAProxyIn(filepath.Join(leader.dir, "haproxy"))

	// Traffic still flows through the survivor; writes are refused, explained.
	var msg string
	testenv.Eventually(t, 15*time.Second, "the survivor refuses writes", func() bool {
		code, body := survivor.tryRequest("POST", "/hooks/update-haproxy", bearer(), hookPayload("more", testenv.FreePort(t), be.port(), "127.0.0.1", "add"))
		msg = string(body)
		return code == 503
	})
	if !strings.Contains(msg, "quorum") || !strings.Contains(msg, "raft recover") {
		t.Errorf("503 does not explain: %s", msg)
	}
	if got, err := dialRead(survivorAddr); err != nil || got != "pair" {
		t.Fatalf("survivor stopped serving: %q %v", got, err)
	}

	// Runbook: stop the survivor, recover its peer set, start it again.
	survivor.stop()
	out, err := exec2(binPath, "raft", "recover", "--data-dir", survivor.dir)
	if err != nil {
		t.Fatalf("raft recover: %v\n%s", err, out)
	}
	out, err = exec2(binPath, "raft", "peers", "--data-dir", survivor.dir)
	if err != nil || strings.Count(out, "\n") != 2 || !strings.Contains(out, survivor.name) {
		t.Fatalf("peers after recover: %v\n%s", err, out)
	}
	survivor.start()
	survivor.waitReady()
	if code, body := survivor.request("POST", "/hooks/update-haproxy", bearer(), hookPayload("after", testenv.FreePort(t), be.port(), "127.0.0.1", "add")); code != 200 {
		t.Fatalf("write after recover: %d %s", code, body)
	}
	if got, err := dialRead(survivorAddr); err != nil || got != "pair" {
		t.Errorf("old route after recover: %q %v", got, err)
	}
}

// TestE2ELeaveRemovesVoter: `drawbridge leave` stops a follower gracefully;
// the cluster removes it from the voters and keeps accepting writes.
func TestE2ELeaveRemovesVoter(t *testing.T) {
	requireHAProxy(t)
	c := startLocalCluster(t, 3)
	var leader *testAgent
	testenv.Eventually(t, 15*time.Second, "a leader", func() bool { leader = c.leader(); return leader != nil })
	follower := c.others(leader)[0]
	out, err := exec2(binPath, "leave", "--data-dir", follower.dir)
	if err != nil {
		t.Fatalf("leave: %v\n%s", err, out)
	}
	testenv.Eventually(t, 10*time.Second, "agent exited", func() bool { return !follower.running() })
	testenv.Eventually(t, 10*time.Second, "leaver removed from voters", func() bool {
		code, body := leader.tryRequest("GET", "/v1/cluster", bearer(), nil)
		if code != 200 {
			return false
		}
		var st struct {
			Members []struct {
				Name   string `json:"name"`
				Status string `json:"status"`
				Voter  bool   `json:"voter"`
			} `json:"members"`
		}
		json.Unmarshal(body, &st)
		for _, m := range st.Members {
			if m.Name == follower.name {
				return m.Status == "left" && !m.Voter
			}
		}
		return false
	})
	if code, body := leader.request("PUT", "/v1/routes/"+strconv.Itoa(testenv.FreePort(t)), bearer(), map[string]any{"name": "after-leave"}); code != 200 {
		t.Fatalf("write after leave: %d %s", code, body)
	}
}

// exec2 runs a command and returns its combined output.
func exec2(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
