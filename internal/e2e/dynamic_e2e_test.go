package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// TestE2EDynamicRange: with haproxy.dynamic_ports set, the recipe's webhook
// adds and removes a route in the range without a reload, its neighbours
// are refused, /v1/status and `drawbridge status` report the range and the
// workers, and a route outside the range still reloads.
func TestE2EDynamicRange(t *testing.T) {
	requireHAProxy(t)
	first := testenv.FreePortRange(t, 20)
	a := startDevAgentEnv(t, []string{fmt.Sprintf("DRAWBRIDGE_HAPROXY_DYNAMIC_PORTS=%d-%d", first, first+19)})
	be := startBackend(t, "dynamic")
	legacy := map[string]string{"X-Funkypenguin-Token": testToken}
	reloads := func() float64 {
		h := a.status()["haproxy"].(map[string]any)
		return h["reloads"].(float64)
	}
	r0 := reloads()

	port := first + 7
	if code, body := a.request("POST", "/hooks/update-haproxy", legacy, hookPayload("game", port, be.port(), "127.0.0.1", "add")); code != 200 {
		t.Fatalf("add: %d %s", code, body)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	testenv.Eventually(t, 10*time.Second, "route in the range live", func() bool {
		got, err := dialRead(addr)
		return err == nil && got == "dynamic"
	})
	if _, err := dialRead(fmt.Sprintf("127.0.0.1:%d", port+1)); err == nil {
		t.Fatal("the neighbouring port of the range answers")
	}
	if r := reloads(); r != r0 {
		t.Fatalf("a route in the range reloaded HAProxy (%v -> %v)", r0, r)
	}
	h := a.status()["haproxy"].(map[string]any)
	if h["dynamic_ports"] != fmt.Sprintf("%d-%d", first, first+19) || h["runtime_updates"].(float64) < 1 {
		t.Fatalf("status does not report the range: %v", h)
	}
	if w, ok := h["workers"].(map[string]any); !ok || w["old_workers_budget_bytes"].(float64) != 256<<20 {
		t.Fatalf("status does not report the workers and the default budget: %v", h["workers"])
	}
	out, err := runCLI(a, "status")
	if err != nil || !strings.Contains(out, "dynamic ports") || !strings.Contains(out, "old workers") {
		t.Fatalf("drawbridge status: %v\n%s", err, out)
	}

	// Removed without a reload.
	if code, body := a.request("POST", "/hooks/update-haproxy", legacy, hookPayload("game", port, be.port(), "127.0.0.1", "delete")); code != 200 {
		t.Fatalf("delete: %d %s", code, body)
	}
	testenv.Eventually(t, 10*time.Second, "route in the range gone", func() bool {
		_, err := dialRead(addr)
		return err != nil
	})
	if r := reloads(); r != r0 {
		t.Fatalf("removing a route in the range reloaded HAProxy (%v -> %v)", r0, r)
	}

	// Outside the range: today's path, a reload.
	outside := testenv.FreePort(t)
	if code, body := a.request("POST", "/hooks/update-haproxy", legacy, hookPayload("web", outside, be.port(), "127.0.0.1", "add")); code != 200 {
		t.Fatalf("add outside: %d %s", code, body)
	}
	testenv.Eventually(t, 10*time.Second, "route outside the range live", func() bool {
		got, err := dialRead(fmt.Sprintf("127.0.0.1:%d", outside))
		return err == nil && got == "dynamic"
	})
	// The new worker answers a moment before the reload is confirmed.
	testenv.Eventually(t, 10*time.Second, "the reload to be confirmed", func() bool { return reloads() == r0+1 })
}
