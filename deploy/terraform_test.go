package deploy_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
)

// Ports of the agent (DESIGN.md defaults) that must never be public.
const (
	apiPort    = 9000
	raftPort   = 9001
	gossipPort = 9002
)

func TestTerraformLayout(t *testing.T) {
	for _, f := range []string{
		"main.tf", "variables.tf", "outputs.tf", "versions.tf",
		"cloud-init.yaml.tftpl", "terraform.tfvars.example", "README.md",
		"files/drawbridge-peers.py", "files/drawbridge-firstboot.sh",
	} {
		if _, err := os.Stat(filepath.Join(terraformDir, f)); err != nil {
			t.Errorf("deploy/terraform/%s: %v", f, err)
		}
	}
}

func TestTerraformVariablesTypedAndDescribed(t *testing.T) {
	c := loadTerraform(t)
	if len(c.variables) == 0 {
		t.Fatal("no variables")
	}
	for name, b := range c.variables {
		if _, ok := b.Body.Attributes["type"]; !ok {
			t.Errorf("variable %q has no type", name)
		} else {
			c.varType(t, name) // parses
		}
		d, ok := b.Body.Attributes["description"]
		if !ok {
			t.Errorf("variable %q has no description", name)
			continue
		}
		v, diags := d.Expr.Value(nil)
		if diags.HasErrors() || v.Type() != cty.String || len(strings.TrimSpace(v.AsString())) < 10 {
			t.Errorf("variable %q: description must be a literal sentence", name)
		}
		for _, vb := range b.Body.Blocks {
			if vb.Type != "validation" {
				continue
			}
			if _, ok := vb.Body.Attributes["error_message"]; !ok {
				t.Errorf("variable %q: a validation without error_message", name)
			}
			// Before Terraform 1.9 a condition may only refer to its own variable.
			for _, tr := range vb.Body.Attributes["condition"].Expr.Variables() {
				if tr.RootName() != "var" || attrName(tr, 1) != name {
					t.Errorf("variable %q: validation refers to %s", name, traversalString(tr))
				}
			}
		}
	}
	// Defaults must fit the declared types (varValues converts them).
	c.varValues(t, nil)

	// The list.
	for _, name := range []string{
		"region", "size", "witness_size", "image", "edge_count", "witness", "ssh_keys",
		"webhook_allowed_cidrs", "ssh_allowed_cidrs", "route_port_range",
		"drawbridge_package_url", "tags", "do_token",
	} {
		if _, ok := c.variables[name]; !ok {
			t.Errorf("variable %q is missing", name)
		}
	}
	defaults := c.varValues(t, nil)
	for name, want := range map[string]cty.Value{
		"image":        cty.StringVal("debian-12-x64"),
		"edge_count":   cty.NumberIntVal(2),
		"witness":      cty.True,
		"witness_size": cty.StringVal("s-1vcpu-512mb-10gb"),
	} {
		if got := defaults[name]; !got.RawEquals(want) {
			t.Errorf("variable %q default = %#v, want %#v", name, got, want)
		}
	}
}

// TestTerraformReferences is the part of `terraform validate` that needs no
// provider: every var., local. and resource reference names something
// declared.
func TestTerraformReferences(t *testing.T) {
	c := loadTerraform(t)
	// Iterator variables of dynamic blocks (dynamic "inbound_rule" binds
	// inbound_rule.value).
	iterators := map[string]bool{}
	for _, body := range c.files {
		walkBlocks(body, func(b *hclsyntax.Block) {
			if b.Type == "dynamic" && len(b.Labels) == 1 {
				iterators[b.Labels[0]] = true
			}
		})
	}
	check := func(where string, tr hcl.Traversal) {
		root := tr.RootName()
		if iterators[root] {
			return
		}
		switch root {
		case "var":
			if name := attrName(tr, 1); c.variables[name] == nil {
				t.Errorf("%s: var.%s is not declared", where, name)
			}
		case "local":
			if name := attrName(tr, 1); c.locals[name] == nil {
				t.Errorf("%s: local.%s is not declared", where, name)
			}
		case "path", "count", "each", "self", "terraform":
		default:
			if strings.Contains(root, "_") {
				key := root + "." + attrName(tr, 1)
				if c.resources[key] == nil {
					t.Errorf("%s: %s is not declared", where, key)
				}
			}
		}
	}
	for file, body := range c.files {
		walkExprs(body, func(e hclsyntax.Expression) {
			for _, tr := range e.Variables() {
				check(fmt.Sprintf("%s:%d", file, tr.SourceRange().Start.Line), tr)
			}
		})
	}
}

func TestTerraformProvidersPinned(t *testing.T) {
	c := loadTerraform(t)
	want := map[string]string{"digitalocean": "digitalocean/digitalocean", "random": "hashicorp/random", "tls": "hashicorp/tls"}
	found := map[string]bool{}
	for _, b := range c.others {
		if b.Type != "terraform" {
			continue
		}
		for _, rp := range b.Body.Blocks {
			if rp.Type != "required_providers" {
				continue
			}
			for name, a := range rp.Body.Attributes {
				v, diags := a.Expr.Value(nil)
				if diags.HasErrors() {
					t.Fatalf("required_providers.%s: %s", name, diags.Error())
				}
				m := v.AsValueMap()
				if src := m["source"].AsString(); src != want[name] {
					t.Errorf("provider %s source = %q, want %q", name, src, want[name])
				}
				if ver := m["version"]; ver.IsNull() || !strings.HasPrefix(ver.AsString(), "~>") {
					t.Errorf("provider %s: pin a version with ~>", name)
				} else if name == "digitalocean" && !strings.HasPrefix(ver.AsString(), "~> 2.") {
					t.Errorf("digitalocean provider version %q, want ~> 2.x", ver.AsString())
				}
				found[name] = true
			}
		}
	}
	for name := range want {
		if !found[name] {
			t.Errorf("provider %s is not in required_providers", name)
		}
	}
}

func TestTerraformSecretsSensitive(t *testing.T) {
	c := loadTerraform(t)
	if b := c.variables["do_token"]; b == nil || !literalTrue(b.Body.Attributes["sensitive"]) {
		t.Error("variable do_token must be sensitive = true")
	}
	secretRoots := map[string]bool{"random_password": true, "random_id": true}
	sensitiveVars := map[string]bool{}
	for name, b := range c.variables {
		if literalTrue(b.Body.Attributes["sensitive"]) {
			sensitiveVars[name] = true
		}
	}
	for name, b := range c.outputs {
		value := b.Body.Attributes["value"]
		if value == nil {
			t.Errorf("output %q has no value", name)
			continue
		}
		if _, ok := b.Body.Attributes["description"]; !ok {
			t.Errorf("output %q has no description", name)
		}
		secret := false
		for _, tr := range c.expandLocals(value.Expr) {
			if secretRoots[tr.RootName()] || (tr.RootName() == "var" && sensitiveVars[attrName(tr, 1)]) {
				secret = true
			}
		}
		if secret && !literalTrue(b.Body.Attributes["sensitive"]) {
			t.Errorf("output %q exposes a secret without sensitive = true", name)
		}
	}
	if b := c.outputs["api_token"]; b == nil || !literalTrue(b.Body.Attributes["sensitive"]) {
		t.Error("output api_token must exist and be sensitive")
	}
	for _, name := range []string{"reserved_ip", "webhook_url", "nodes"} {
		if c.outputs[name] == nil {
			t.Errorf("output %q is missing", name)
		}
	}
}

// TestTerraformReservedIPNotFought checks that Terraform never moves the
// reserved IP after the agents did. digitalocean_reserved_ip_assignment
// cannot do that even with ignore_changes: its refresh drops it from the
// state once the IP is on another droplet, so the next apply re-creates it
// (moves the IP back). An assignment through digitalocean_reserved_ip's own
// droplet_id is only safe with lifecycle { ignore_changes = [droplet_id] }.
func TestTerraformReservedIPNotFought(t *testing.T) {
	c := loadTerraform(t)
	for _, typ := range []string{"digitalocean_reserved_ip_assignment", "digitalocean_floating_ip_assignment"} {
		for name := range c.resourcesOfType(typ) {
			t.Errorf("%s.%s: Terraform would move the IP back after every failover (the resource re-creates itself once drawbridge moved the IP); leave the assignment to the agents", typ, name)
		}
	}
	ips := c.resourcesOfType("digitalocean_reserved_ip")
	if len(ips) != 1 {
		t.Fatalf("want one digitalocean_reserved_ip, have %d", len(ips))
	}
	for _, typ := range []string{"digitalocean_reserved_ip", "digitalocean_floating_ip"} {
		for name, b := range c.resourcesOfType(typ) {
			if _, ok := b.Body.Attributes["droplet_id"]; !ok {
				continue
			}
			ign := lifecycleIgnores(b)
			if !slices.Contains(ign, "droplet_id") && !slices.Contains(ign, "all") {
				t.Errorf("%s.%s sets droplet_id without lifecycle { ignore_changes = [droplet_id] }: Terraform would fight drawbridge for the IP", typ, name)
			}
		}
	}
	// The edges must be told which IP to claim.
	e := c.env(t, nil)
	v := e.local(t, "node_common").GetAttr("reserved_ip")
	if v.AsString() != fakeReservedIP {
		t.Errorf("node_common.reserved_ip = %#v, want the reserved IP", v)
	}
}

// TestTerraformDropletsSafeToChange checks that editing variables never
// replaces every node at once (and the cluster's data with them).
func TestTerraformDropletsSafeToChange(t *testing.T) {
	c := loadTerraform(t)
	droplets := c.resourcesOfType("digitalocean_droplet")
	if droplets["edge"] == nil || droplets["witness"] == nil {
		t.Fatalf("want droplets edge and witness, have %v", keys(droplets))
	}
	for name, b := range droplets {
		ign := lifecycleIgnores(b)
		for _, attr := range []string{"user_data", "image", "ssh_keys"} {
			if !slices.Contains(ign, attr) {
				t.Errorf("digitalocean_droplet.%s: a change of %s would replace every node at once; add it to ignore_changes", name, attr)
			}
		}
		if _, ok := b.Body.Attributes["vpc_uuid"]; !ok {
			t.Errorf("digitalocean_droplet.%s is not in the VPC", name)
		}
		if !literalTrue(b.Body.Attributes["graceful_shutdown"]) {
			t.Errorf("digitalocean_droplet.%s: graceful_shutdown = true lets the agent hand the IP over on destroy", name)
		}
	}
	e := c.env(t, nil)
	if n := e.eval(t, droplets["edge"].Body.Attributes["count"].Expr); !n.RawEquals(cty.NumberIntVal(2)) {
		t.Errorf("edge count = %#v, want var.edge_count (2)", n)
	}
	for w, want := range map[bool]int64{true: 1, false: 0} {
		e := c.env(t, map[string]cty.Value{"witness": cty.BoolVal(w)})
		if n := e.eval(t, droplets["witness"].Body.Attributes["count"].Expr); !n.RawEquals(cty.NumberIntVal(want)) {
			t.Errorf("witness = %v: witness count = %#v, want %d", w, n, want)
		}
	}
}

// TestTerraformValidations runs the variables' validation blocks on good and
// bad values, so the regular expressions mean what the messages say.
func TestTerraformValidations(t *testing.T) {
	c := loadTerraform(t)
	cases := []struct {
		variable, value string
		ok              bool
	}{
		{"name", `"drawbridge"`, true},
		{"name", `"edge-prod-1"`, true},
		{"name", `"Drawbridge"`, false},
		{"name", `"db_1"`, false},
		{"name", `"trailing-"`, false},
		{"region", `"fra1"`, true},
		{"region", `"Frankfurt"`, false},
		{"image", `"debian-12-x64"`, true},
		{"image", `"123456789"`, true},
		{"image", `"ubuntu-24-04-x64"`, false},
		{"edge_count", `2`, true},
		{"edge_count", `5`, true},
		{"edge_count", `1`, false},
		{"edge_count", `6`, false},
		{"edge_count", `2.5`, false},
		{"ssh_keys", `[]`, false},
		{"ssh_keys", `["12345"]`, true},
		{"ssh_allowed_cidrs", `[]`, true},
		{"ssh_allowed_cidrs", `["203.0.113.7/32", "2001:db8::/48"]`, true},
		{"ssh_allowed_cidrs", `["203.0.113.7"]`, false},
		{"webhook_allowed_cidrs", `[]`, false},
		{"webhook_allowed_cidrs", `["0.0.0.0/0"]`, true},
		{"webhook_allowed_cidrs", `["example.com"]`, false},
		{"route_port_range", `{ from = 1024, to = 65535 }`, true},
		{"route_port_range", `{ from = 80, to = 443 }`, true},
		{"route_port_range", `{ from = 1, to = 65535 }`, true},
		{"route_port_range", `{ from = 0, to = 100 }`, false},
		{"route_port_range", `{ from = 2000, to = 1000 }`, false},
		{"route_port_range", `{ from = 1, to = 65536 }`, false},
		{"route_port_range", `{ from = 9000, to = 9002 }`, false},
		{"route_port_range", `{ from = 9001, to = 9001 }`, false},
		{"route_port_range", `{ from = 22, to = 22 }`, false},
		{"route_port_range", `{ from = 8999, to = 9002 }`, true},
		{"drawbridge_package_url", `"https://example.com/drawbridge_1.2.3_amd64.deb"`, true},
		{"drawbridge_package_url", `"https://example.com/dl/drawbridge.deb?X-Amz-Signature=abc&x=1"`, true},
		{"drawbridge_package_url", `"http://example.com/drawbridge.deb"`, false},
		{"drawbridge_package_url", `"https://example.com/drawbridge.tar.gz"`, false},
		{"drawbridge_package_sha256", `""`, true},
		{"drawbridge_package_sha256", `"` + strings.Repeat("ab", 32) + `"`, true},
		{"drawbridge_package_sha256", `"` + strings.Repeat("AB", 32) + `"`, false},
		{"tags", `["team:edge", "prod"]`, true},
		{"tags", `["has space"]`, false},
		{"do_token", `"` + fakeDOToken + `"`, true},
		{"do_token", `""`, false},
		{"do_token", `"dop_v1_with a space in it 0000000000"`, false},
		{"vpc_ip_range", `null`, true},
		{"vpc_ip_range", `"10.118.0.0/20"`, true},
		{"vpc_ip_range", `"10.118.0.0"`, false},
		{"log_level", `"debug"`, true},
		{"log_level", `"trace"`, false},
	}
	for _, tc := range cases {
		t.Run(tc.variable+"="+tc.value, func(t *testing.T) {
			b := c.variables[tc.variable]
			if b == nil {
				t.Fatalf("no variable %q", tc.variable)
			}
			raw := parseValue(t, tc.value)
			v, err := convert.Convert(raw, c.varType(t, tc.variable))
			if err != nil {
				if tc.ok {
					t.Fatalf("value does not fit the type: %v", err)
				}
				return // refused by the type
			}
			e := c.env(t, map[string]cty.Value{tc.variable: v})
			ok := true
			for _, vb := range b.Body.Blocks {
				if vb.Type != "validation" {
					continue
				}
				res := e.eval(t, vb.Body.Attributes["condition"].Expr)
				if res.IsNull() || !res.IsKnown() {
					t.Fatalf("condition at %s is %#v", vb.Range(), res)
				}
				ok = ok && res.True()
			}
			if ok != tc.ok {
				t.Errorf("accepted = %v, want %v", ok, tc.ok)
			}
		})
	}
}

// firewallRule is one evaluated inbound or outbound rule.
type firewallRule struct {
	protocol string
	from, to int // port range; 0,0 for icmp
	cidrs    []string
}

func (r firewallRule) covers(port int) bool { return r.from <= port && port <= r.to }

func (r firewallRule) String() string {
	return fmt.Sprintf("%s %d-%d from %v", r.protocol, r.from, r.to, r.cidrs)
}

func firewallRules(t *testing.T, e *evalEnv, fw *hclsyntax.Block, typ, addrAttr string) []firewallRule {
	t.Helper()
	var out []firewallRule
	for _, b := range expandBlocks(t, e, fw.Body, typ) {
		r := firewallRule{protocol: b.attr(t, "protocol").AsString()}
		if pr := b.attr(t, "port_range"); !pr.IsNull() {
			r.from, r.to = parsePortRange(t, pr.AsString())
		} else if r.protocol != "icmp" {
			t.Errorf("%s %s rule without port_range", typ, r.protocol)
		}
		r.cidrs = ctyStrings(t, b.attr(t, addrAttr))
		if len(r.cidrs) == 0 && b.attr(t, "source_tags").IsNull() && b.attr(t, "destination_tags").IsNull() {
			t.Errorf("%s %s %d-%d has no addresses", typ, r.protocol, r.from, r.to)
		}
		out = append(out, r)
	}
	return out
}

func parsePortRange(t *testing.T, s string) (int, int) {
	t.Helper()
	if s == "all" || s == "0" {
		return 1, 65535
	}
	lo, hi, isRange := strings.Cut(s, "-")
	a, err1 := strconv.Atoi(lo)
	b := a
	var err2 error
	if isRange {
		b, err2 = strconv.Atoi(hi)
	}
	if err1 != nil || err2 != nil || a < 1 || b > 65535 || a > b {
		t.Fatalf("port_range %q is not a DigitalOcean port range", s)
	}
	return a, b
}

// TestTerraformFirewall evaluates the firewall for several route port ranges
// and checks that raft and gossip are only ever open to the VPC, the API to
// the webhook CIDRs (and the VPC, for forwarding), and routes to exactly the
// requested range minus SSH and the agent's ports.
func TestTerraformFirewall(t *testing.T) {
	c := loadTerraform(t)
	fws := c.resourcesOfType("digitalocean_firewall")
	if len(fws) != 1 {
		t.Fatalf("want one digitalocean_firewall, have %d", len(fws))
	}
	var fw *hclsyntax.Block
	for _, b := range fws {
		fw = b
	}
	for _, ref := range []string{"digitalocean_droplet.edge", "digitalocean_droplet.witness"} {
		if !refersTo(fw.Body.Attributes["droplet_ids"], ref) {
			t.Errorf("the firewall does not cover %s", ref)
		}
	}
	cases := []struct {
		name     string
		from, to int
		ssh      []string
	}{
		{"default", 1024, 65535, nil},
		{"everything", 1, 65535, []string{"203.0.113.7/32"}},
		{"web", 80, 443, []string{"203.0.113.7/32", "2001:db8::/48"}},
		{"around the agent ports", 8990, 9010, nil},
		{"one port", 25565, 25565, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ssh := cty.ListValEmpty(cty.String)
			if len(tc.ssh) > 0 {
				ssh = stringList(tc.ssh)
			}
			e := c.env(t, map[string]cty.Value{
				"route_port_range": cty.ObjectVal(map[string]cty.Value{
					"from": cty.NumberIntVal(int64(tc.from)), "to": cty.NumberIntVal(int64(tc.to)),
				}),
				"ssh_allowed_cidrs": ssh,
			})
			webhook := ctyStrings(t, e.vars["webhook_allowed_cidrs"])
			routeCIDRs := ctyStrings(t, e.vars["route_allowed_cidrs"])
			in := firewallRules(t, e, fw, "inbound_rule", "source_addresses")

			for _, r := range in {
				for _, cidr := range r.cidrs {
					if cidr == fakeVPCRange {
						continue
					}
					for _, p := range []int{raftPort, gossipPort} {
						if r.protocol != "icmp" && r.covers(p) {
							t.Errorf("rule %s opens port %d beyond the VPC (%s)", r, p, cidr)
						}
					}
				}
			}
			hasRule := func(proto string, port int, cidrs []string) bool {
				for _, r := range in {
					if r.protocol == proto && r.from == port && r.to == port && slices.Equal(r.cidrs, cidrs) {
						return true
					}
				}
				return false
			}
			for _, want := range []struct {
				proto string
				port  int
			}{{"tcp", raftPort}, {"tcp", gossipPort}, {"udp", gossipPort}} {
				if !hasRule(want.proto, want.port, []string{fakeVPCRange}) {
					t.Errorf("no %s %d rule from the VPC range alone", want.proto, want.port)
				}
			}
			if !hasRule("tcp", apiPort, append(slices.Clone(webhook), fakeVPCRange)) {
				t.Errorf("no API rule from the webhook CIDRs %v plus the VPC", webhook)
			}
			if len(tc.ssh) > 0 != hasRule("tcp", 22, tc.ssh) {
				t.Errorf("SSH rule present = %v, want %v", !(len(tc.ssh) > 0), len(tc.ssh) > 0)
			}

			// Routes: every requested port but SSH and the agent's is open to
			// the route CIDRs, and nothing else is.
			routePort := func(p int) bool {
				for _, r := range in {
					if r.protocol == "tcp" && r.covers(p) && slices.Equal(r.cidrs, routeCIDRs) {
						return true
					}
				}
				return false
			}
			for _, p := range []int{1, 21, 22, 23, 79, 80, 443, 444, 1023, 1024, 8999, 9000, 9001, 9002, 9003, 25565, 65535} {
				want := tc.from <= p && p <= tc.to && p != 22 && (p < apiPort || p > gossipPort)
				if got := routePort(p); got != want {
					t.Errorf("port %d open for routes = %v, want %v", p, got, want)
				}
			}

			// The agents refuse routes the firewall would drop.
			deny := ctyStrings(t, e.local(t, "deny_ports"))
			for _, p := range []int{1, 22, 80, 1023, 1024, 9000, 40000, 65535} {
				denied := false
				for _, d := range deny {
					lo, hi := parsePortRange(t, d)
					denied = denied || (lo <= p && p <= hi)
				}
				inRange := tc.from <= p && p <= tc.to
				if p == 22 || (p >= apiPort && p <= gossipPort) {
					continue // refused either way (deny list or the agent's own ports)
				}
				if denied == inRange {
					t.Errorf("port %d: in the route range = %v but denied = %v (deny_ports %v)", p, inRange, denied, deny)
				}
			}

			out := firewallRules(t, e, fw, "outbound_rule", "destination_addresses")
			for _, proto := range []string{"tcp", "udp"} {
				found := false
				for _, r := range out {
					found = found || (r.protocol == proto && r.from == 1 && r.to == 65535 && slices.Contains(r.cidrs, "0.0.0.0/0"))
				}
				if !found {
					t.Errorf("no outbound %s rule to everywhere: the nodes could not reach apt, the DigitalOcean API or backends", proto)
				}
			}
		})
	}
}

// TestTerraformFmt runs `terraform fmt -check` when a terraform binary is
// installed.
func TestTerraformFmt(t *testing.T) {
	bin, err := exec.LookPath("terraform")
	if err != nil {
		t.Skip("terraform is not installed; skipping terraform fmt -check")
	}
	cmd := exec.Command(bin, "fmt", "-check", "-diff", "-recursive", terraformDir)
	// No update check, no CLI config: nothing leaves this machine.
	cmd.Env = append(os.Environ(), "CHECKPOINT_DISABLE=1", "TF_CLI_CONFIG_FILE="+os.DevNull)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("terraform fmt -check -recursive deploy/terraform: %v\n%s", err, out)
	}
}

// TestTfvarsExample checks that terraform.tfvars.example sets every
// required variable, only declared ones, with values their validations
// accept, and no secret that looks real.
func TestTfvarsExample(t *testing.T) {
	c := loadTerraform(t)
	src, err := os.ReadFile(filepath.Join(terraformDir, "terraform.tfvars.example"))
	if err != nil {
		t.Fatal(err)
	}
	f, diags := hclsyntax.ParseConfig(src, "terraform.tfvars.example", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	body := f.Body.(*hclsyntax.Body)
	values := map[string]cty.Value{}
	for name, a := range body.Attributes {
		if c.variables[name] == nil {
			t.Errorf("%s is not a variable", name)
			continue
		}
		v, diags := a.Expr.Value(nil)
		if diags.HasErrors() {
			t.Fatalf("%s: %s", name, diags.Error())
		}
		cv, err := convert.Convert(v, c.varType(t, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		values[name] = cv
	}
	for name, b := range c.variables {
		_, hasDefault := b.Body.Attributes["default"]
		_, set := values[name]
		if !hasDefault && !set && name != "do_token" {
			t.Errorf("required variable %s is not in the example", name)
		}
		if set && name == "do_token" {
			t.Errorf("keep do_token out of the tfvars file (TF_VAR_do_token)")
		}
	}
	e := c.env(t, values)
	for name := range values {
		for _, vb := range c.variables[name].Body.Blocks {
			if vb.Type == "validation" && e.eval(t, vb.Body.Attributes["condition"].Expr).False() {
				t.Errorf("%s: the example value fails validation at %s", name, vb.Range())
			}
		}
	}
}

// --- helpers ---

func parseValue(t *testing.T, src string) cty.Value {
	t.Helper()
	expr, diags := hclsyntax.ParseExpression([]byte(src), "value", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatalf("parse %s: %s", src, diags.Error())
	}
	v, diags := expr.Value(nil)
	if diags.HasErrors() {
		t.Fatalf("evaluate %s: %s", src, diags.Error())
	}
	return v
}

func stringList(ss []string) cty.Value {
	vals := make([]cty.Value, len(ss))
	for i, s := range ss {
		vals[i] = cty.StringVal(s)
	}
	return cty.ListVal(vals)
}

func literalTrue(a *hclsyntax.Attribute) bool {
	if a == nil {
		return false
	}
	v, diags := a.Expr.Value(nil)
	return !diags.HasErrors() && v.Type() == cty.Bool && v.True()
}

func attrName(tr hcl.Traversal, i int) string {
	if len(tr) <= i {
		return ""
	}
	if a, ok := tr[i].(hcl.TraverseAttr); ok {
		return a.Name
	}
	return ""
}

func traversalString(tr hcl.Traversal) string {
	parts := []string{tr.RootName()}
	for _, s := range tr[1:] {
		if a, ok := s.(hcl.TraverseAttr); ok {
			parts = append(parts, a.Name)
		}
	}
	return strings.Join(parts, ".")
}

// refersTo reports whether attribute a's expression refers to ref
// ("type.name").
func refersTo(a *hclsyntax.Attribute, ref string) bool {
	if a == nil {
		return false
	}
	for _, tr := range a.Expr.Variables() {
		if tr.RootName()+"."+attrName(tr, 1) == ref {
			return true
		}
	}
	return false
}

// expandLocals returns expr's references with local.X replaced, recursively,
// by the references of X's expression.
func (c *tfConfig) expandLocals(expr hcl.Expression) []hcl.Traversal {
	var out []hcl.Traversal
	seen := map[string]bool{}
	var walk func(hcl.Expression)
	walk = func(e hcl.Expression) {
		for _, tr := range e.Variables() {
			if tr.RootName() == "local" {
				name := attrName(tr, 1)
				if a := c.locals[name]; a != nil && !seen[name] {
					seen[name] = true
					walk(a.Expr)
				}
				continue
			}
			out = append(out, tr)
		}
	}
	walk(expr)
	return out
}

// walkExprs calls f for every attribute expression in body, nested blocks
// included, but not lifecycle blocks (ignore_changes names attributes, it
// does not refer to anything).
func walkExprs(body *hclsyntax.Body, f func(hclsyntax.Expression)) {
	for _, a := range body.Attributes {
		f(a.Expr)
	}
	for _, b := range body.Blocks {
		if b.Type != "lifecycle" {
			walkExprs(b.Body, f)
		}
	}
}

// walkBlocks calls f for every block in body, nested ones included.
func walkBlocks(body *hclsyntax.Body, f func(*hclsyntax.Block)) {
	for _, b := range body.Blocks {
		f(b)
		walkBlocks(b.Body, f)
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
