package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// EtcDir is where the packaged configuration keeps its secrets and
// certificates.
const EtcDir = "/etc/drawbridge"

var etcPath = regexp.MustCompile(`/etc/drawbridge/[A-Za-z0-9._/-]+`)

// ConfigPaths returns the files under /etc/drawbridge that an agent
// configuration names outside comments, once each, in order.
func ConfigPaths(config []byte) []string {
	var out []string
	for _, line := range strings.Split(string(config), "\n") {
		if i := strings.Index(line, "#"); i >= 0 {
			line = line[:i]
		}
		for _, p := range etcPath.FindAllString(line, -1) {
			if !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	return out
}

// HAProxyUser is the user (and group) the package creates for HAProxy and
// the shipped configurations run it as.
const HAProxyUser = "drawbridge-haproxy"

// Relocate returns an agent configuration with every /etc/drawbridge path
// moved under dir (/etc/drawbridge/tls/ca.pem becomes dir/tls/ca.pem) and
// the data dir /var/lib/drawbridge moved to dir/data, so a test can give
// it real files without touching the machine. HAProxy's user and group
// (haproxy.user: drawbridge-haproxy) become empty too: they are this
// machine's accounts, which only the package makes, and check-config
// refuses a user that does not exist. deploy's TestAgentUnderUnit runs
// the shipped configuration with the real accounts.
func Relocate(config []byte, dir string) []byte {
	return []byte(strings.NewReplacer(EtcDir+"/", dir+"/", "/var/lib/drawbridge", filepath.Join(dir, "data"),
		"user: "+HAProxyUser, `user: ""`, "group: "+HAProxyUser, `group: ""`).Replace(string(config)))
}

// WriteSecrets creates in dir what the sample configuration's setup steps
// create in /etc/drawbridge, with the drawbridge binary bin and the same
// commands: token and gossip.key from `drawbridge keygen`, a cluster CA
// from `drawbridge tls ca create` (in dir/ca, as the CA stays off the
// nodes) and node's certificate from `drawbridge tls cert create`, copied
// to tls/ca.pem, tls/node.pem and tls/node-key.pem. Also do-token, a fake
// DigitalOcean token.
func WriteSecrets(tb testing.TB, bin, dir, node string) {
	tb.Helper()
	runBin := func(args ...string) []byte {
		tb.Helper()
		cmd := exec.Command(bin, args...)
		var stderr Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			tb.Fatalf("drawbridge %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		}
		return out
	}
	write := func(name string, data []byte, mode os.FileMode) {
		tb.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(p, data, mode); err != nil {
			tb.Fatal(err)
		}
	}
	write("token", runBin("keygen"), 0o600)
	write("gossip.key", runBin("keygen"), 0o600)
	write("do-token", []byte("dop_v1_FAKEtokenFORtests\n"), 0o600)
	ca := filepath.Join(dir, "ca")
	runBin("tls", "ca", "create", "--dir", ca)
	runBin("tls", "cert", "create", "--ca-dir", ca, "--node", node, "--ip", "127.0.0.1")
	for from, to := range map[string]string{"ca.pem": "tls/ca.pem", node + ".pem": "tls/node.pem", node + "-key.pem": "tls/node-key.pem"} {
		b, err := os.ReadFile(filepath.Join(ca, from))
		if err != nil {
			tb.Fatal(err)
		}
		write(to, b, 0o600)
	}
}

// ConfigWithSecrets copies the agent configuration at src into dir with its
// paths relocated there (Relocate) and the files it names created
// (WriteSecrets), and returns the copy's path.
func ConfigWithSecrets(tb testing.TB, bin, src, dir, node string) string {
	tb.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		tb.Fatal(err)
	}
	WriteSecrets(tb, bin, dir, node)
	cfg := filepath.Join(dir, "drawbridge.yaml")
	if err := os.WriteFile(cfg, Relocate(b, dir), 0o600); err != nil {
		tb.Fatal(err)
	}
	return cfg
}
