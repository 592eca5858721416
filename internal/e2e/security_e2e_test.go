package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// Secrets of the scoped tokens (obviously fake).
const (
	opsSecret   = "fake-ops-admin-secret-000"
	unifiSecret = "fake-unifi-register-111"
	gamesSecret = "fake-games-register-2222"
	lateSecret  = "fake-late-reader-333333"
	burstSecret = "fake-burst-register-5555"
)

func tokenHeader(secret string) map[string]string {
	return map[string]string{"Authorization": "Bearer " + secret}
}

// securityAgent starts a dev agent with scoped tokens from a config file,
// loopback backends refused as in production, and the burst token limited
// to 2 requests/s with a burst of 5.
func securityAgent(t *testing.T) (a *testAgent, cfgFile, unifiFile string) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	opsFile := write("ops.secret", opsSecret+"\n")
	unifiFile = write("unifi.secret", "# rotated by hand\n"+unifiSecret+"\n")
	sum := sha256.Sum256([]byte(gamesSecret))
	burstSum := sha256.Sum256([]byte(burstSecret))
	cfgFile = write("drawbridge.yaml", fmt.Sprintf(`api:
  tokens:
    - name: ops
      role: admin
      secret_file: %s
    - name: unifi
      role: register
      secret_file: %s
      ports: ["8000-8099"]
      names: ["unifi-*"]
      max_ttl: 10m
    - name: games
      role: register
      sha256: %s
      ports: ["8000-8099", "27000-27100"]
      names: ["*"]
    - name: burst
      role: register
      sha256: %s
      ports: ["27000-27100"]
      names: ["*"]
      rate: 2
      burst: 5
routes:
  allow_loopback_backends: false
`, opsFile, unifiFile, hex.EncodeToString(sum[:]), hex.EncodeToString(burstSum[:])))
	a = startDevAgentEnv(t, []string{"DRAWBRIDGE_ROUTES_ALLOW_LOOPBACK_BACKENDS=false"}, "--config", cfgFile)
	return a, cfgFile, unifiFile
}

// raftPort is the --raft-addr port the harness gave the agent.
func raftPort(t *testing.T, a *testAgent) int {
	for i, arg := range a.args {
		if arg == "--raft-addr" {
			_, p, _ := strings.Cut(a.args[i+1], ":")
			n, _ := strconv.Atoi(p)
			return n
		}
	}
	t.Fatal("no --raft-addr")
	return 0
}

// renderedConfig is the haproxy.cfg the agent's HAProxy runs.
func renderedConfig(t *testing.T, a *testAgent) string {
	b, err := os.ReadFile(filepath.Join(a.dir, "haproxy", "haproxy.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestE2ESecurityAttacks attacks the built binary and its real HAProxy the
// way a holder of one token, or of none, would.
func TestE2ESecurityAttacks(t *testing.T) {
	requireHAProxy(t)
	a, cfgFile, unifiFile := securityAgent(t)
	legacy := map[string]string{"X-Funkypenguin-Token": testToken}
	ops, unifi, games := tokenHeader(opsSecret), tokenHeader(unifiSecret), tokenHeader(gamesSecret)
	raft := raftPort(t, a)

	expect := func(what string, headers map[string]string, method, path string, body any, wantCode int, wantMsg string) {
		t.Helper()
		code, out := a.request(method, path, headers, body)
		if code != wantCode || !strings.Contains(string(out), wantMsg) {
			t.Errorf("%s: %s %s = %d %s, want %d and %q", what, method, path, code, out, wantCode, wantMsg)
		} else {
			t.Logf("attack %q: %d %s", what, code, strings.TrimSpace(string(out)))
		}
	}

	// Backends that would publish what no route may: refused, never rendered.
	expect("metadata service through the recipe's hook with the legacy (admin) token", legacy, "POST", "/hooks/update-haproxy",
		hookPayload("meta", 8010, 80, "169.254.169.254", "add"), 400, "link-local")
	expect("metadata service through PUT with the admin token", ops, "PUT", "/v1/routes/8011",
		map[string]any{"name": "meta", "backends": []map[string]any{{"address": "169.254.169.254", "port": 80}}}, 400, "metadata")
	expect("IPv6 link-local", ops, "PUT", "/v1/routes/8012",
		map[string]any{"name": "ll", "backends": []map[string]any{{"address": "fe80::1", "port": 80}}}, 400, "link-local")
	expect("loopback sshd", legacy, "POST", "/hooks/update-haproxy", hookPayload("ssh", 8013, 22, "127.0.0.1", "add"), 400, "loopback")
	expect("this node's raft listener as a backend", ops, "POST", "/v1/routes/8014/backends",
		map[string]any{"address": "127.0.0.1", "port": raft, "name": "raft", "create": true}, 400, "loopback")
	expect("a route on this node's raft port", ops, "PUT", fmt.Sprintf("/v1/routes/%d", raft), map[string]any{"name": "raft"}, 400, "reserved")
	expect("a route on port 22 (default deny list)", ops, "PUT", "/v1/routes/22", map[string]any{"name": "ssh"}, 400, "reserved")

	// A register token owns what it makes; another cannot touch it.
	expect("unifi registers its own route", unifi, "POST", "/v1/routes/8080/backends",
		map[string]any{"address": "10.1.2.3", "port": 30808, "ttl": "5m", "name": "unifi-a", "create": true}, 200, `"token":"unifi"`)
	expect("games adds a backend to unifi's route", games, "POST", "/v1/routes/8080/backends",
		map[string]any{"address": "10.6.6.6", "port": 1, "name": "unifi-a"}, 403, "belongs to token unifi")
	expect("games replaces unifi's route", games, "PUT", "/v1/routes/8080",
		map[string]any{"name": "unifi-a", "backends": []map[string]any{{"address": "10.6.6.6", "port": 1}}}, 403, "belongs to token unifi")
	expect("games forces the port", games, "PUT", "/v1/routes/8080", map[string]any{"name": "evil", "force": true}, 403, "needs an admin token")
	expect("games deletes unifi's route", games, "DELETE", "/v1/routes/8080?name=unifi-a", nil, 403, "belongs to token unifi")
	expect("games deletes without a name", games, "DELETE", "/v1/routes/8080", nil, 403, "without ?name= needs an admin token")
	expect("games deregisters unifi's backend through the hook", map[string]string{"X-Funkypenguin-Token": gamesSecret}, "POST", "/hooks/update-haproxy",
		hookPayload("unifi-a", 8080, 30808, "10.1.2.3", "delete"), 403, "belongs to token unifi")
	expect("games restores a snapshot", games, "POST", "/v1/snapshot", `{"format":2,"routes":[]}`, 403, "needs an admin token")
	expect("games reads every token's backends", games, "GET", "/v1/snapshot", nil, 403, "admin or read token")
	expect("unifi asks for a lease above its max_ttl", unifi, "POST", "/v1/routes/8080/backends",
		map[string]any{"address": "10.1.2.4", "port": 1, "ttl": "1h"}, 403, "max_ttl")

	// Limits.
	expect("a year-long TTL", ops, "POST", "/v1/routes/8090/backends",
		map[string]any{"address": "10.1.2.5", "port": 1, "ttl": "8760h", "name": "year", "create": true}, 400, "limits.max_ttl")
	big := `{"format":2,"routes":[]}` + strings.Repeat(" ", 5<<20)
	expect("a 5 MiB snapshot", ops, "POST", "/v1/snapshot", big, 413, "larger than 4194304 bytes")

	// A burst beyond the burst token's rate (2/s, burst 5): some 429s, the
	// rest succeed.
	burst := tokenHeader(burstSecret)
	ok, limited := 0, 0
	for i := range 12 {
		code, out := a.request("PUT", fmt.Sprintf("/v1/routes/%d", 27000+i), burst, map[string]any{"name": fmt.Sprintf("g%d", i)})
		switch code {
		case 200:
			ok++
		case 429:
			limited++
			if !strings.Contains(string(out), "rate limit") {
				t.Errorf("429 without a reason: %s", out)
			}
		default:
			t.Errorf("burst request %d: %d %s", i, code, out)
		}
	}
	t.Logf("attack \"burst of 12 writes at 2/s, burst 5\": %d answered 200, %d answered 429", ok, limited)
	if ok < 5 || limited == 0 || ok+limited != 12 {
		t.Errorf("burst: %d ok, %d limited; want at least the burst of 5 ok and the rest 429", ok, limited)
	}
	// The bucket refills: the token writes again.
	testenv.Eventually(t, 10*time.Second, "the burst token writes again once its bucket refills", func() bool {
		code, _ := a.request("PUT", "/v1/routes/27050", burst, map[string]any{"name": "after"})
		return code == 200
	})
	var listed struct {
		Routes []struct{ Token string } `json:"routes"`
	}
	code, body := a.request("GET", "/v1/routes", ops, nil)
	if code != 200 || json.Unmarshal(body, &listed) != nil {
		t.Fatalf("list: %d %s", code, body)
	}
	owned := 0
	for _, r := range listed.Routes {
		if r.Token == "burst" {
			owned++
		}
	}
	if owned != ok+1 {
		t.Errorf("the burst token owns %d routes; want exactly the %d writes that succeeded", owned, ok+1)
	}

	// Nothing refused reached HAProxy.
	testenv.Eventually(t, 10*time.Second, "route 8080 rendered", func() bool { return strings.Contains(renderedConfig(t, a), "10.1.2.3:30808") })
	cfg := renderedConfig(t, a)
	for _, bad := range []string{"169.254.", "fe80::", "127.0.0.1:22", fmt.Sprintf("127.0.0.1:%d", raft), "10.6.6.6", "8760h", "frontend fe_22\n"} {
		if strings.Contains(cfg, bad) {
			t.Errorf("haproxy.cfg holds %q:\n%s", bad, cfg)
		}
	}

	// Every write left an audit line, none a secret.
	logs := a.logs.String()
	for _, want := range []string{"component=audit token=games role=register", "result=forbidden", "token=burst role=register", "result=rate_limited", "component=audit token=unifi role=register"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q", want)
		}
	}
	for _, secret := range []string{opsSecret, unifiSecret, gamesSecret, burstSecret, testToken} {
		if strings.Contains(logs, secret) {
			t.Errorf("a secret reached the log")
		}
	}
	if !strings.Contains(logs, "Define scoped tokens in api.tokens") {
		t.Error("no startup warning naming the scoped alternative to the legacy token")
	}

	// Rotating a secret file takes effect without a restart...
	if err := os.WriteFile(unifiFile, []byte("fake-unifi-rotated-4444\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the rotated unifi secret replaces the old one", func() bool {
		old, _ := a.request("GET", "/v1/routes", unifi, nil)
		fresh, _ := a.request("GET", "/v1/routes", tokenHeader("fake-unifi-rotated-4444"), nil)
		return old == 403 && fresh == 200
	})
	// ...and so does a new token in the config file, on SIGHUP.
	late := fmt.Sprintf("    - name: late\n      role: read\n      sha256: %x\n", sha256.Sum256([]byte(lateSecret)))
	f, err := os.OpenFile(cfgFile, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	old, _ := os.ReadFile(cfgFile)
	updated := strings.Replace(string(old), "routes:\n", "", 1)
	updated = strings.Replace(updated, "  allow_loopback_backends: false\n", "", 1) + late + "routes:\n  allow_loopback_backends: false\n"
	f.Truncate(0)
	f.WriteAt([]byte(updated), 0)
	f.Close()
	a.signal(syscall.SIGHUP, 0)
	testenv.Eventually(t, 10*time.Second, "the late read token works after SIGHUP", func() bool {
		code, _ := a.request("GET", "/v1/routes", tokenHeader(lateSecret), nil)
		return code == 200
	})
	expect("the late read token writes", tokenHeader(lateSecret), "PUT", "/v1/routes/8099", map[string]any{"name": "x"}, 403, "role read")
}

// TestE2ESecurityLegacySidecar: the recipe's sidecar request with the single
// legacy token still works end to end, and loopback backends allowed for a
// demo still cannot reach the node's own listeners.
func TestE2ESecurityLegacySidecar(t *testing.T) {
	requireHAProxy(t)
	a := startDevAgent(t)
	be := startBackend(t, "recipe-backend")
	fport := testenv.FreePort(t)
	legacy := map[string]string{"X-Funkypenguin-Token": testToken}
	payload := map[string]any{
		"name": "unifi-adoption", "frontend-port": fmt.Sprint(fport),
		"backend-port": fmt.Sprint(be.port()), "dst-ip": "127.0.0.1", "action": "add",
	}
	if code, body := a.request("POST", "/hooks/update-haproxy", legacy, payload); code != 200 {
		t.Fatalf("the recipe's sidecar request: %d %s", code, body)
	}
	testenv.Eventually(t, 10*time.Second, "route live through HAProxy", func() bool {
		got, err := dialRead(fmt.Sprintf("127.0.0.1:%d", fport))
		return err == nil && got == "recipe-backend"
	})
	raft := raftPort(t, a)
	code, body := a.request("POST", "/hooks/update-haproxy", legacy, hookPayload("raft", testenv.FreePort(t), raft, "127.0.0.1", "add"))
	if code != 400 || !strings.Contains(string(body), "raft port") {
		t.Fatalf("loopback backend on the node's raft port: %d %s", code, body)
	}
	t.Logf("attack \"loopback backend on the raft port, loopback allowed\": %d %s", code, strings.TrimSpace(string(body)))
	if !strings.Contains(a.logs.String(), "Define scoped tokens in api.tokens") {
		t.Error("no startup warning naming the scoped alternative to the legacy token")
	}
}
