package deploy_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zclconf/go-cty/cty"
	"go.yaml.in/yaml/v3"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// cloudConfig is the part of cloud-init's user data the nodes rely on.
type cloudConfig struct {
	PackageUpdate bool        `yaml:"package_update"`
	Packages      []string    `yaml:"packages"`
	WriteFiles    []writeFile `yaml:"write_files"`
	RunCmd        [][]string  `yaml:"runcmd"`
}

type writeFile struct {
	Path        string `yaml:"path"`
	Owner       string `yaml:"owner"`
	Permissions string `yaml:"permissions"`
	Encoding    string `yaml:"encoding"`
	Content     string `yaml:"content"`
	Defer       bool   `yaml:"defer"`
}

func (w writeFile) data(t *testing.T) []byte {
	t.Helper()
	switch w.Encoding {
	case "":
		return []byte(w.Content)
	case "b64", "base64":
		b, err := base64.StdEncoding.DecodeString(w.Content)
		if err != nil {
			t.Fatalf("%s: %v", w.Path, err)
		}
		return b
	}
	t.Fatalf("%s: unexpected encoding %q", w.Path, w.Encoding)
	return nil
}

// agentConfig is the agent config keys the test looks at.
type agentConfig struct {
	NodeName        string   `yaml:"node_name"`
	Role            string   `yaml:"role"`
	DataDir         string   `yaml:"data_dir"`
	BootstrapExpect int      `yaml:"bootstrap_expect"`
	Join            []string `yaml:"join"`
	API             struct {
		Addr        string `yaml:"addr"`
		TokenFile   string `yaml:"token_file"`
		Advertise   string `yaml:"advertise"`
		TLSCertFile string `yaml:"tls_cert_file"`
		TLSKeyFile  string `yaml:"tls_key_file"`
	} `yaml:"api"`
	Raft struct {
		Addr        string `yaml:"addr"`
		Advertise   string `yaml:"advertise"`
		TLSCAFile   string `yaml:"tls_ca_file"`
		TLSCertFile string `yaml:"tls_cert_file"`
		TLSKeyFile  string `yaml:"tls_key_file"`
	} `yaml:"raft"`
	Gossip struct {
		Addr         string   `yaml:"addr"`
		Advertise    string   `yaml:"advertise"`
		KeyFile      string   `yaml:"key_file"`
		Label        string   `yaml:"label"`
		AllowedCIDRs []string `yaml:"allowed_cidrs"`
	} `yaml:"gossip"`
	HAProxy struct {
		BindAddress *string `yaml:"bind_address"`
		User        string  `yaml:"user"`
		Group       string  `yaml:"group"`
		Chroot      bool    `yaml:"chroot"`
	} `yaml:"haproxy"`
	Routes struct {
		DenyPorts []string `yaml:"deny_ports"`
	} `yaml:"routes"`
	FloatingIP struct {
		Provider     string `yaml:"provider"`
		Address      string `yaml:"address"`
		Priority     int    `yaml:"priority"`
		DigitalOcean struct {
			TokenFile string `yaml:"token_file"`
			DropletID *int   `yaml:"droplet_id"`
		} `yaml:"digitalocean"`
	} `yaml:"floating_ip"`
	Log struct {
		Level string `yaml:"level"`
	} `yaml:"log"`
}

// renderedNode is one droplet's user data, rendered the way Terraform would.
type renderedNode struct {
	name, role string
	userData   string
}

// renderNodes evaluates the user_data of every droplet resource (edges by
// count.index, the witness) with the test variables.
func renderNodes(t *testing.T, overrides map[string]cty.Value) []renderedNode {
	t.Helper()
	c := loadTerraform(t)
	e := c.env(t, overrides)
	droplets := c.resourcesOfType("digitalocean_droplet")
	var out []renderedNode
	for _, name := range []string{"edge", "witness"} {
		b := droplets[name]
		if b == nil {
			t.Fatalf("no digitalocean_droplet.%s", name)
		}
		n := e.eval(t, b.Body.Attributes["count"].Expr)
		count, _ := n.AsBigFloat().Int64()
		for i := range count {
			ie := e.with("count", cty.ObjectVal(map[string]cty.Value{"index": cty.NumberIntVal(i)}))
			nodeName := ie.eval(t, b.Body.Attributes["name"].Expr).AsString()
			ud := ie.eval(t, b.Body.Attributes["user_data"].Expr).AsString()
			out = append(out, renderedNode{name: nodeName, role: name, userData: ud})
		}
	}
	return out
}

func parseCloudConfig(t *testing.T, ud string) cloudConfig {
	t.Helper()
	if !strings.HasPrefix(ud, "#cloud-config\n") {
		t.Fatalf("user data does not start with #cloud-config:\n%.200s", ud)
	}
	var cc cloudConfig
	dec := yaml.NewDecoder(strings.NewReader(ud))
	if err := dec.Decode(&cc); err != nil {
		t.Fatalf("user data is not YAML: %v\n%s", err, numbered(ud))
	}
	// Unknown top-level keys would be ignored by cloud-init: catch typos.
	var top map[string]any
	if err := yaml.Unmarshal([]byte(ud), &top); err != nil {
		t.Fatal(err)
	}
	for k := range top {
		if !slices.Contains([]string{"package_update", "packages", "write_files", "runcmd"}, k) {
			t.Errorf("unexpected cloud-config key %q", k)
		}
	}
	return cc
}

func numbered(s string) string {
	var b strings.Builder
	for i, l := range strings.Split(s, "\n") {
		fmt.Fprintf(&b, "%4d  %s\n", i+1, l)
	}
	return b.String()
}

func (cc cloudConfig) file(t *testing.T, path string) writeFile {
	t.Helper()
	for _, w := range cc.WriteFiles {
		if w.Path == path {
			return w
		}
	}
	t.Fatalf("cloud-init writes no %s", path)
	return writeFile{}
}

// TestCloudInit renders the user data of a pair plus witness, checks what
// cloud-init will do with it, and runs each node's agent config through
// `drawbridge agent --check-config`.
func TestCloudInit(t *testing.T) {
	testenv.SkipShort(t, "renders cloud-init for every node and checks each with the built agent")
	t.Parallel()
	nodes := renderNodes(t, nil)
	if len(nodes) != 3 {
		t.Fatalf("want 2 edges and a witness, have %d nodes", len(nodes))
	}
	peersScript, err := os.ReadFile(filepath.Join(terraformDir, "files", "drawbridge-peers.py"))
	if err != nil {
		t.Fatal(err)
	}
	firstboot, err := os.ReadFile(filepath.Join(terraformDir, "files", "drawbridge-firstboot.sh"))
	if err != nil {
		t.Fatal(err)
	}
	pkgURL := requiredVarValues["drawbridge_package_url"].AsString()
	for i, n := range nodes {
		t.Run(n.name, func(t *testing.T) {
			// DigitalOcean refuses user data over 64 KiB.
			if len(n.userData) > 64<<10 {
				t.Errorf("user data is %d bytes, DigitalOcean takes 64 KiB at most", len(n.userData))
			}
			cc := parseCloudConfig(t, n.userData)
			if !cc.PackageUpdate || !slices.Contains(cc.Packages, "haproxy") || !slices.Contains(cc.Packages, "python3-yaml") {
				t.Errorf("packages: update=%v %v, want haproxy and python3-yaml after an update", cc.PackageUpdate, cc.Packages)
			}

			// Secrets: exact content, root-only until the package's group
			// exists. Only the edges hold the DigitalOcean token.
			secrets := map[string]string{
				"/etc/drawbridge/token":      fakeAPIToken,
				"/etc/drawbridge/gossip.key": fakeGossipKey,
			}
			wantSecrets := []string{fakeAPIToken, fakeGossipKey}
			if n.role == "edge" {
				secrets["/etc/drawbridge/do-token"] = fakeDOToken
				wantSecrets = append(wantSecrets, fakeDOToken)
			}
			for path, want := range secrets {
				w := cc.file(t, path)
				if got := string(w.data(t)); got != want {
					t.Errorf("%s holds %q, want the generated secret", path, got)
				}
				if w.Owner != "root:root" || w.Permissions != "0600" {
					t.Errorf("%s: owner %q mode %q, want root:root 0600 (first boot hands it to the drawbridge group)", path, w.Owner, w.Permissions)
				}
			}
			for _, s := range wantSecrets {
				if c := strings.Count(n.userData, s); c != 1 {
					t.Errorf("a secret appears %d times in the user data, want exactly once (in its file)", c)
				}
			}
			if n.role == "witness" {
				// The witness never holds the reserved IP: no cloud token
				// in its user data, no token file, no config naming one.
				if strings.Contains(n.userData, fakeDOToken) || strings.Contains(n.userData, "do-token") {
					t.Errorf("the witness's user data holds the DigitalOcean token or its file:\n%s", numbered(n.userData))
				}
				for _, w := range cc.WriteFiles {
					d := string(w.data(t))
					if strings.Contains(d, fakeDOToken) {
						t.Errorf("the witness's %s holds the DigitalOcean token", w.Path)
					}
					// The scripts (shared with the edges) may name the file;
					// nothing the witness's agent reads may.
					if strings.HasPrefix(w.Path, "/etc/") && strings.Contains(d, "do-token") {
						t.Errorf("the witness's %s names the DigitalOcean token file", w.Path)
					}
				}
			}
			if got := cc.file(t, "/usr/local/sbin/drawbridge-peers"); !bytes.Equal(got.data(t), peersScript) || got.Permissions != "0755" {
				t.Error("drawbridge-peers is not files/drawbridge-peers.py, mode 0755")
			}
			if got := cc.file(t, "/usr/local/sbin/drawbridge-firstboot"); !bytes.Equal(got.data(t), firstboot) || got.Permissions != "0755" {
				t.Error("drawbridge-firstboot is not files/drawbridge-firstboot.sh, mode 0755")
			}

			// First boot: the script with its arguments, unquoted by YAML.
			// An edge asks the DigitalOcean API for its peers; the witness
			// is given the edges' VPC addresses.
			wantCmd := []string{
				"/usr/local/sbin/drawbridge-firstboot",
				"--package-url", pkgURL,
				"--package-sha256", "",
				"--tag", "drawbridge",
				"--vpc", fakeVPCID,
				"--expect", "3",
			}
			if n.role == "witness" {
				wantCmd = append(wantCmd[:5], "--peers", fakeEdgeIP(0)+","+fakeEdgeIP(1))
			}
			if len(cc.RunCmd) != 1 || !slices.Equal(cc.RunCmd[0], wantCmd) {
				t.Errorf("runcmd = %q, want [%q]", cc.RunCmd, wantCmd)
			}

			// The agent's config.
			w := cc.file(t, "/etc/drawbridge/drawbridge.yaml")
			var cfg agentConfig
			dec := yaml.NewDecoder(bytes.NewReader(w.data(t)))
			dec.KnownFields(true)
			if err := dec.Decode(&cfg); err != nil {
				t.Fatalf("drawbridge.yaml: %v\n%s", err, numbered(string(w.data(t))))
			}
			if cfg.NodeName != n.name || cfg.Role != n.role || cfg.BootstrapExpect != 3 {
				t.Errorf("node_name %q role %q bootstrap_expect %d, want %q %q 3", cfg.NodeName, cfg.Role, cfg.BootstrapExpect, n.name, n.role)
			}
			if cfg.API.TokenFile != "/etc/drawbridge/token" || cfg.Gossip.KeyFile != "/etc/drawbridge/gossip.key" {
				t.Errorf("secrets: api.token_file %q gossip.key_file %q", cfg.API.TokenFile, cfg.Gossip.KeyFile)
			}
			if cfg.Gossip.Label != "drawbridge" {
				t.Errorf("gossip.label = %q, want the cluster name", cfg.Gossip.Label)
			}
			// Secure by default: raft mutual TLS, the API over TLS with the
			// same node certificate, gossip from the VPC only.
			const tlsDir = "/etc/drawbridge/tls/"
			if cfg.Raft.TLSCAFile != tlsDir+"ca.pem" || cfg.Raft.TLSCertFile != tlsDir+"node.pem" || cfg.Raft.TLSKeyFile != tlsDir+"node-key.pem" {
				t.Errorf("raft TLS files %q %q %q", cfg.Raft.TLSCAFile, cfg.Raft.TLSCertFile, cfg.Raft.TLSKeyFile)
			}
			if cfg.API.TLSCertFile != cfg.Raft.TLSCertFile || cfg.API.TLSKeyFile != cfg.Raft.TLSKeyFile {
				t.Errorf("api TLS files %q %q, want the node certificate", cfg.API.TLSCertFile, cfg.API.TLSKeyFile)
			}
			if !slices.Equal(cfg.Gossip.AllowedCIDRs, []string{fakeVPCRange}) {
				t.Errorf("gossip.allowed_cidrs = %q, want the VPC", cfg.Gossip.AllowedCIDRs)
			}
			p := testPKI(t)
			for path, want := range map[string]string{tlsDir + "ca.pem": p.caCert, tlsDir + "node.pem": p.certs[n.name], tlsDir + "node-key.pem": p.keys[n.name]} {
				if got := string(cc.file(t, path).data(t)); got != want {
					t.Errorf("%s = %q, want %q", path, got, want)
				}
			}
			if mode := cc.file(t, tlsDir+"node-key.pem").Permissions; mode != "0600" {
				t.Errorf("node key mode %q, want 0600 (firstboot gives it to the drawbridge group)", mode)
			}
			if cfg.HAProxy.BindAddress == nil || *cfg.HAProxy.BindAddress != "" {
				t.Error(`haproxy.bind_address must be "" (every address): the reserved IP arrives on the anchor IP`)
			}
			if h := cfg.HAProxy; h.User != testenv.HAProxyUser || h.Group != testenv.HAProxyUser || !h.Chroot {
				t.Errorf("haproxy user %q group %q chroot %v: want HAProxy isolated as %s, chrooted", h.User, h.Group, h.Chroot, testenv.HAProxyUser)
			}
			if !slices.Equal(cfg.Routes.DenyPorts, []string{"22", "1-1023"}) {
				t.Errorf("routes.deny_ports = %q, want SSH and the ports below the route range", cfg.Routes.DenyPorts)
			}
			fip := cfg.FloatingIP
			switch n.role {
			case "edge":
				if fip.Provider != "digitalocean" || fip.Address != fakeReservedIP ||
					fip.DigitalOcean.TokenFile != "/etc/drawbridge/do-token" ||
					fip.DigitalOcean.DropletID == nil || *fip.DigitalOcean.DropletID != 0 {
					t.Errorf("floating_ip = %+v, want digitalocean, the reserved IP, the token file, droplet_id 0", fip)
				}
				if want := 100 - i; fip.Priority != want {
					t.Errorf("floating_ip.priority = %d, want %d (edge-1 highest)", fip.Priority, want)
				}
			case "witness":
				if fip.Provider != "none" || fip.Address != "" {
					t.Errorf("witness floating_ip = %+v, want provider none", fip)
				}
			}

			// The agent takes the config with the files cloud-init writes
			// beside it (in a temp dir), and refuses it without them.
			dir, path, files := relocatedConfig(t, w.data(t))
			checkConfigRefused(t, path, files)
			writeEtcFiles(t, cc, dir)
			checkConfig(t, path)
		})
	}

	t.Run("sha256", func(t *testing.T) {
		sum := strings.Repeat("0f", 32)
		nodes := renderNodes(t, map[string]cty.Value{"drawbridge_package_sha256": cty.StringVal(sum)})
		cc := parseCloudConfig(t, nodes[0].userData)
		if i := slices.Index(cc.RunCmd[0], "--package-sha256"); i < 0 || cc.RunCmd[0][i+1] != sum {
			t.Errorf("runcmd %q does not pass the checksum", cc.RunCmd[0])
		}
	})

	t.Run("awkward package URL", func(t *testing.T) {
		// A presigned URL: & and = must reach the script verbatim.
		u := "https://bucket.example.com/drawbridge.deb?X-Amz-Credential=a%2Fb&X-Amz-Signature=<sig>&x='y'"
		nodes := renderNodes(t, map[string]cty.Value{"drawbridge_package_url": cty.StringVal(u)})
		cc := parseCloudConfig(t, nodes[0].userData)
		if cc.RunCmd[0][2] != u {
			t.Errorf("package URL arrives as %q, want %q", cc.RunCmd[0][2], u)
		}
	})

	t.Run("no witness", func(t *testing.T) {
		nodes := renderNodes(t, map[string]cty.Value{"witness": cty.False, "edge_count": cty.NumberIntVal(3)})
		if len(nodes) != 3 || nodes[2].role != "edge" {
			t.Fatalf("want three edges, have %v", nodes)
		}
		for _, n := range nodes {
			cc := parseCloudConfig(t, n.userData)
			var cfg agentConfig
			if err := yaml.Unmarshal(cc.file(t, "/etc/drawbridge/drawbridge.yaml").data(t), &cfg); err != nil {
				t.Fatal(err)
			}
			if cfg.BootstrapExpect != 3 {
				t.Errorf("%s: bootstrap_expect = %d, want 3", n.name, cfg.BootstrapExpect)
			}
		}
	})
}

// writeEtcFiles writes the files cloud-init puts in /etc/drawbridge, but
// the agent's config, into dir instead (/etc/drawbridge/tls/ca.pem as
// dir/tls/ca.pem), with their modes.
func writeEtcFiles(t *testing.T, cc cloudConfig, dir string) {
	t.Helper()
	n := 0
	for _, w := range cc.WriteFiles {
		rel, ok := strings.CutPrefix(w.Path, testenv.EtcDir+"/")
		if !ok || rel == "drawbridge.yaml" {
			continue
		}
		mode, err := strconv.ParseUint(w.Permissions, 8, 32)
		if err != nil {
			t.Fatalf("%s: permissions %q", w.Path, w.Permissions)
		}
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, w.data(t), os.FileMode(mode)); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n == 0 {
		t.Fatal("cloud-init writes nothing into /etc/drawbridge")
	}
}

// TestFirstbootScript checks the first-boot script's syntax (and style, when
// shellcheck is installed).
func TestFirstbootScript(t *testing.T) {
	t.Parallel()
	scripts := []string{
		filepath.Join(terraformDir, "files", "drawbridge-firstboot.sh"),
		filepath.Join("debian", "preinst"), filepath.Join("debian", "postinst"),
		filepath.Join("debian", "prerm"), filepath.Join("debian", "postrm"),
	}
	for _, s := range scripts {
		shell := "sh"
		if strings.HasSuffix(s, ".sh") {
			shell = "bash"
		}
		if out, err := exec.Command(shell, "-n", s).CombinedOutput(); err != nil {
			t.Errorf("%s -n %s: %v\n%s", shell, s, err, out)
		}
		if st, err := os.Stat(s); err != nil || st.Mode()&0o111 == 0 {
			t.Errorf("%s is not executable", s)
		}
	}
	if _, err := exec.LookPath("shellcheck"); err == nil || testenv.Full() {
		sc := testenv.Command(t, "shellcheck", "shellcheck")
		if out, err := exec.Command(sc, scripts...).CombinedOutput(); err != nil {
			t.Errorf("shellcheck: %v\n%s", err, out)
		}
	} else {
		t.Log("shellcheck is not installed; syntax checked only")
	}
	// Arguments it refuses.
	out, err := exec.Command("bash", scripts[0], "--tag", "x").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "required") {
		t.Errorf("firstboot without --package-url: err %v, output %q", err, out)
	}
	out, err = exec.Command("bash", scripts[0], "--package-url", "https://x/d.deb", "--tag", "x").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "required") {
		t.Errorf("firstboot with --tag alone: err %v, output %q", err, out)
	}
	out, err = exec.Command("bash", scripts[0], "--package-url", "https://x/d.deb", "--peers", "10.0.0.1", "--tag", "x").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "replaces") {
		t.Errorf("firstboot with --peers and --tag: err %v, output %q", err, out)
	}
}

// python returns a python3 with PyYAML, as on the droplets (cloud-init
// depends on both), or skips.
func python(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(p, "-c", "import yaml").Run() == nil {
			return p
		}
	}
	testenv.Missing(t, "python3 with PyYAML is not installed (apt-get install python3-yaml); skipping drawbridge-peers")
	return ""
}

// fakeDigitalOcean serves the droplet metadata service and the droplets
// list of the DigitalOcean API for drawbridge-peers.
type fakeDigitalOcean struct {
	t        *testing.T
	selfID   int
	droplets []map[string]any
	status   int // answer the API with this status when non-zero

	mu     sync.Mutex
	tokens []string // Authorization headers received
}

func (f *fakeDigitalOcean) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/metadata/v1/id":
		fmt.Fprintf(w, "%d", f.selfID)
	case r.URL.Path == "/metadata/v1/interfaces/private/0/ipv4/address":
		fmt.Fprint(w, "10.118.0.2")
	case r.URL.Path == "/v2/droplets":
		f.mu.Lock()
		f.tokens = append(f.tokens, r.Header.Get("Authorization"))
		f.mu.Unlock()
		if f.status != 0 {
			w.WriteHeader(f.status)
			fmt.Fprint(w, `{"id":"unauthorized","message":"Unable to authenticate you."}`)
			return
		}
		if r.URL.Query().Get("tag_name") != "drawbridge" {
			json.NewEncoder(w).Encode(map[string]any{"droplets": []any{}})
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"droplets": f.droplets, "links": map[string]any{}})
	default:
		http.NotFound(w, r)
	}
}

func droplet(id int, vpc, private, public string) map[string]any {
	return map[string]any{
		"id": id, "name": fmt.Sprintf("d%d", id), "vpc_uuid": vpc,
		"networks": map[string]any{"v4": []any{
			map[string]any{"ip_address": public, "type": "public"},
			map[string]any{"ip_address": private, "type": "private"},
		}},
	}
}

// TestPeersScript runs drawbridge-peers against a fake metadata service and
// API on a rendered edge config, then checks the result with the agent.
func TestPeersScript(t *testing.T) {
	testenv.SkipShort(t, "runs the peers script against rendered configs")
	t.Parallel()
	py := python(t)
	nodes := renderNodes(t, nil)
	cc := parseCloudConfig(t, nodes[0].userData)
	cfgData := cc.file(t, "/etc/drawbridge/drawbridge.yaml").data(t)
	script := filepath.Join(terraformDir, "files", "drawbridge-peers.py")

	setup := func(t *testing.T, f *fakeDigitalOcean) (cfgPath string, run func(args ...string) (string, error)) {
		srv := httptest.NewServer(f)
		t.Cleanup(srv.Close)
		// The node's files as cloud-init writes them, in a temp dir.
		dir, cfgPath, _ := relocatedConfig(t, cfgData)
		writeEtcFiles(t, cc, dir)
		tokenPath := filepath.Join(dir, "do-token")
		run = func(extra ...string) (string, error) {
			args := append([]string{script,
				"--config", cfgPath, "--token-file", tokenPath,
				"--tag", "drawbridge", "--vpc", fakeVPCID, "--expect", "3",
				"--api-url", srv.URL, "--metadata-url", srv.URL + "/metadata/v1",
			}, extra...)
			cmd := exec.Command(py, args...)
			out, err := cmd.CombinedOutput()
			if strings.Contains(string(out), fakeDOToken) {
				t.Errorf("drawbridge-peers printed the token:\n%s", out)
			}
			return string(out), err
		}
		return cfgPath, run
	}

	t.Run("pair and witness", func(t *testing.T) {
		f := &fakeDigitalOcean{t: t, selfID: 101, droplets: []map[string]any{
			droplet(101, fakeVPCID, "10.118.0.2", "198.51.100.1"),
			droplet(103, fakeVPCID, "10.118.0.4", "198.51.100.3"),
			droplet(102, fakeVPCID, "10.118.0.3", "198.51.100.2"),
			droplet(900, "another-vpc", "10.200.0.9", "198.51.100.9"), // same tag, other cluster
		}}
		cfgPath, run := setup(t, f)
		if out, err := run(); err != nil {
			t.Fatalf("drawbridge-peers: %v\n%s", err, out)
		}
		f.mu.Lock()
		headers := slices.Clone(f.tokens)
		f.mu.Unlock()
		if len(headers) == 0 {
			t.Error("drawbridge-peers never asked the API")
		}
		for _, h := range headers {
			if h != "Bearer "+fakeDOToken {
				t.Errorf("Authorization header %q", h)
			}
		}
		b, err := os.ReadFile(cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		var cfg agentConfig
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil {
			t.Fatalf("rewritten config: %v\n%s", err, b)
		}
		if want := []string{"10.118.0.3:9002", "10.118.0.4:9002"}; !slices.Equal(cfg.Join, want) {
			t.Errorf("join = %q, want %q", cfg.Join, want)
		}
		if cfg.API.Addr != ":9000" || cfg.API.Advertise != "https://10.118.0.2:9000" {
			t.Errorf("api addr %q advertise %q", cfg.API.Addr, cfg.API.Advertise)
		}
		if cfg.Raft.Addr != "10.118.0.2:9001" || cfg.Raft.Advertise != "10.118.0.2:9001" ||
			cfg.Gossip.Addr != "10.118.0.2:9002" || cfg.Gossip.Advertise != "10.118.0.2:9002" {
			t.Errorf("raft %q/%q gossip %q/%q, want the VPC address", cfg.Raft.Addr, cfg.Raft.Advertise, cfg.Gossip.Addr, cfg.Gossip.Advertise)
		}
		if cfg.FloatingIP.Address != fakeReservedIP || cfg.NodeName != nodes[0].name {
			t.Errorf("other keys were not kept: %+v", cfg)
		}
		// The agent gets its droplet id here: it never reaches the metadata
		// service, which only root may.
		if id := cfg.FloatingIP.DigitalOcean.DropletID; id == nil || *id != 101 {
			t.Errorf("droplet_id = %v, want 101 from the metadata service", id)
		}
		if st, err := os.Stat(cfgPath); err != nil || st.Mode().Perm() != 0o640 {
			t.Errorf("mode after rewrite: %v %v, want 0640 kept", st.Mode(), err)
		}
		checkConfig(t, cfgPath)

		// Run again: same result (a replaced peer would show up here).
		before := string(b)
		if out, err := run(); err != nil {
			t.Fatalf("second run: %v\n%s", err, out)
		}
		if after, _ := os.ReadFile(cfgPath); string(after) != before {
			t.Errorf("a second run changed the file:\n%s\n---\n%s", before, after)
		}
	})

	t.Run("peers missing", func(t *testing.T) {
		f := &fakeDigitalOcean{t: t, selfID: 101, droplets: []map[string]any{
			droplet(101, fakeVPCID, "10.118.0.2", "198.51.100.1"),
			droplet(102, fakeVPCID, "10.118.0.3", "198.51.100.2"),
		}}
		cfgPath, run := setup(t, f)
		start := time.Now()
		out, err := run("--timeout", "1")
		if err != nil {
			t.Fatalf("drawbridge-peers: %v\n%s", err, out)
		}
		if !strings.Contains(out, "found 1 of 2 peers") {
			t.Errorf("no word about the missing peer:\n%s", out)
		}
		if time.Since(start) > 20*time.Second {
			t.Errorf("took %v with --timeout 1", time.Since(start))
		}
		var cfg agentConfig
		b, _ := os.ReadFile(cfgPath)
		if err := yaml.Unmarshal(b, &cfg); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(cfg.Join, []string{"10.118.0.3:9002"}) {
			t.Errorf("join = %q, want the one peer found", cfg.Join)
		}
	})

	// The witness: no token file, no API; it joins the addresses Terraform
	// put in its runcmd.
	t.Run("witness with --peers", func(t *testing.T) {
		w := nodes[len(nodes)-1]
		if w.role != "witness" {
			t.Fatalf("last node is %s, want the witness", w.name)
		}
		wcc := parseCloudConfig(t, w.userData)
		i := slices.Index(wcc.RunCmd[0], "--peers")
		if i < 0 || i+1 >= len(wcc.RunCmd[0]) {
			t.Fatalf("the witness's runcmd %q passes no --peers", wcc.RunCmd[0])
		}
		peersArg := wcc.RunCmd[0][i+1]
		wData := wcc.file(t, "/etc/drawbridge/drawbridge.yaml").data(t)

		f := &fakeDigitalOcean{t: t, selfID: 300, droplets: []map[string]any{
			droplet(900, fakeVPCID, "10.118.0.99", "198.51.100.9"), // never to be asked
		}}
		srv := httptest.NewServer(f)
		t.Cleanup(srv.Close)
		fresh := func(t *testing.T) (string, string) {
			dir, cfgPath, _ := relocatedConfig(t, wData)
			writeEtcFiles(t, wcc, dir)
			if _, err := os.Stat(filepath.Join(dir, "do-token")); !os.IsNotExist(err) {
				t.Fatalf("the witness has a do-token file (%v)", err)
			}
			return dir, cfgPath
		}
		run := func(cfgPath string, extra ...string) (string, error) {
			args := append([]string{script, "--config", cfgPath,
				// A token file that would be read if the script asked the
				// API: it must not be.
				"--token-file", filepath.Join(filepath.Dir(cfgPath), "do-token"),
				"--api-url", srv.URL, "--metadata-url", srv.URL + "/metadata/v1",
			}, extra...)
			out, err := exec.Command(py, args...).CombinedOutput()
			return string(out), err
		}

		_, cfgPath := fresh(t)
		if out, err := run(cfgPath, "--peers", peersArg); err != nil {
			t.Fatalf("drawbridge-peers --peers %s: %v\n%s", peersArg, err, out)
		}
		f.mu.Lock()
		asked := len(f.tokens)
		f.mu.Unlock()
		if asked != 0 {
			t.Errorf("drawbridge-peers --peers asked the DigitalOcean API %d times", asked)
		}
		b, err := os.ReadFile(cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		var cfg agentConfig
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil {
			t.Fatalf("rewritten config: %v\n%s", err, b)
		}
		if want := []string{fakeEdgeIP(0) + ":9002", fakeEdgeIP(1) + ":9002"}; !slices.Equal(cfg.Join, want) {
			t.Errorf("witness join = %q, want the edges' gossip addresses %q", cfg.Join, want)
		}
		if cfg.Raft.Advertise != "10.118.0.2:9001" || cfg.Gossip.Addr != "10.118.0.2:9002" || cfg.API.Advertise != "https://10.118.0.2:9000" {
			t.Errorf("raft %q gossip %q api %q, want this node's VPC address", cfg.Raft.Advertise, cfg.Gossip.Addr, cfg.API.Advertise)
		}
		if cfg.FloatingIP.Provider != "none" || cfg.FloatingIP.DigitalOcean.DropletID != nil || cfg.FloatingIP.DigitalOcean.TokenFile != "" {
			t.Errorf("witness floating_ip = %+v, want provider none and no DigitalOcean settings", cfg.FloatingIP)
		}
		if strings.Contains(string(b), "do-token") {
			t.Errorf("the witness's config names the token file:\n%s", b)
		}
		checkConfig(t, cfgPath)

		// Its own address among the peers is dropped, duplicates are
		// folded, and an IPv6 peer is bracketed.
		_, cfgPath = fresh(t)
		if out, err := run(cfgPath, "--peers", " 10.118.0.4,10.118.0.2,10.118.0.4,fd00::5"); err != nil {
			t.Fatalf("drawbridge-peers: %v\n%s", err, out)
		}
		cfg = agentConfig{}
		b, _ = os.ReadFile(cfgPath)
		if err := yaml.Unmarshal(b, &cfg); err != nil {
			t.Fatal(err)
		}
		if want := []string{"10.118.0.4:9002", "[fd00::5]:9002"}; !slices.Equal(cfg.Join, want) {
			t.Errorf("join = %q, want %q", cfg.Join, want)
		}

		// What it refuses, leaving the config untouched.
		for _, bad := range [][]string{
			{"--peers", ""},
			{"--peers", ",,"},
			{"--peers", "10.118.0.3:9002"},
			{"--peers", "edge-1.example.com"},
			{"--peers", "10.118.0.3,10.118.0.999"},
			{"--peers", "10.118.0.3\njoin: [203.0.113.66:9002]"},
			{"--peers", "10.118.0.3", "--tag", "drawbridge"},
			{"--peers", "10.118.0.3", "--expect", "3"},
			{"--tag", "drawbridge", "--vpc", fakeVPCID}, // no --expect, no --peers
		} {
			_, cfgPath := fresh(t)
			out, err := run(cfgPath, bad...)
			if err == nil {
				t.Errorf("drawbridge-peers %q succeeded:\n%s", bad, out)
			}
			if b, _ := os.ReadFile(cfgPath); !bytes.Equal(b, testenv.Relocate(wData, filepath.Dir(cfgPath))) {
				t.Errorf("drawbridge-peers %q changed the config", bad)
			}
		}
		f.mu.Lock()
		asked = len(f.tokens)
		f.mu.Unlock()
		if asked != 0 {
			t.Errorf("the DigitalOcean API was asked %d times", asked)
		}
	})

	t.Run("token refused", func(t *testing.T) {
		f := &fakeDigitalOcean{t: t, selfID: 101, status: http.StatusUnauthorized}
		cfgPath, run := setup(t, f)
		out, err := run()
		if err == nil || !strings.Contains(out, "refused the token") {
			t.Errorf("err %v, output %q: want a clear failure", err, out)
		}
		if b, _ := os.ReadFile(cfgPath); !bytes.Equal(b, testenv.Relocate(cfgData, filepath.Dir(cfgPath))) {
			t.Error("the config was changed after a failure")
		}
	})
}
