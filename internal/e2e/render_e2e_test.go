package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drawbridge-lb/drawbridge/fsm"
	"github.com/drawbridge-lb/drawbridge/haproxy"
	"github.com/drawbridge-lb/drawbridge/internal/agent"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// randomRoutes builds a route table the way the API does: arbitrary field
// values pushed through fsm validation, keeping only what it accepts.
func randomRoutes(rng *rand.Rand, n int) []fsm.Route {
	names := []string{"web", "a", "unifi-adoption", "stratum.v2", "x_y", "0", strings.Repeat("n", 63), "Bad", "has space", "new\nline", "${env}", "#c", "ünï"}
	balances := []string{"roundrobin", "leastconn", "source", "first", "random", "", "static-rr", "roundrobin\n"}
	proxies := []string{"", "v1", "v2", "v3", "send-proxy"}
	addrs := []string{"10.0.0.1", "192.168.1.20", "2001:db8::1", "::ffff:10.1.2.3", "fe80::1", "127.0.0.1", "1.2.3.4\n", "host.example", "0.0.0.0", "224.0.0.1"}
	seen := map[int]bool{}
	var out []fsm.Route
	for len(out) < n {
		port := 1 + rng.IntN(65535)
		if rng.IntN(20) == 0 {
			port = []int{0, -1, 65536, 1 << 40}[rng.IntN(4)]
		}
		r := fsm.NewRoute(port, names[rng.IntN(len(names))]+fmt.Sprint(rng.IntN(3)))
		r.Balance = balances[rng.IntN(len(balances))]
		r.ProxyProtocol = proxies[rng.IntN(len(proxies))]
		r.Sticky = rng.IntN(2) == 0
		r.HealthCheck = rng.IntN(2) == 0
		if rng.IntN(2) == 0 {
			r.CheckPort = []int{0, 1, 65535, 1 + rng.IntN(65535), -1, 65536}[rng.IntN(6)]
			r.CheckMode = []string{"", "http", "http", "https", "http\n", "tcp"}[rng.IntN(6)]
		}
		for b := rng.IntN(4); b > 0; b-- {
			r.Backends = append(r.Backends, fsm.Backend{Address: addrs[rng.IntN(len(addrs))], Port: rng.IntN(70000)})
		}
		if r.Validate() != nil || seen[r.Port] {
			continue
		}
		seen[r.Port] = true
		out = append(out, r)
	}
	return out
}

// TestAcceptedRoutesRenderValidConfigs: every table that passes the route
// validation renders a config the real `haproxy -c` accepts.
func TestAcceptedRoutesRenderValidConfigs(t *testing.T) {
	requireHAProxy(t)
	rng := rand.New(rand.NewPCG(7, 11))
	dir := t.TempDir()
	for i := 0; i < 15; i++ {
		routes := randomRoutes(rng, 1+rng.IntN(30))
		settings := haproxy.Settings{MaxConn: 100}
		if i%3 == 1 {
			settings.BindAddress = "127.0.0.1"
		}
		cfg, err := haproxy.RenderChecked(settings, agent.Frontends(routes))
		if err != nil {
			t.Fatalf("table %d: a validated route was rejected by the renderer: %v", i, err)
		}
		path := filepath.Join(dir, fmt.Sprintf("t%d.cfg", i))
		if err := os.WriteFile(path, cfg, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := haproxy.Validate(context.Background(), "haproxy", path); err != nil {
			t.Fatalf("table %d: haproxy -c refused a rendered table: %v\n%s", i, err, cfg)
		}
	}
}

func TestRenderCommand(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "routes.json")
	routes := map[string]any{"routes": []map[string]any{
		{"port": 8443, "name": "tls", "balance": "leastconn", "backends": []map[string]any{{"address": "10.0.0.2", "port": 443}}},
		{"port": 8080, "name": "web", "sticky": false, "backends": []map[string]any{{"address": "10.0.0.1", "port": 80}}},
	}}
	b, _ := json.Marshal(routes)
	os.WriteFile(good, b, 0o600)
	out, err := exec.Command(binPath, "render", good).CombinedOutput()
	if err != nil {
		t.Fatalf("render: %v\n%s", err, out)
	}
	text := string(out)
	if !strings.Contains(text, "frontend fe_8080") || !strings.Contains(text, "balance leastconn") ||
		strings.Index(text, "fe_8080") > strings.Index(text, "fe_8443") {
		t.Errorf("unexpected render:\n%s", text)
	}
	if _, err := exec.LookPath("haproxy"); err == nil || testenv.Full() {
		cfg := filepath.Join(dir, "out.cfg")
		os.WriteFile(cfg, out, 0o600)
		if err := haproxy.Validate(context.Background(), testenv.HAProxy(t), cfg); err != nil {
			t.Errorf("rendered config invalid: %v", err)
		}
	}

	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`[{"port": 8080, "name": "x\ny"}, {"port": 70000, "name": "ok"}]`), 0o600)
	cmd := exec.Command(binPath, "render", bad)
	out, err = cmd.CombinedOutput()
	if err == nil || cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), "70000") || !strings.Contains(string(out), "name") {
		t.Errorf("bad routes: exit %d, %v\n%s", cmd.ProcessState.ExitCode(), err, out)
	}
}
