package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// validEdge is a valid edge configuration in dir (after Fill).
func validEdge(t *testing.T, dir string) Config {
	t.Helper()
	c := witnessConfig(t, dir)
	c.Role = roleEdge
	c.HAProxy = HAProxyConfig{Bin: "haproxy", HardStopAfter: 30 * time.Minute, MaxReloads: 50,
		QuietWindow: 20 * time.Millisecond, MaxDelay: 250 * time.Millisecond,
		TimeoutClient: time.Hour, TimeoutServer: time.Hour, DynamicPorts: "off"}
	c.FloatingIP = FloatingIPConfig{Provider: "none", LagGrace: 5 * time.Second, HoldDown: 3 * time.Second}
	c.Fill()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

// A relative data dir (what `make run` uses) becomes absolute at load, and
// so does every path derived from it: the HAProxy stats socket is kept, not
// dropped by the renderer (which switched the runtime API off).
func TestFillMakesPathsAbsolute(t *testing.T) {
	t.Chdir(t.TempDir())
	c := witnessConfig(t, "./drawbridge-data")
	c.Role = roleEdge
	c.HAProxy = HAProxyConfig{Bin: "./bin/haproxy", DynamicPorts: "off", MaxReloads: 50, HardStopAfter: time.Minute,
		TimeoutClient: time.Hour, TimeoutServer: time.Hour}
	c.HAProxy.Dir = ""
	c.API.TokenFile = "token"
	c.Gossip.KeyFile = "keys/gossip.key"
	c.Fill()
	for name, p := range map[string]string{"data_dir": c.DataDir, "haproxy.dir": c.HAProxy.Dir, "haproxy.bin": c.HAProxy.Bin,
		"api.token_file": c.API.TokenFile, "gossip.key_file": c.Gossip.KeyFile} {
		if !filepath.IsAbs(p) {
			t.Errorf("%s %q is not absolute", name, p)
		}
	}
	s, err := c.haproxySettings()
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(s.StatsSocket) || s.Validate() != nil {
		t.Fatalf("stats socket %q: %v", s.StatsSocket, s.Validate())
	}
	c.HAProxy.Bin = "haproxy"
	c.Fill()
	if c.HAProxy.Bin != "haproxy" {
		t.Fatalf("a command name became a path: %q", c.HAProxy.Bin)
	}
}

// Values that pass their own syntax but cannot work are refused at load,
// each with a message naming the key.
func TestValidateRefusesWhatCannotWork(t *testing.T) {
	long := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	tests := []struct {
		name string
		mod  func(c *Config)
		want string
	}{
		{"lag grace 0 releases on every write", func(c *Config) {
			c.FloatingIP = FloatingIPConfig{Provider: "vip", Address: "192.0.2.10", Interface: "eth0", LagGrace: 0}
		}, "floating_ip.lag_grace 0s must be above 0"},
		{"exec without time", func(c *Config) {
			c.FloatingIP = FloatingIPConfig{Provider: "exec", Address: "192.0.2.10", LagGrace: time.Second,
				Exec: FloatingIPExec{Command: "/bin/true", Timeout: 0}}
		}, "floating_ip.exec.timeout 0s must be above 0"},
		{"stats socket path with a space", func(c *Config) { c.HAProxy.Dir = "/var/lib/draw bridge/haproxy" },
			"StatsSocket"},
		{"socket path too long for a Unix socket", func(c *Config) { c.HAProxy.Dir = long },
			"longer than a Unix socket path may be"},
		{"heartbeat below raft's leader lease", func(c *Config) { c.Raft.HeartbeatTimeout = 100 * time.Millisecond },
			"LeaderLeaseTimeout"},
		{"probe timeout not below the interval", func(c *Config) { c.Gossip.ProbeTimeout = c.Gossip.ProbeInterval },
			"gossip.probe_timeout"},
		{"quiet window beyond the max delay", func(c *Config) { c.HAProxy.QuietWindow = time.Second },
			"haproxy.quiet_window"},
		{"hard stop after out of range", func(c *Config) { c.HAProxy.HardStopAfter = -time.Second },
			"HardStopAfter"},
		{"maxconn out of range", func(c *Config) { c.HAProxy.MaxConn = -1 }, "MaxConn"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := validEdge(t, t.TempDir())
			tc.mod(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// --check-config opens every file the configuration names: a missing one
// is an error naming it, as it would stop the agent at start.
func TestCheckFilesOpensEveryFile(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	tests := []struct {
		name string
		mod  func(c *Config)
		want string
	}{
		{"token file", func(c *Config) { c.API.Tokens, c.API.TokenFile = nil, missing }, "read api.token_file: open " + missing},
		{"scoped token's secret file", func(c *Config) {
			c.API.Tokens = []TokenConfig{{Name: "grafana", Role: "read", SecretFile: missing}}
		}, "token grafana: open " + missing},
		{"gossip key file", func(c *Config) { c.Gossip.KeyFile = missing }, "gossip.key_file"},
		{"api TLS pair", func(c *Config) { c.API.TLSCertFile, c.API.TLSKeyFile = missing, missing }, "api.tls_cert_file"},
		{"raft TLS", func(c *Config) { c.Raft.TLSCAFile, c.Raft.TLSCertFile, c.Raft.TLSKeyFile = missing, missing, missing }, "raft.tls_key_file: open " + missing},
		{"api TLS key after a present certificate", func(c *Config) {
			c.API.TLSCertFile, c.API.TLSKeyFile = filepath.Join(dir, "cert.pem"), missing
			if err := os.WriteFile(c.API.TLSCertFile, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "api.tls_key_file: open " + missing},
		{"forward CA", func(c *Config) { c.API.ForwardCAFile = missing }, "api.forward_ca_file"},
		{"exec script", func(c *Config) {
			c.FloatingIP = FloatingIPConfig{Provider: "exec", Address: "192.0.2.10", LagGrace: time.Second,
				Exec: FloatingIPExec{Command: missing, Timeout: time.Second}}
		}, "floating_ip.exec.command"},
		{"digitalocean token", func(c *Config) {
			c.FloatingIP = FloatingIPConfig{Provider: "digitalocean", Address: "192.0.2.10", LagGrace: time.Second,
				DigitalOcean: FloatingIPDOConfig{TokenFile: missing}}
		}, "floating_ip.digitalocean.token_file"},
		{"haproxy binary", func(c *Config) { c.HAProxy.Bin = missing }, "haproxy.bin"},
		// HAProxy's isolation: accounts only the package makes, named as
		// such, and never root's or the agent's.
		{"haproxy user", func(c *Config) { c.HAProxy.User = "no-such-haproxy-user" },
			"haproxy.user no-such-haproxy-user does not exist: install the drawbridge package"},
		{"haproxy group", func(c *Config) { c.HAProxy.User, c.HAProxy.Group = "nobody", "no-such-haproxy-group" },
			"haproxy.group no-such-haproxy-group does not exist"},
		{"haproxy as root", func(c *Config) { c.HAProxy.User = "root" }, "haproxy.user root is root"},
		{"haproxy in root's group", func(c *Config) { c.HAProxy.User, c.HAProxy.Group = "nobody", "0" }, "haproxy.group 0 is root's group"},
		{"chroot not empty", func(c *Config) {
			c.HAProxy.Chroot = true
			if err := os.MkdirAll(filepath.Join(c.HAProxy.Dir, "empty"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(c.HAProxy.Dir, "empty", "etc"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "empty must be empty (HAProxy's workers chroot into it)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := validEdge(t, t.TempDir())
			tc.mod(&c)
			err := c.CheckFiles()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("CheckFiles = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	t.Run("all present", func(t *testing.T) {
		c := validEdge(t, t.TempDir())
		tok := filepath.Join(dir, "token")
		if err := os.WriteFile(tok, []byte(testToken+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		c.API.TokenFile = tok
		if err := c.CheckFiles(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestWarnings(t *testing.T) {
	c := validEdge(t, t.TempDir())
	c.FloatingIP = FloatingIPConfig{Provider: "vip", Address: "192.0.2.10", LagGrace: 200 * time.Millisecond}
	c.API.HoldTimeout, c.API.ApplyTimeout = 10*time.Second, 5*time.Second
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	w := strings.Join(c.Warnings(), "\n")
	for _, want := range []string{"floating_ip.lag_grace 200ms", "api.hold_timeout 10s"} {
		if !strings.Contains(w, want) {
			t.Errorf("warnings lack %q:\n%s", want, w)
		}
	}
}

// --dev is the zero-setup node of whoever tries drawbridge: HAProxy's
// isolation, which needs the unit's capabilities, is off, and the agent
// says so.
func TestDevRunsHAProxyUnisolated(t *testing.T) {
	c := validEdge(t, t.TempDir())
	c.Dev = true
	c.HAProxy.User, c.HAProxy.Group, c.HAProxy.Chroot = "drawbridge-haproxy", "drawbridge-haproxy", true
	c.Fill()
	if iso := c.isolation(); iso.User != "" || iso.Group != "" || iso.Chroot {
		t.Errorf("--dev isolates HAProxy: %+v", iso)
	}
	if w := strings.Join(c.Warnings(), "\n"); !strings.Contains(w, "--dev: HAProxy runs as this agent's user, not isolated") {
		t.Errorf("warnings do not say isolation is off:\n%s", w)
	}
	if err := c.CheckFiles(); err != nil && strings.Contains(err.Error(), "haproxy") {
		t.Errorf("--dev checks HAProxy's accounts: %v", err)
	}

	c = validEdge(t, t.TempDir())
	c.HAProxy.User, c.HAProxy.Chroot = "nobody", true
	c.Fill()
	if iso := c.isolation(); iso.User != "nobody" || !iso.Chroot {
		t.Errorf("outside --dev the configured isolation is dropped: %+v", iso)
	}
}
