package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/api/client"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// sidecarProc is a `drawbridge register` process (the pod sidecar).
type sidecarProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	logs   *testenv.Buffer
	exited chan struct{}
}

// startSidecar runs the sidecar with the recipe's variables plus WEBHOOKS.
func startSidecar(t *testing.T, c *localCluster, name string, fport, bport int, interval, ttl string) *sidecarProc {
	t.Helper()
	var urls []string
	for _, a := range c.agents {
		urls = append(urls, a.url(""))
	}
	r := &sidecarProc{t: t, logs: &testenv.Buffer{}, exited: make(chan struct{})}
	r.cmd = exec.Command(binPath, "register")
	r.cmd.Env = append(os.Environ(),
		"DRAWBRIDGE_API_TOKEN="+testToken,
		"NAME="+name,
		fmt.Sprintf("FRONTEND_PORT=%d", fport),
		fmt.Sprintf("BACKEND_PORT=%d", bport),
		"DST_IP=127.0.0.1",
		"WEBHOOKS="+strings.Join(urls, ","),
		"REPEAT_INTERVAL="+interval,
		"TTL="+ttl,
	)
	r.cmd.Stdout, r.cmd.Stderr = r.logs, r.logs
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.cmd.Wait(); close(r.exited) }()
	t.Cleanup(func() {
		r.cmd.Process.Kill()
		<-r.exited
		if t.Failed() {
			t.Logf("registrar %s logs:\n%s", name, r.logs.String())
		}
	})
	return r
}

func (r *sidecarProc) signal(sig syscall.Signal) {
	r.cmd.Process.Signal(sig)
	select {
	case <-r.exited:
	case <-time.After(30 * time.Second):
		r.t.Fatalf("registrar did not exit within 30s of %v", sig)
	}
}

// hasBackend reports whether agent a's table has route fport with a backend
// on bport (ok=false when a cannot answer).
func (a *testAgent) hasBackend(fport, bport int) (has, ok bool) {
	code, body := a.tryRequest("GET", fmt.Sprintf("/v1/routes/%d", fport), bearer(), nil)
	switch code {
	case 404:
		return false, true
	case 200:
	default:
		return false, false
	}
	var r struct {
		Backends []struct {
			Port int `json:"port"`
		} `json:"backends"`
	}
	if json.Unmarshal(body, &r) != nil {
		return false, false
	}
	for _, b := range r.Backends {
		if b.Port == bport {
			return true, true
		}
	}
	return false, true
}

// everywhere reports whether every running agent agrees that the backend
// is present (want=true) or absent (want=false).
func (c *localCluster) everywhere(fport, bport int, want bool) bool {
	for _, a := range c.agents {
		if !a.running() {
			continue
		}
		has, ok := a.hasBackend(fport, bport)
		if !ok || has != want {
			return false
		}
	}
	return true
}

func TestE2ERegisterSidecarAgainstCluster(t *testing.T) {
	requireHAProxy(t)
	c := startLocalCluster(t, 3)
	be := startBackend(t, "pod")
	fport := testenv.FreePort(t)
	reg := startSidecar(t, c, "sidecar", fport, be.port(), "1", "4s")

	// Live through all three HAProxies.
	testenv.Eventually(t, 15*time.Second, "route live on every node", func() bool {
		for i := range c.agents {
			if got, err := dialRead(fmt.Sprintf("127.0.1.%d:%d", i+1, fport)); err != nil || got != "pod" {
				return false
			}
		}
		return true
	})

	// Kill the member it talks to first: it carries on with another, and
	// the lease keeps being renewed well past its TTL.
	c.agents[0].kill()
	deadline := time.Now().Add(8 * time.Second)
	for time.Now().Before(deadline) {
		if !c.everywhere(fport, be.port(), true) {
			t.Fatalf("backend lost after its first member died; sidecarProc logs:\n%s", reg.logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}

	// SIGTERM (pod deletion): deregisters and exits 0.
	reg.signal(syscall.SIGTERM)
	if code := reg.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("registrar exit code %d after SIGTERM", code)
	}
	testenv.Eventually(t, 10*time.Second, "backend gone after SIGTERM", func() bool { return c.everywhere(fport, be.port(), false) })
}

func TestE2ERegisterSIGKILLExpiresAfterTTLNotBefore(t *testing.T) {
	requireHAProxy(t)
	c := startLocalCluster(t, 3)
	be := startBackend(t, "pod")
	fport := testenv.FreePort(t)
	const interval, ttl = time.Second, 4 * time.Second
	reg := startSidecar(t, c, "crashy", fport, be.port(), "1", "4s")
	testenv.Eventually(t, 15*time.Second, "registered everywhere", func() bool { return c.everywhere(fport, be.port(), true) })
	time.Sleep(2 * interval) // a few renewals

	reg.signal(syscall.SIGKILL) // no goodbye
	killed := time.Now()
	// The last renewal was at most one interval before the kill, so the
	// lease holds until at least killed+ttl-interval.
	for time.Since(killed) < ttl-interval-500*time.Millisecond {
		if !c.everywhere(fport, be.port(), true) {
			t.Fatalf("backend expired %v after the kill, before its TTL", time.Since(killed).Round(time.Millisecond))
		}
		time.Sleep(100 * time.Millisecond)
	}
	testenv.Eventually(t, 15*time.Second, "backend expired after its TTL", func() bool { return c.everywhere(fport, be.port(), false) })
	t.Logf("backend removed %v after SIGKILL (ttl %v, renew interval %v, reaper interval 1s)",
		time.Since(killed).Round(100*time.Millisecond), ttl, interval)
}

func TestE2ELeaderKillDoesNotExpireLiveBackends(t *testing.T) {
	requireHAProxy(t)
	c := startLocalCluster(t, 3)
	be := startBackend(t, "pod")
	var ports []int
	for i := 0; i < 3; i++ {
		fport := testenv.FreePort(t)
		ports = append(ports, fport)
		startSidecar(t, c, fmt.Sprintf("svc-%d", i), fport, be.port(), "1", "3s")
	}
	testenv.Eventually(t, 15*time.Second, "all registered", func() bool {
		for _, p := range ports {
			if !c.everywhere(p, be.port(), true) {
				return false
			}
		}
		return true
	})
	var leader *testAgent
	testenv.Eventually(t, 10*time.Second, "a leader", func() bool { leader = c.leader(); return leader != nil })
	leader.kill()
	var lost atomic.Int32
	// Two TTLs through the election and the new leader's first sweeps.
	deadline := time.Now().Add(6 * time.Second)
	for time.Now().Before(deadline) {
		for _, a := range c.agents {
			if !a.running() {
				continue
			}
			for _, p := range ports {
				if has, ok := a.hasBackend(p, be.port()); ok && !has {
					lost.Add(1)
					t.Errorf("%s lost the live backend of port %d after the leader died", a.name, p)
				}
			}
		}
		if lost.Load() > 0 {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestE2ERecipeSidecarReposts reproduces the recipe's sidecar: the same
// payload and legacy header posted every second. The route stays live while
// it posts, and its lease (api.hook_lease) cleans it up after it stops.
func TestE2ERecipeSidecarReposts(t *testing.T) {
	requireHAProxy(t)
	a := startDevAgentEnv(t, []string{"DRAWBRIDGE_API_HOOK_LEASE=3s", "DRAWBRIDGE_LEASES_INTERVAL=500ms", "DRAWBRIDGE_LEASES_GRACE=1s"})
	be := startBackend(t, "recipe")
	fport := testenv.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", fport)
	legacy := map[string]string{"X-Funkypenguin-Token": testToken}
	payload := hookPayload("unifi-adoption", fport, be.port(), "127.0.0.1", "add")
	var lastPost time.Time
	for i := 0; i < 6; i++ {
		if code, body := a.request("POST", "/hooks/update-haproxy", legacy, payload); code != 200 {
			t.Fatalf("post %d: %d %s", i, code, body)
		}
		lastPost = time.Now()
		testenv.Eventually(t, 5*time.Second, "route live", func() bool { got, err := dialRead(addr); return err == nil && got == "recipe" })
		time.Sleep(time.Second)
	}
	// 6 s of posting outlived the 3 s lease: renewals work. Now stop.
	testenv.Eventually(t, 15*time.Second, "route gone after the sidecar stopped", func() bool {
		_, err := dialRead(addr)
		return err != nil
	})
	if since := time.Since(lastPost); since < 3*time.Second {
		t.Errorf("route removed %v after the last post, before its 3s lease ended", since)
	}
}

// devRoute reads the route on port from a dev agent: its backends, or ok
// false when there is none.
func devRoute(t *testing.T, a *testAgent, port int) (backends []struct {
	Address   string    `json:"address"`
	Port      int       `json:"port"`
	ExpiresAt time.Time `json:"expires_at"`
}, ok bool) {
	t.Helper()
	code, body := a.request("GET", fmt.Sprintf("/v1/routes/%d", port), bearer(), nil)
	if code == http.StatusNotFound {
		return nil, false
	}
	if code != http.StatusOK {
		t.Fatalf("get route %d: %d %s", port, code, body)
	}
	var r struct {
		Backends []struct {
			Address   string    `json:"address"`
			Port      int       `json:"port"`
			ExpiresAt time.Time `json:"expires_at"`
		} `json:"backends"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("decode route %s: %v", body, err)
	}
	return r.Backends, true
}

// TestRegisterDevAgent runs the registrar against a real agent and HAProxy:
// the route it creates carries traffic, the backend has a lease, and
// cancelling deregisters it (and so removes the implicit route).
func TestRegisterDevAgent(t *testing.T) {
	requireHAProxy(t)
	a := startDevAgent(t)
	be := startBackend(t, "registered")
	fport := testenv.FreePort(t)
	c, err := client.New(client.Config{Members: []string{a.url("")}, Token: testToken})
	if err != nil {
		t.Fatal(err)
	}
	r := client.NewRegistrar(client.RegistrarConfig{
		Interval: 200 * time.Millisecond, TTL: 600 * time.Millisecond,
		FrontendPort: fport, Name: "unifi-adoption", Address: "127.0.0.1", BackendPort: be.port(), Owner: "unifi-5d8f7",
	}, c, testenv.Logger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := r.Run(ctx); err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })

	addr := fmt.Sprintf("127.0.0.1:%d", fport)
	testenv.Eventually(t, 10*time.Second, "registered route live through HAProxy", func() bool {
		got, err := dialRead(addr)
		return err == nil && got == "registered"
	})
	backends, ok := devRoute(t, a, fport)
	if !ok || len(backends) != 1 || backends[0].Port != be.port() || backends[0].ExpiresAt.IsZero() {
		t.Fatalf("route %d backends %+v, want one backend with a lease", fport, backends)
	}
	cancel()
	testenv.WaitClosed(t, done, 15*time.Second, "run after cancel")
	if _, ok := devRoute(t, a, fport); ok {
		t.Errorf("route %d still exists after deregistering its only backend", fport)
	}
}

// TestRegisterBinarySIGTERM runs `drawbridge register` as a process against a
// real agent: SIGTERM deregisters and exits 0 well within the 30 s a pod gets.
func TestRegisterBinarySIGTERM(t *testing.T) {
	requireHAProxy(t)
	if out, err := exec.Command(binPath, "register", "--help").CombinedOutput(); err != nil {
		t.Fatalf("drawbridge register --help: %v: %s", err, out)
	}
	a := startDevAgent(t)
	be := startBackend(t, "sidecar")
	fport := testenv.FreePort(t)
	cmd := exec.Command(binPath, "register")
	cmd.Env = append(os.Environ(),
		"REPEAT_INTERVAL=1", "TTL=5s",
		fmt.Sprintf("FRONTEND_PORT=%d", fport), fmt.Sprintf("BACKEND_PORT=%d", be.port()),
		"NAME=sidecar", "DST_IP=127.0.0.1",
		"WEBHOOK="+a.url("/hooks/update-haproxy"), "WEBHOOK_TOKEN="+testToken,
		"DRAWBRIDGE_API_TOKEN=", "WEBHOOKS=")
	logs := &testenv.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("register logs:\n%s", logs)
		}
	})
	testenv.Eventually(t, 10*time.Second, "sidecar route live", func() bool {
		got, err := dialRead(fmt.Sprintf("127.0.0.1:%d", fport))
		return err == nil && got == "sidecar"
	})
	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("register exited with %v after SIGTERM, want 0", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("register did not exit within 20s of SIGTERM")
	}
	t.Logf("exited %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	if _, ok := devRoute(t, a, fport); ok {
		t.Errorf("route %d still exists after SIGTERM", fport)
	}
	if strings.Contains(logs.String(), testToken) {
		t.Error("the token leaked into the logs")
	}
}
