package haproxy

import (
	"bytes"
	"errors"
	"flag"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

func goldenCases() []struct {
	name string
	s    Settings
	fes  []Frontend
} {
	web := Frontend{Port: 30080, Name: "web", Balance: "roundrobin", Sticky: true, HealthCheck: true,
		Servers: []Server{{"10.0.0.2", 30808}, {"10.0.0.1", 30808}}}
	return []struct {
		name string
		s    Settings
		fes  []Frontend
	}{
		{name: "empty"},
		{name: "several_out_of_order", fes: []Frontend{
			{Port: 9000, Name: "c", Balance: "leastconn", Servers: []Server{{"10.0.0.3", 31000}}},
			web,
			{Port: 25, Name: "mail", Balance: "source", HealthCheck: true, Servers: []Server{{"10.0.0.9", 2525}}},
		}},
		{name: "sticky_off_checks_off", fes: []Frontend{
			{Port: 4000, Name: "plain", Balance: "roundrobin", Servers: []Server{{"10.0.0.1", 4000}, {"10.0.0.2", 4000}}},
		}},
		{name: "each_balance", fes: []Frontend{
			{Port: 1001, Name: "rr", Balance: "roundrobin", Servers: []Server{{"10.0.0.1", 1}}},
			{Port: 1002, Name: "lc", Balance: "leastconn", Servers: []Server{{"10.0.0.1", 2}}},
			{Port: 1003, Name: "src", Balance: "source", Servers: []Server{{"10.0.0.1", 3}}},
			{Port: 1004, Name: "first", Balance: "first", Servers: []Server{{"10.0.0.1", 4}}},
			{Port: 1005, Name: "rand", Balance: "random", Servers: []Server{{"10.0.0.1", 5}}},
			{Port: 1006, Name: "default", Servers: []Server{{"10.0.0.1", 6}}},
		}},
		{name: "proxy_protocol", fes: []Frontend{
			{Port: 5001, Name: "v1", ProxyProtocol: "v1", HealthCheck: true, Servers: []Server{{"10.0.0.1", 5001}}},
			{Port: 5002, Name: "v2", ProxyProtocol: "v2", Servers: []Server{{"10.0.0.1", 5002}}},
		}},
		{name: "check_port_http", fes: []Frontend{
			{Port: 7001, Name: "local-http", Balance: "roundrobin", HealthCheck: true, CheckPort: 31500, CheckHTTP: true,
				Servers: []Server{{"10.0.0.1", 30080}, {"10.0.0.2", 30080}}},
			{Port: 7002, Name: "local-tcp", Sticky: true, HealthCheck: true, CheckPort: 31501, ProxyProtocol: "v2",
				Servers: []Server{{"10.0.0.1", 30081}}},
			{Port: 7003, Name: "http-default-port", HealthCheck: true, CheckHTTP: true, Servers: []Server{{"10.0.0.1", 30082}}},
			{Port: 7004, Name: "checks-off", CheckPort: 31502, CheckHTTP: true, Servers: []Server{{"10.0.0.1", 30083}}},
		}},
		{name: "ipv6_backend", fes: []Frontend{
			{Port: 6000, Name: "v6", Balance: "leastconn", Sticky: true, HealthCheck: true,
				Servers: []Server{{"2001:db8::1", 30808}, {"10.0.0.1", 30808}, {"::1", 80}}},
		}},
		{name: "bind_ipv4_address", s: Settings{BindAddress: "203.0.113.10", StatsSocket: "/run/drawbridge/admin.sock"},
			fes: []Frontend{web}},
		{name: "bind_ipv6_address", s: Settings{BindAddress: "2001:db8::10", TimeoutConnect: 1500 * time.Millisecond,
			CheckInterval: 500 * time.Millisecond, HardStopAfter: 90 * time.Second, MaxReloads: 5, MaxConn: 100},
			fes: []Frontend{web}},
	}
}

func TestRenderGolden(t *testing.T) {
	for _, tc := range goldenCases() {
		t.Run(tc.name, func(t *testing.T) {
			got, err := RenderChecked(tc.s, tc.fes)
			if err != nil {
				t.Fatalf("RenderChecked: %v", err)
			}
			path := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("render differs from %s (run with -update after checking):\n%s", path, got)
			}
			if err := checkConfig(t, got); err != nil {
				t.Errorf("haproxy -c rejects %s: %v", path, err)
			}
		})
	}
}

func TestRenderDeterministic(t *testing.T) {
	var fes []Frontend
	for i := range 50 {
		fe := Frontend{Port: 20000 + i*7, Name: "r" + string(rune('a'+i%26)), Sticky: i%2 == 0, HealthCheck: i%3 == 0}
		for j := range 5 {
			fe.Servers = append(fe.Servers, Server{Address: "10.0.1." + string(rune('1'+j)), Port: 30000 + j})
		}
		fes = append(fes, fe)
	}
	want := Render(Settings{}, fes)
	r := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		shuffled := slices.Clone(fes)
		r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		for i := range shuffled {
			sv := slices.Clone(shuffled[i].Servers)
			r.Shuffle(len(sv), func(a, b int) { sv[a], sv[b] = sv[b], sv[a] })
			shuffled[i].Servers = sv
		}
		if got := Render(Settings{}, shuffled); !bytes.Equal(got, want) {
			t.Fatal("shuffled input rendered different bytes")
		}
	}
	if Hash(want) != Hash(Render(Settings{}, fes)) {
		t.Fatal("hash not stable")
	}
}

func TestRenderCheckedRejects(t *testing.T) {
	good := Frontend{Port: 8000, Name: "ok", Servers: []Server{{"10.0.0.1", 80}}}
	cases := []struct {
		name string
		s    Settings
		fe   Frontend
		omit string // text that must not appear
	}{
		{name: "newline in name", fe: Frontend{Port: 8001, Name: "x\nfrontend evil"}, omit: "evil"},
		{name: "bad balance", fe: Frontend{Port: 8001, Name: "b", Balance: "roundrobin\n  server x"}, omit: "fe_8001"},
		{name: "bad proxy", fe: Frontend{Port: 8001, Name: "p", ProxyProtocol: "v3"}, omit: "fe_8001"},
		{name: "port zero", fe: Frontend{Port: 0, Name: "z"}, omit: "fe_0"},
		{name: "port too big", fe: Frontend{Port: 70000, Name: "z"}, omit: "70000"},
		{name: "duplicate port", fe: Frontend{Port: 8000, Name: "zzz"}, omit: "route zzz"},
		{name: "non-canonical server", fe: Frontend{Port: 8001, Name: "s", Servers: []Server{{"010.0.0.1", 80}}}, omit: "010.0.0.1"},
		{name: "server with zone", fe: Frontend{Port: 8001, Name: "s", Servers: []Server{{"fe80::1%eth0", 80}}}, omit: "eth0"},
		{name: "server port", fe: Frontend{Port: 8001, Name: "s", Servers: []Server{{"10.0.0.1", 0}}}, omit: "10.0.0.1:0"},
		{name: "bind injection", s: Settings{BindAddress: "1.2.3.4:1\n bind :22"}, fe: good, omit: ":22"},
		{name: "socket injection", s: Settings{StatsSocket: "/tmp/a level admin\n"}, fe: good, omit: "/tmp/a"},
		{name: "negative timeout", s: Settings{TimeoutClient: -time.Second}, fe: good, omit: "timeout client -"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := RenderChecked(tc.s, []Frontend{good, tc.fe})
			if !errors.Is(err, ErrRejected) {
				t.Fatalf("err = %v, want ErrRejected", err)
			}
			if strings.Contains(string(cfg), tc.omit) {
				t.Fatalf("rendered %q:\n%s", tc.omit, cfg)
			}
			if !strings.Contains(string(cfg), "frontend fe_8000\n") {
				t.Fatalf("valid frontend missing:\n%s", cfg)
			}
			if !bytes.Equal(cfg, Render(tc.s, []Frontend{tc.fe, good})) {
				t.Fatal("Render and RenderChecked differ or depend on order")
			}
		})
	}
}

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Hour: "1h", 30 * time.Minute: "30m", 90 * time.Second: "90s", 1500 * time.Millisecond: "1500ms",
		time.Microsecond: "1ms", 48 * time.Hour: "48h",
	} {
		if got := formatDuration(d); got != want {
			t.Errorf("formatDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func BenchmarkRender1000(b *testing.B) {
	fes := make([]Frontend, 1000)
	for i := range fes {
		fes[i] = Frontend{Port: 10000 + i, Name: "route-" + string(rune('a'+i%26)), Sticky: true, HealthCheck: true,
			Servers: []Server{{"10.0.0.1", 30000 + i}, {"10.0.0.2", 30000 + i}, {"10.0.0.3", 30000 + i}}}
	}
	b.ReportAllocs()
	for b.Loop() {
		Render(Settings{}, fes)
	}
}
