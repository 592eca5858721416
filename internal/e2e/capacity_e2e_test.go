package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// TestE2ECapacityAdmission runs an agent (and its real HAProxy) under a
// 700-descriptor limit, without the dynamic range: room for about 60
// routes with one health-checked backend each. Routes are added until the
// leader refuses one with 507 naming the need and the limit; every route it
// acknowledged is applied (HAProxy serves the whole table, nothing held
// back), and a delete is still admitted. Before admission, writes went on
// being acknowledged until a reload failed and the applied index stopped.
func TestE2ECapacityAdmission(t *testing.T) {
	requireHAProxy(t)
	a := newDevAgent(t, []string{"DRAWBRIDGE_HAPROXY_DYNAMIC_PORTS=off"})
	a.fdLimit = 700
	a.start()
	a.waitReady()
	be := startBackend(t, "cap")

	var added []int
	var refusal string
	// Below the ephemeral ports, so no other test process listens on one
	// of them by chance and has its route held back.
	first := testenv.FreePortRange(t, 200)
	for i := 0; i < 200 && refusal == ""; i++ {
		port := first + i
		code, body := a.request("PUT", fmt.Sprintf("/v1/routes/%d", port), bearer(), map[string]any{
			"name": fmt.Sprintf("r%d", i), "backends": []map[string]any{{"address": "127.0.0.1", "port": be.port()}}})
		switch code {
		case 200:
			added = append(added, port)
		case 507:
			refusal = string(body)
		default:
			t.Fatalf("route %d: %d %s", i, code, body)
		}
	}
	if refusal == "" {
		t.Fatalf("200 routes admitted under a 700-descriptor limit")
	}
	t.Logf("%d routes admitted, then: %s", len(added), refusal)
	for _, want := range []string{"file descriptors", "listeners and health checks", "LimitNOFILE"} {
		if !strings.Contains(refusal, want) {
			t.Errorf("507 does not say %q: %s", want, refusal)
		}
	}
	if len(added) < 20 {
		t.Fatalf("only %d routes admitted: the capacity is computed far too low", len(added))
	}

	// Everything acknowledged is applied: the whole table, nothing held back.
	var st struct {
		State   struct{ Index uint64 } `json:"state"`
		HAProxy struct {
			AppliedIndex  uint64            `json:"applied_index"`
			FailedPorts   []json.RawMessage `json:"failed_ports"`
			RouteCapacity int               `json:"route_capacity"`
			RouteNeeds    int               `json:"route_needs"`
			FDLimit       int               `json:"descriptor_limit"`
		} `json:"haproxy"`
	}
	testenv.Eventually(t, 30*time.Second, "every admitted route applied", func() bool {
		code, body := a.request("GET", "/v1/status", bearer(), nil)
		return code == 200 && json.Unmarshal(body, &st) == nil && st.HAProxy.AppliedIndex >= st.State.Index && len(st.HAProxy.FailedPorts) == 0
	})
	if st.HAProxy.FDLimit != 700 || st.HAProxy.RouteNeeds != 2*len(added) || st.HAProxy.RouteCapacity < st.HAProxy.RouteNeeds {
		t.Errorf("status capacity: limit %d, %d of %d for routes; want limit 700 and %d needed",
			st.HAProxy.FDLimit, st.HAProxy.RouteNeeds, st.HAProxy.RouteCapacity, 2*len(added))
	}
	for _, p := range []int{added[0], added[len(added)-1]} {
		if got, err := dialRead(fmt.Sprintf("127.0.0.1:%d", p)); err != nil || got != "cap" {
			t.Fatalf("admitted route %d not served: %q %v", p, got, err)
		}
	}
	// A delete frees room and is never refused.
	if code, body := a.request("DELETE", fmt.Sprintf("/v1/routes/%d", added[0]), bearer(), nil); code != 200 {
		t.Fatalf("delete at capacity: %d %s", code, body)
	}
}
