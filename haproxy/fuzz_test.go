package haproxy

import (
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// lineShapes is every line Render may emit.
var lineShapes = regexp.MustCompile(`^(?:` + strings.Join([]string{
	`# drawbridge: generated configuration, do not edit`,
	`global`,
	`    hard-stop-after \d+(?:h|m|s|ms)`,
	`    mworker-max-reloads \d+`,
	`    maxconn \d+`,
	`    stats socket /[A-Za-z0-9._/-]+ mode 600 level admin`,
	``,
	`defaults`,
	`    mode tcp`,
	`    option dontlognull`,
	`    timeout (?:connect|client|server) \d+(?:h|m|s|ms)`,
	`frontend fe_\d{1,5}`,
	`    # route [a-z0-9][a-z0-9._-]{0,62}`,
	`    bind (?:\[[0-9a-f:.]+\]|[0-9.]*):\d{1,5}`,
	`    default_backend be_\d{1,5}`,
	`backend be_\d{1,5}`,
	`    balance (?:roundrobin|leastconn|source|first|random)`,
	`    stick-table type ipv?6? size 200k expire 30m`,
	`    stick on src`,
	`    option httpchk GET /healthz`,
	`    http-check expect status 200`,
	`    server s_[0-9a-f_]+ (?:\[[0-9a-f:.]+\]|[0-9.]+):\d{1,5}(?: check inter \d+(?:h|m|s|ms)(?: port \d{1,5})?)?(?: send-proxy(?:-v2)?)?`,
}, "|") + `)$`)

// fuzzChecks bounds how many accepted inputs are run through haproxy -c.
var fuzzChecks atomic.Int32

func FuzzRenderEscapes(f *testing.F) {
	type seed struct {
		name, balance, proxy, addr, bind, sock string
		port, sport                            int
		timeout                                int64
	}
	for _, s := range []seed{
		{"web", "roundrobin", "", "10.0.0.1", "", "", 8080, 30808, int64(time.Second)},
		{"web\nfrontend evil", "leastconn", "v1", "10.0.0.1", "", "", 8080, 80, 0},
		{"a#b", "source", "v2", "2001:db8::1", "127.0.0.1", "/run/x.sock", 1, 65535, 1},
		{"q\"uote'", "first", "v3", "::ffff:10.0.0.1", "::1", "/tmp/a b", 65536, 0, -1},
		{"${X}", "random", "", "${X}", "${X}", "${X}", 443, 443, 1 << 62},
		{"ok", "roundrobin\n", "v1\n", "10.0.0.1\n", "10.0.0.1\n", "/run/a\nglobal", -1, 99999999999, 0},
		{"ünïcode", "rändom", "v1", "１0.0.0.1", "::ffff:1.2.3.4", "/run/ä", 80, 80, 0},
		{"x.y-z_0", "", "", "fe80::1%eth0", "0.0.0.0", "/run/../etc/passwd", 9999, 1, int64(30 * time.Minute)},
		{"ok", "leastconn", "v2", "::", "2001:db8::10", "/run/drawbridge/admin.sock", 22, 22, 999999999999999999},
		{"v6", "source", "v2", "::ffff:10.0.0.1", "::1", "/run/x.sock", 443, 8443, int64(1500 * time.Millisecond)},
		{"v6-b", "first", "v1", "2001:db8::1", "::ffff:1.2.3.4", "", 65535, 1, int64(24 * time.Hour)},
	} {
		f.Add(s.name, s.balance, s.proxy, s.addr, s.bind, s.sock, s.port, s.sport, s.timeout)
	}
	f.Fuzz(func(t *testing.T, name, balance, proxy, addr, bind, sock string, port, sport int, timeout int64) {
		s := Settings{BindAddress: bind, StatsSocket: sock, TimeoutClient: time.Duration(timeout), MaxConn: 100}
		fes := []Frontend{
			{Port: port, Name: name, Balance: balance, ProxyProtocol: proxy, Sticky: true, HealthCheck: true,
				CheckPort: sport ^ 1, CheckHTTP: port%2 == 0,
				Servers: []Server{{Address: addr, Port: sport}, {Address: "10.0.0.1", Port: 80}}},
			{Port: 1000, Name: "fixed", Servers: []Server{{Address: addr, Port: 80}}},
		}
		cfg, err := RenderChecked(s, fes)
		lines := strings.Split(strings.TrimSuffix(string(cfg), "\n"), "\n")
		for i, line := range lines {
			if !lineShapes.MatchString(line) {
				t.Fatalf("line %d %q has no allowed shape\n%s", i+1, line, cfg)
			}
		}
		for _, l := range lines {
			if strings.HasPrefix(l, "    # route ") && strings.TrimPrefix(l, "    # route ") != name &&
				strings.TrimPrefix(l, "    # route ") != "fixed" {
				t.Fatalf("route comment %q is neither input name", l)
			}
		}
		if err != nil {
			return
		}
		if strings.Count(string(cfg), "\nfrontend ") != 2 {
			t.Fatalf("accepted input lost a frontend:\n%s", cfg)
		}
		// Keep fuzzing fast: haproxy -c only for the first accepted inputs.
		if fuzzChecks.Add(1) > 40 {
			return
		}
		if err := checkConfig(t, cfg); err != nil {
			t.Fatalf("accepted input rendered a config haproxy rejects: %v\n%s", err, cfg)
		}
	})
}
