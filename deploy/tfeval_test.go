package deploy_test

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/ext/tryfunc"
	"github.com/hashicorp/hcl/v2/ext/typeexpr"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"

	"github.com/drawbridge-lb/drawbridge/internal/pki"
)

// This file is a small evaluator for deploy/terraform: enough of Terraform's
// semantics (variables with types and defaults, locals, the functions the
// configuration calls, count.index, templatefile) to compute firewall rules,
// validations and user data without a provider or network. No terraform
// binary here can run `terraform validate` (the providers cannot be
// downloaded), so this is what checks that the expressions mean what the
// comments say.

const terraformDir = "terraform"

// Stand-ins for values only DigitalOcean knows after `apply`.
const (
	fakeVPCID      = "5a4981aa-0000-4000-8000-00000000feed"
	fakeVPCRange   = "10.118.0.0/20"
	fakeReservedIP = "203.0.113.10"
	fakeAPIToken   = "FAKEapiTOKENforTESTSonly0000000000000000000000000"
	fakeDOToken    = "dop_v1_FAKE0000000000000000000000000000000000000000000000000000000000"
)

// fakeGossipKey is 32 bytes of zeros, base64: what random_id.b64_std looks like.
var fakeGossipKey = base64.StdEncoding.EncodeToString(make([]byte, 32))

// requiredVarValues are test values for the variables without a default.
var requiredVarValues = map[string]cty.Value{
	"region":                 cty.StringVal("fra1"),
	"ssh_keys":               cty.ListVal([]cty.Value{cty.StringVal("3b:16:bf:e4:8b:00:8b:b8:59:8c:a9:d3:f0:19:45:fa")}),
	"webhook_allowed_cidrs":  cty.ListVal([]cty.Value{cty.StringVal("198.51.100.0/24")}),
	"drawbridge_package_url": cty.StringVal("https://downloads.example.com/drawbridge_1.2.3_amd64.deb"),
	"do_token":               cty.StringVal(fakeDOToken),
}

// tfConfig is the parsed deploy/terraform directory.
type tfConfig struct {
	dir       string
	files     map[string]*hclsyntax.Body
	variables map[string]*hclsyntax.Block
	locals    map[string]*hclsyntax.Attribute
	resources map[string]*hclsyntax.Block // "type.name"
	outputs   map[string]*hclsyntax.Block
	others    []*hclsyntax.Block // terraform, provider, data, module blocks
}

func loadTerraform(t *testing.T) *tfConfig {
	t.Helper()
	dir, err := filepath.Abs(terraformDir)
	if err != nil {
		t.Fatal(err)
	}
	paths, err := filepath.Glob(filepath.Join(dir, "*.tf"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no .tf files in %s (%v)", dir, err)
	}
	c := &tfConfig{
		dir:       dir,
		files:     map[string]*hclsyntax.Body{},
		variables: map[string]*hclsyntax.Block{},
		locals:    map[string]*hclsyntax.Attribute{},
		resources: map[string]*hclsyntax.Block{},
		outputs:   map[string]*hclsyntax.Block{},
	}
	parser := hclparse.NewParser()
	for _, p := range paths {
		f, diags := parser.ParseHCLFile(p)
		if diags.HasErrors() {
			t.Fatalf("parse %s: %s", p, diags.Error())
		}
		body := f.Body.(*hclsyntax.Body)
		c.files[filepath.Base(p)] = body
		if len(body.Attributes) > 0 {
			t.Errorf("%s: top-level attributes are not Terraform", p)
		}
		for _, b := range body.Blocks {
			key := strings.Join(b.Labels, ".")
			dup := false
			switch b.Type {
			case "variable":
				_, dup = c.variables[key]
				c.variables[key] = b
			case "output":
				_, dup = c.outputs[key]
				c.outputs[key] = b
			case "resource":
				_, dup = c.resources[key]
				c.resources[key] = b
			case "locals":
				for name, a := range b.Body.Attributes {
					if _, ok := c.locals[name]; ok {
						t.Errorf("local %s defined twice", name)
					}
					c.locals[name] = a
				}
			default:
				c.others = append(c.others, b)
			}
			if dup {
				t.Errorf("%s %s defined twice", b.Type, key)
			}
		}
	}
	return c
}

// resourcesOfType returns the resource blocks of one type, by name.
func (c *tfConfig) resourcesOfType(typ string) map[string]*hclsyntax.Block {
	out := map[string]*hclsyntax.Block{}
	for _, b := range c.resources {
		if b.Labels[0] == typ {
			out[b.Labels[1]] = b
		}
	}
	return out
}

// varType returns the declared type of a variable.
func (c *tfConfig) varType(t *testing.T, name string) cty.Type {
	t.Helper()
	b := c.variables[name]
	a, ok := b.Body.Attributes["type"]
	if !ok {
		return cty.DynamicPseudoType
	}
	ty, diags := typeexpr.TypeConstraint(a.Expr)
	if diags.HasErrors() {
		t.Fatalf("variable %s: type: %s", name, diags.Error())
	}
	return ty
}

// varValues returns every variable's value: overrides, else the test value
// for required ones, else the default, converted to the declared type as
// Terraform does.
func (c *tfConfig) varValues(t *testing.T, overrides map[string]cty.Value) map[string]cty.Value {
	t.Helper()
	out := map[string]cty.Value{}
	for name, b := range c.variables {
		v, ok := overrides[name]
		if !ok {
			v, ok = requiredVarValues[name]
		}
		if !ok {
			a, hasDefault := b.Body.Attributes["default"]
			if !hasDefault {
				t.Fatalf("variable %s has no default and no test value in requiredVarValues", name)
			}
			var diags hcl.Diagnostics
			v, diags = a.Expr.Value(nil)
			if diags.HasErrors() {
				t.Fatalf("variable %s: default: %s", name, diags.Error())
			}
		}
		cv, err := convert.Convert(v, c.varType(t, name))
		if err != nil {
			t.Fatalf("variable %s: value %#v does not convert to its type: %v", name, v, err)
		}
		out[name] = cv
	}
	return out
}

// evalEnv holds what expressions may refer to.
type evalEnv struct {
	c       *tfConfig
	vars    map[string]cty.Value
	locals  map[string]cty.Value
	pending map[string]bool
	extra   map[string]cty.Value // count, each, iterator variables
}

func (c *tfConfig) env(t *testing.T, overrides map[string]cty.Value) *evalEnv {
	return &evalEnv{
		c:       c,
		vars:    c.varValues(t, overrides),
		locals:  map[string]cty.Value{},
		pending: map[string]bool{},
		extra:   map[string]cty.Value{},
	}
}

// with returns a copy of e with more variables (count, an iterator).
func (e *evalEnv) with(name string, v cty.Value) *evalEnv {
	n := *e
	n.extra = map[string]cty.Value{}
	for k, x := range e.extra {
		n.extra[k] = x
	}
	n.extra[name] = v
	return &n
}

// resourceValues are the attributes of resources that expressions read.
func (e *evalEnv) resourceValues(t *testing.T) map[string]cty.Value {
	p := testPKI(t)
	return map[string]cty.Value{
		"digitalocean_vpc": cty.ObjectVal(map[string]cty.Value{"this": cty.ObjectVal(map[string]cty.Value{
			"id": cty.StringVal(fakeVPCID), "ip_range": cty.StringVal(fakeVPCRange),
		})}),
		"digitalocean_reserved_ip": cty.ObjectVal(map[string]cty.Value{"this": cty.ObjectVal(map[string]cty.Value{
			"ip_address": cty.StringVal(fakeReservedIP),
		})}),
		"random_password": cty.ObjectVal(map[string]cty.Value{"api_token": cty.ObjectVal(map[string]cty.Value{
			"result": cty.StringVal(fakeAPIToken),
		})}),
		"random_id": cty.ObjectVal(map[string]cty.Value{"gossip_key": cty.ObjectVal(map[string]cty.Value{
			"b64_std": cty.StringVal(fakeGossipKey),
		})}),
		// The edges' VPC addresses (what the witness is given):
		// fakeEdgeIP(0), fakeEdgeIP(1), ...
		"digitalocean_droplet": cty.ObjectVal(map[string]cty.Value{"edge": e.edgeValues(t)}),
		"tls_self_signed_cert": cty.ObjectVal(map[string]cty.Value{"ca": cty.ObjectVal(map[string]cty.Value{
			"cert_pem": cty.StringVal(p.caCert),
		})}),
		// Keyed by every node name the configuration could have.
		"tls_locally_signed_cert": cty.ObjectVal(map[string]cty.Value{"node": cty.MapVal(p.nodeValues("cert_pem", p.certs))}),
		"tls_private_key":         cty.ObjectVal(map[string]cty.Value{"node": cty.MapVal(p.nodeValues("private_key_pem", p.keys))}),
	}
}

// fakeEdgeIP is the VPC address DigitalOcean gives edge i in the tests.
func fakeEdgeIP(i int) string { return fmt.Sprintf("10.118.0.%d", 10+i) }

// edgeValues are the edge droplets as Terraform knows them after creating
// them: one per var.edge_count, with its VPC address.
func (e *evalEnv) edgeValues(t *testing.T) cty.Value {
	t.Helper()
	n, _ := e.vars["edge_count"].AsBigFloat().Int64()
	var edges []cty.Value
	for i := range int(n) {
		edges = append(edges, cty.ObjectVal(map[string]cty.Value{
			"ipv4_address_private": cty.StringVal(fakeEdgeIP(i)),
		}))
	}
	if len(edges) == 0 {
		return cty.EmptyTupleVal
	}
	return cty.TupleVal(edges)
}

// clusterPKI stands in for what the tls provider makes: a real CA and a
// real certificate and key per node name (common name the node's name,
// valid for 127.0.0.1 and the reserved IP, as main.tf asks), made once by
// the code behind `drawbridge tls`, so the agent accepts the files
// cloud-init writes.
type clusterPKI struct {
	caCert      string
	certs, keys map[string]string
}

var (
	pkiOnce sync.Once
	pkiVal  clusterPKI
	pkiErr  error
)

// testNodeNames are the node names of the configurations the tests render
// (with any var.name they use).
func testNodeNames() []string {
	var out []string
	for _, prefix := range []string{"drawbridge", "edge", "test", "prod", "lb"} {
		for _, n := range []string{"-edge-1", "-edge-2", "-edge-3", "-edge-4", "-edge-5", "-witness"} {
			out = append(out, prefix+n)
		}
	}
	return out
}

func testPKI(t *testing.T) clusterPKI {
	t.Helper()
	pkiOnce.Do(func() {
		dir := filepath.Join(tmpRoot, "pki")
		creds, err := pki.CreateCluster(dir, []net.IP{net.ParseIP(fakeReservedIP)}, testNodeNames()...)
		if err != nil {
			pkiErr = err
			return
		}
		read := func(path string) string {
			b, err := os.ReadFile(path)
			if err != nil && pkiErr == nil {
				pkiErr = err
			}
			return string(b)
		}
		pkiVal = clusterPKI{certs: map[string]string{}, keys: map[string]string{}}
		for name, c := range creds {
			pkiVal.caCert = read(c.CAFile)
			pkiVal.certs[name] = read(c.CertFile)
			pkiVal.keys[name] = read(c.KeyFile)
		}
	})
	if pkiErr != nil {
		t.Fatalf("creating the test CA and node certificates: %v", pkiErr)
	}
	return pkiVal
}

// nodeValues maps each node name to an object with attr set to its value.
func (p clusterPKI) nodeValues(attr string, values map[string]string) map[string]cty.Value {
	out := map[string]cty.Value{}
	for name, v := range values {
		out[name] = cty.ObjectVal(map[string]cty.Value{attr: cty.StringVal(v)})
	}
	return out
}

// eval evaluates expr with everything it refers to.
func (e *evalEnv) eval(t *testing.T, expr hcl.Expression) cty.Value {
	t.Helper()
	v, diags := expr.Value(e.ctx(t, expr))
	if diags.HasErrors() {
		t.Fatalf("evaluate %s: %s", expr.Range(), diags.Error())
	}
	return v
}

// ctx builds an EvalContext holding the locals expr needs (evaluated on
// demand), variables, resources and functions.
func (e *evalEnv) ctx(t *testing.T, expr hcl.Expression) *hcl.EvalContext {
	t.Helper()
	for _, tr := range expr.Variables() {
		if tr.RootName() != "local" || len(tr) < 2 {
			continue
		}
		if a, ok := tr[1].(hcl.TraverseAttr); ok {
			e.local(t, a.Name)
		}
	}
	vars := map[string]cty.Value{
		"var":   cty.ObjectVal(e.vars),
		"local": objectOrEmpty(e.locals),
		"path":  cty.ObjectVal(map[string]cty.Value{"module": cty.StringVal(e.c.dir)}),
	}
	for k, v := range e.resourceValues(t) {
		vars[k] = v
	}
	for k, v := range e.extra {
		vars[k] = v
	}
	return &hcl.EvalContext{Variables: vars, Functions: e.functions(t)}
}

func (e *evalEnv) local(t *testing.T, name string) cty.Value {
	t.Helper()
	if v, ok := e.locals[name]; ok {
		return v
	}
	a, ok := e.c.locals[name]
	if !ok {
		t.Fatalf("local.%s is not defined", name)
	}
	if e.pending[name] {
		t.Fatalf("local.%s refers to itself", name)
	}
	e.pending[name] = true
	v := e.eval(t, a.Expr)
	delete(e.pending, name)
	e.locals[name] = v
	return v
}

func objectOrEmpty(m map[string]cty.Value) cty.Value {
	if len(m) == 0 {
		return cty.EmptyObjectVal
	}
	return cty.ObjectVal(m)
}

// functions are the Terraform functions the configuration and the template
// use, from cty's stdlib where it has them with Terraform's behaviour.
func (e *evalEnv) functions(t *testing.T) map[string]function.Function {
	fns := map[string]function.Function{
		"alltrue":      allTrueFunc,
		"base64encode": base64EncodeFunc,
		"can":          tryfunc.CanFunc,
		"cidrhost":     cidrHostFunc,
		"concat":       stdlib.ConcatFunc,
		"contains":     stdlib.ContainsFunc,
		"distinct":     stdlib.DistinctFunc,
		"floor":        stdlib.FloorFunc,
		"join":         stdlib.JoinFunc,
		"jsonencode":   stdlib.JSONEncodeFunc,
		"length":       lengthFunc,
		"max":          stdlib.MaxFunc,
		"merge":        stdlib.MergeFunc,
		"min":          stdlib.MinFunc,
		"range":        stdlib.RangeFunc,
		"regex":        stdlib.RegexFunc,
		"startswith":   startsWithFunc,
		"tostring":     toStringFunc,
		"try":          tryfunc.TryFunc,
		"file":         fileFunc(e.c.dir),
	}
	fns["templatefile"] = templateFileFunc(e.c.dir, fns)
	return fns
}

var allTrueFunc = function.New(&function.Spec{
	Params: []function.Parameter{{Name: "list", Type: cty.List(cty.Bool)}},
	Type:   function.StaticReturnType(cty.Bool),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		for it := args[0].ElementIterator(); it.Next(); {
			_, v := it.Element()
			if v.IsNull() || v.False() {
				return cty.False, nil
			}
		}
		return cty.True, nil
	},
})

var base64EncodeFunc = function.New(&function.Spec{
	Params: []function.Parameter{{Name: "str", Type: cty.String}},
	Type:   function.StaticReturnType(cty.String),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		return cty.StringVal(base64.StdEncoding.EncodeToString([]byte(args[0].AsString()))), nil
	},
})

// cidrHostFunc is Terraform's cidrhost for IPv4 and IPv6 prefixes.
var cidrHostFunc = function.New(&function.Spec{
	Params: []function.Parameter{{Name: "prefix", Type: cty.String}, {Name: "hostnum", Type: cty.Number}},
	Type:   function.StaticReturnType(cty.String),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		p, err := netip.ParsePrefix(args[0].AsString())
		if err != nil {
			return cty.NilVal, fmt.Errorf("invalid CIDR expression: %w", err)
		}
		n, _ := args[1].AsBigFloat().Int64()
		a := p.Masked().Addr()
		for range n {
			a = a.Next()
		}
		if !p.Contains(a) {
			return cty.NilVal, fmt.Errorf("prefix %s has no host %d", p, n)
		}
		return cty.StringVal(a.String()), nil
	},
})

// lengthFunc is Terraform's length: strings too.
var lengthFunc = function.New(&function.Spec{
	Params: []function.Parameter{{Name: "value", Type: cty.DynamicPseudoType, AllowDynamicType: true}},
	Type:   function.StaticReturnType(cty.Number),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		if args[0].Type() == cty.String {
			return stdlib.Strlen(args[0])
		}
		return stdlib.Length(args[0])
	},
})

var startsWithFunc = function.New(&function.Spec{
	Params: []function.Parameter{{Name: "str", Type: cty.String}, {Name: "prefix", Type: cty.String}},
	Type:   function.StaticReturnType(cty.Bool),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		return cty.BoolVal(strings.HasPrefix(args[0].AsString(), args[1].AsString())), nil
	},
})

var toStringFunc = function.New(&function.Spec{
	Params: []function.Parameter{{Name: "v", Type: cty.DynamicPseudoType, AllowNull: true}},
	Type:   function.StaticReturnType(cty.String),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		return convert.Convert(args[0], cty.String)
	},
})

func fileFunc(dir string) function.Function {
	return function.New(&function.Spec{
		Params: []function.Parameter{{Name: "path", Type: cty.String}},
		Type:   function.StaticReturnType(cty.String),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			p := args[0].AsString()
			if !filepath.IsAbs(p) {
				p = filepath.Join(dir, p)
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return cty.NilVal, err
			}
			return cty.StringVal(string(b)), nil
		},
	})
}

// templateFileFunc is Terraform's templatefile: the template sees only the
// variables passed (no var., local., path.) and every function but itself.
// Like Terraform, it fails when the template refers to a variable that was
// not passed.
func templateFileFunc(dir string, fns map[string]function.Function) function.Function {
	return function.New(&function.Spec{
		Params: []function.Parameter{
			{Name: "path", Type: cty.String},
			{Name: "vars", Type: cty.DynamicPseudoType},
		},
		Type: function.StaticReturnType(cty.String),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			p := args[0].AsString()
			if !filepath.IsAbs(p) {
				p = filepath.Join(dir, p)
			}
			expr, err := parseTemplateFile(p)
			if err != nil {
				return cty.NilVal, err
			}
			if !args[1].Type().IsObjectType() && !args[1].Type().IsMapType() {
				return cty.NilVal, fmt.Errorf("templatefile vars must be an object, not %s", args[1].Type().FriendlyName())
			}
			vars := args[1].AsValueMap()
			for _, tr := range expr.Variables() {
				if _, ok := vars[tr.RootName()]; !ok {
					return cty.NilVal, fmt.Errorf("%s: vars map does not contain key %q", tr.SourceRange(), tr.RootName())
				}
			}
			inner := map[string]function.Function{}
			for k, f := range fns {
				if k != "templatefile" {
					inner[k] = f
				}
			}
			v, diags := expr.Value(&hcl.EvalContext{Variables: vars, Functions: inner})
			if diags.HasErrors() {
				return cty.NilVal, diags
			}
			return convert.Convert(v, cty.String)
		},
	})
}

func parseTemplateFile(path string) (hclsyntax.Expression, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	expr, diags := hclsyntax.ParseTemplate(src, path, hcl.InitialPos)
	if diags.HasErrors() {
		return nil, diags
	}
	return expr, nil
}

// ctyStrings returns the elements of a list, set or tuple of strings.
func ctyStrings(t *testing.T, v cty.Value) []string {
	t.Helper()
	if v.IsNull() {
		return nil
	}
	var out []string
	for it := v.ElementIterator(); it.Next(); {
		_, e := it.Element()
		s, err := convert.Convert(e, cty.String)
		if err != nil {
			t.Fatalf("element %#v is not a string", e)
		}
		out = append(out, s.AsString())
	}
	return out
}

// expandBlocks returns the blocks of a type in body, with dynamic blocks of
// that type expanded: each is paired with the environment its attributes
// are evaluated in (the iterator variable bound).
func expandBlocks(t *testing.T, e *evalEnv, body *hclsyntax.Body, typ string) []envBlock {
	t.Helper()
	var out []envBlock
	for _, b := range body.Blocks {
		switch {
		case b.Type == typ:
			out = append(out, envBlock{env: e, body: b.Body})
		case b.Type == "dynamic" && len(b.Labels) == 1 && b.Labels[0] == typ:
			iter := typ
			if a, ok := b.Body.Attributes["iterator"]; ok {
				iter = hcl.ExprAsKeyword(a.Expr)
			}
			forEach := e.eval(t, b.Body.Attributes["for_each"].Expr)
			var content *hclsyntax.Body
			for _, cb := range b.Body.Blocks {
				if cb.Type == "content" {
					content = cb.Body
				}
			}
			if content == nil {
				t.Fatalf("dynamic %q at %s has no content block", typ, b.Range())
			}
			for it := forEach.ElementIterator(); it.Next(); {
				k, v := it.Element()
				ie := e.with(iter, cty.ObjectVal(map[string]cty.Value{"key": k, "value": v}))
				out = append(out, envBlock{env: ie, body: content})
			}
		}
	}
	return out
}

type envBlock struct {
	env  *evalEnv
	body *hclsyntax.Body
}

// attr evaluates an attribute of the block, or returns null when absent.
func (b envBlock) attr(t *testing.T, name string) cty.Value {
	t.Helper()
	a, ok := b.body.Attributes[name]
	if !ok {
		return cty.NullVal(cty.DynamicPseudoType)
	}
	return b.env.eval(t, a.Expr)
}

// lifecycleIgnores returns the attribute names in a resource's
// lifecycle { ignore_changes = [...] }.
func lifecycleIgnores(b *hclsyntax.Block) []string {
	var out []string
	for _, lb := range b.Body.Blocks {
		if lb.Type != "lifecycle" {
			continue
		}
		a, ok := lb.Body.Attributes["ignore_changes"]
		if !ok {
			continue
		}
		if hcl.ExprAsKeyword(a.Expr) == "all" {
			return []string{"all"}
		}
		exprs, _ := hcl.ExprList(a.Expr)
		for _, x := range exprs {
			if tr, diags := hcl.AbsTraversalForExpr(x); !diags.HasErrors() {
				out = append(out, tr.RootName())
			}
		}
	}
	slices.Sort(out)
	return out
}
