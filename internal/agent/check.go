package agent

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/cluster"
	"github.com/drawbridge-lb/drawbridge/haproxy"
)

// Loading a configuration proves what it can: every path is made absolute
// (a relative one would change meaning with the working directory, and the
// HAProxy renderer drops a relative stats socket, switching the runtime API
// off), every value the components would refuse or silently replace is an
// error at load, and CheckFiles opens every file the configuration names,
// so `agent --check-config` fails exactly where the agent would. Warnings
// are values that work but are probably not meant.

// absPaths makes every path of the configuration absolute. Commands given
// by name (haproxy.bin "haproxy") stay names, looked up in PATH.
func (c *Config) absPaths() {
	abs := func(p *string) {
		if *p == "" || filepath.IsAbs(*p) {
			return
		}
		if a, err := filepath.Abs(*p); err == nil {
			*p = a
		}
	}
	command := func(p *string) {
		if strings.ContainsRune(*p, '/') {
			abs(p)
		}
	}
	for _, p := range []*string{&c.DataDir, &c.HAProxy.Dir, &c.API.TokenFile, &c.API.TLSCertFile, &c.API.TLSKeyFile,
		&c.API.ForwardCAFile, &c.Raft.TLSCAFile, &c.Raft.TLSCertFile, &c.Raft.TLSKeyFile, &c.Gossip.KeyFile,
		&c.FloatingIP.DigitalOcean.TokenFile} {
		abs(p)
	}
	for i := range c.API.Tokens {
		abs(&c.API.Tokens[i].SecretFile)
	}
	command(&c.HAProxy.Bin)
	command(&c.FloatingIP.Exec.Command)
}

// haproxySettings are the node-wide HAProxy settings this configuration
// runs with (the same the manager gets).
func (c *Config) haproxySettings() (haproxy.Settings, error) {
	dynamic, err := c.HAProxy.DynamicRange()
	if err != nil {
		return haproxy.Settings{}, fmt.Errorf("haproxy.dynamic_ports: %w", err)
	}
	s := haproxy.Settings{
		BindAddress:   c.HAProxy.BindAddress,
		HardStopAfter: c.HAProxy.HardStopAfter,
		MaxReloads:    c.HAProxy.MaxReloads,
		MaxConn:       c.HAProxy.MaxConn,
		TimeoutClient: c.HAProxy.TimeoutClient,
		TimeoutServer: c.HAProxy.TimeoutServer,
		StatsSocket:   filepath.Join(c.HAProxy.Dir, "admin.sock"),
		DynamicPorts:  dynamic,
	}
	if !dynamic.Empty() {
		s.MapFile = filepath.Join(c.HAProxy.Dir, "dynamic.map")
	}
	return s, nil
}

// checkWorkable returns the errors of values that pass their own syntax but
// cannot work: settings HAProxy's renderer would drop, raft timings raft
// refuses at start, durations that must be positive.
func (c *Config) checkWorkable() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Role == roleEdge && c.HAProxy.Dir != "" {
		if s, err := c.haproxySettings(); err == nil {
			// Render would drop what this rejects (the runtime API with a
			// bad socket path, say) and run on.
			if err := s.Validate(); err != nil {
				add("haproxy (directory %s): %w", c.HAProxy.Dir, err)
			}
		}
		if err := haproxy.CheckSocketPath(filepath.Join(c.HAProxy.Dir, "master.sock")); err != nil {
			add("haproxy.dir: the master CLI %w", err)
		}
		for name, d := range map[string]time.Duration{"haproxy.quiet_window": c.HAProxy.QuietWindow, "haproxy.max_delay": c.HAProxy.MaxDelay} {
			if d < 0 {
				add("%s %s must not be negative", name, d)
			}
		}
		if c.HAProxy.MaxDelay > 0 && c.HAProxy.QuietWindow > c.HAProxy.MaxDelay {
			add("haproxy.quiet_window %s must not exceed haproxy.max_delay %s", c.HAProxy.QuietWindow, c.HAProxy.MaxDelay)
		}
	}
	if err := (cluster.Config{HeartbeatTimeout: c.Raft.HeartbeatTimeout, ElectionTimeout: c.Raft.ElectionTimeout,
		SnapshotThreshold: c.Raft.SnapshotThreshold, SnapshotInterval: c.Raft.SnapshotInterval}).ValidateTimings(); err != nil {
		add("raft: %w", err)
	}
	if c.Raft.HeartbeatTimeout < 0 || c.Raft.ElectionTimeout < 0 {
		add("raft.heartbeat_timeout and raft.election_timeout must not be negative")
	}
	if c.API.ApplyTimeout < 0 {
		add("api.apply_timeout %s must not be negative", c.API.ApplyTimeout)
	}
	if c.API.MaxBodyBytes < 0 {
		add("api.max_body_bytes %d must not be negative", c.API.MaxBodyBytes)
	}
	if p := c.FloatingIP.Provider; p != "" && p != "none" {
		if c.FloatingIP.LagGrace <= 0 {
			add("floating_ip.lag_grace %s must be above 0: every write puts HAProxy behind the table for a moment, and with no grace the holder would release the address on each one (default 5s)", c.FloatingIP.LagGrace)
		}
		if c.FloatingIP.HoldDown < 0 {
			add("floating_ip.hold_down %s must not be negative", c.FloatingIP.HoldDown)
		}
		if p == "exec" {
			if c.FloatingIP.Exec.Timeout <= 0 {
				add("floating_ip.exec.timeout %s must be above 0: the script would be killed before it starts", c.FloatingIP.Exec.Timeout)
			}
			if c.FloatingIP.Exec.Retries < 0 {
				add("floating_ip.exec.retries %d must not be negative", c.FloatingIP.Exec.Retries)
			}
		}
	}
	g := c.Gossip
	if g.ProbeInterval < 0 || g.ProbeTimeout < 0 || g.GossipInterval < 0 || g.SuspicionMult < 0 {
		add("gossip timings must not be negative")
	}
	if g.ProbeInterval > 0 && g.ProbeTimeout >= g.ProbeInterval {
		add("gossip.probe_timeout %s must be below gossip.probe_interval %s", g.ProbeTimeout, g.ProbeInterval)
	}
	if c.Leases.Interval < 0 || c.Leases.Grace < 0 {
		add("leases.interval and leases.grace must not be negative")
	}
	return errs
}

// Warnings returns values that work but are probably not what was meant.
// The agent logs them at start, and --check-config prints them.
func (c *Config) Warnings() []string {
	var w []string
	if p := c.FloatingIP.Provider; p != "" && p != "none" && c.FloatingIP.LagGrace > 0 && c.FloatingIP.LagGrace < time.Second {
		w = append(w, fmt.Sprintf("floating_ip.lag_grace %s is shorter than a large reload takes: the address may move on ordinary writes", c.FloatingIP.LagGrace))
	}
	if c.API.HoldTimeout > 0 && c.API.ApplyTimeout > 0 && c.API.HoldTimeout >= c.API.ApplyTimeout {
		w = append(w, fmt.Sprintf("api.hold_timeout %s is not below api.apply_timeout %s: a held write may time out at the client before it is committed", c.API.HoldTimeout, c.API.ApplyTimeout))
	}
	if c.devIsolationOff {
		w = append(w, "--dev: HAProxy runs as this agent's user, not isolated (haproxy.user, haproxy.group and haproxy.chroot are ignored)")
	}
	if c.Role == roleEdge {
		if missing := haproxy.MissingCapabilities(c.isolation()); len(missing) > 0 {
			w = append(w, fmt.Sprintf("haproxy.user and haproxy.chroot need %s, which this process lacks: "+
				"drawbridge.service grants them (AmbientCapabilities); run by hand without them, the agent refuses to start",
				strings.Join(missing, ", ")))
		}
	}
	if c.Leases.Interval > 0 && c.API.HookLease > 0 && c.Leases.Interval > c.API.HookLease {
		w = append(w, fmt.Sprintf("leases.interval %s exceeds api.hook_lease %s: expired backends stay up to an interval longer", c.Leases.Interval, c.API.HookLease))
	}
	return w
}

// CheckFiles opens every file the configuration names, as the agent would
// at start: token files, keys, certificates, the HAProxy binary, the exec
// provider's script. --check-config runs it; a configuration that passes
// does not make the agent exit at start for a missing or unreadable file.
func (c *Config) CheckFiles() error {
	var errs []error
	if _, err := resolveTokensReadOnly(c); err != nil {
		errs = append(errs, err)
	}
	if _, err := loadGossipKey(c.Gossip); err != nil {
		errs = append(errs, err)
	}
	// Each certificate and key is opened on its own first, so a node whose
	// files were never installed hears of every one, not only the first a
	// loader stops at.
	openAll := func(files ...[2]string) bool {
		ok := true
		for _, f := range files {
			if f[1] == "" {
				continue
			}
			fh, err := os.Open(f[1])
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", f[0], err))
				ok = false
				continue
			}
			fh.Close()
		}
		return ok
	}
	raftOK := openAll([2]string{"raft.tls_ca_file", c.Raft.TLSCAFile}, [2]string{"raft.tls_cert_file", c.Raft.TLSCertFile}, [2]string{"raft.tls_key_file", c.Raft.TLSKeyFile})
	// The API usually names the same pair: each missing file is named once.
	apiOK := raftOK || (c.API.TLSCertFile != c.Raft.TLSCertFile || c.API.TLSKeyFile != c.Raft.TLSKeyFile)
	if apiOK {
		apiOK = openAll([2]string{"api.tls_cert_file", c.API.TLSCertFile}, [2]string{"api.tls_key_file", c.API.TLSKeyFile})
	}
	if c.Raft.TLSCAFile != "" && raftOK {
		if _, err := cluster.LoadRaftTLS(cluster.TLSFiles{CAFile: c.Raft.TLSCAFile, CertFile: c.Raft.TLSCertFile, KeyFile: c.Raft.TLSKeyFile}); err != nil {
			errs = append(errs, fmt.Errorf("raft TLS: %w", err))
		}
	}
	if c.API.TLSCertFile != "" && apiOK {
		if _, err := tls.LoadX509KeyPair(c.API.TLSCertFile, c.API.TLSKeyFile); err != nil {
			errs = append(errs, fmt.Errorf("api.tls_cert_file / api.tls_key_file: %w", err))
		}
	}
	if _, err := newForwardClient(c.API.ForwardCAFile); err != nil {
		errs = append(errs, err)
	}
	if f := c.FloatingIP.DigitalOcean.TokenFile; f != "" && c.FloatingIP.Provider == "digitalocean" {
		if _, err := os.ReadFile(f); err != nil {
			errs = append(errs, fmt.Errorf("floating_ip.digitalocean.token_file: %w", err))
		}
	}
	if c.FloatingIP.Provider == "exec" && c.FloatingIP.Exec.Command != "" {
		if _, err := exec.LookPath(c.FloatingIP.Exec.Command); err != nil {
			errs = append(errs, fmt.Errorf("floating_ip.exec.command: %w", err))
		}
	}
	if c.Role == roleEdge {
		if _, err := exec.LookPath(c.HAProxy.Bin); err != nil {
			errs = append(errs, fmt.Errorf("haproxy.bin %q not found (install it, e.g. `apt-get install haproxy`): %w", c.HAProxy.Bin, err))
		}
		// HAProxy's user and group exist, the agent's user is in the
		// group, setpriv is there; the chroot directory, when it exists
		// already, is empty.
		if err := haproxy.CheckIsolation(c.isolation()); err != nil {
			errs = append(errs, err)
		}
		if c.HAProxy.Chroot {
			chroot := filepath.Join(c.HAProxy.Dir, "empty")
			if ents, err := os.ReadDir(chroot); err == nil && len(ents) > 0 {
				errs = append(errs, fmt.Errorf("haproxy.chroot: %s must be empty (HAProxy's workers chroot into it)", chroot))
			}
		}
	}
	if st, err := os.Stat(c.DataDir); err == nil && !st.IsDir() {
		errs = append(errs, fmt.Errorf("data_dir %s is not a directory", c.DataDir))
	}
	return errors.Join(errs...)
}

// resolveTokensReadOnly is buildTokens without the --dev generation (which
// writes a file): a check never changes the data dir. It reads every token
// and secret file the configuration names.
func resolveTokensReadOnly(c *Config) ([]api.Token, error) {
	if c.Dev && len(c.API.Tokens) == 0 && c.API.TokenFile == "" && c.API.Token == "" {
		return nil, nil
	}
	tokens, _, err := buildTokens(c, io.Discard)
	return tokens, err
}

// isolation is how HAProxy is isolated from the agent.
func (c *Config) isolation() haproxy.Isolation {
	return haproxy.Isolation{User: c.HAProxy.User, Group: c.HAProxy.Group, Chroot: c.HAProxy.Chroot}
}
