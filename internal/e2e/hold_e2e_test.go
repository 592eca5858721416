package e2e

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// TestE2EFirstWriteHeldUntilLeader: a dev agent whose API answers before
// its raft node has elected itself (slow raft timings make that window
// seconds long) holds a write until it leads, and answers 200, where it
// used to answer 503.
func TestE2EFirstWriteHeldUntilLeader(t *testing.T) {
	requireHAProxy(t)
	a := newDevAgent(t, []string{
		"DRAWBRIDGE_RAFT_HEARTBEAT_TIMEOUT=3s", "DRAWBRIDGE_RAFT_ELECTION_TIMEOUT=3s", "DRAWBRIDGE_API_HOLD_TIMEOUT=30s",
		"DRAWBRIDGE_API_APPLY_TIMEOUT=40s"})
	a.start()
	var st struct {
		Raft struct {
			Leader string `json:"leader"`
		} `json:"raft"`
	}
	testenv.Eventually(t, 30*time.Second, "the API to answer", func() bool {
		code, body := a.tryRequest("GET", "/v1/status", bearer(), nil)
		return code == 200 && json.Unmarshal(body, &st) == nil
	})
	if st.Raft.Leader != "" {
		t.Fatalf("raft had a leader (%s) before the first write: the test does not reach the election window", st.Raft.Leader)
	}
	be := startBackend(t, "held")
	port := testenv.FreePort(t)
	code, body := a.request("POST", "/hooks/update-haproxy", bearer(), hookPayload("held", port, be.port(), "127.0.0.1", "add"))
	if code != 200 {
		t.Fatalf("write during the first election: %d %s", code, body)
	}
	testenv.Eventually(t, 15*time.Second, "the held write live", func() bool {
		got, err := dialRead(fmt.Sprintf("127.0.0.1:%d", port))
		return err == nil && got == "held"
	})
}
