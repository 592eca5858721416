// Package kubernetes_test checks the example manifests in this directory:
// every YAML document parses, and the drawbridge sidecar gets every setting
// `drawbridge register` needs, from the right source.
package kubernetes_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// document is one YAML document of a manifest file.
type document struct {
	file string
	kind string
	name string
	node *yaml.Node
}

type meta struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
}

type envVar struct {
	Name      string `yaml:"name"`
	Value     *string
	ValueFrom *struct {
		FieldRef *struct {
			FieldPath string `yaml:"fieldPath"`
		} `yaml:"fieldRef"`
		SecretKeyRef *struct {
			Name string `yaml:"name"`
			Key  string `yaml:"key"`
		} `yaml:"secretKeyRef"`
	} `yaml:"valueFrom"`
}

type container struct {
	Name    string   `yaml:"name"`
	Image   string   `yaml:"image"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Env     []envVar `yaml:"env"`
	Ports   []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
}

type podTemplate struct {
	Metadata struct {
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Spec struct {
		TerminationGracePeriodSeconds *int        `yaml:"terminationGracePeriodSeconds"`
		Containers                    []container `yaml:"containers"`
	} `yaml:"spec"`
}

// workload covers Deployment, StatefulSet and DaemonSet: all have
// spec.template.
type workload struct {
	Spec struct {
		Template podTemplate `yaml:"template"`
	} `yaml:"spec"`
}

type service struct {
	Spec struct {
		Type     string            `yaml:"type"`
		Selector map[string]string `yaml:"selector"`
		Ports    []struct {
			Port       int       `yaml:"port"`
			TargetPort yaml.Node `yaml:"targetPort"`
			NodePort   int       `yaml:"nodePort"`
			Protocol   string    `yaml:"protocol"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type secret struct {
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
}

// readDocuments parses every *.yaml and *.yml file here.
func readDocuments(t *testing.T) []document {
	t.Helper()
	var files []string
	for _, pattern := range []string{"*.yaml", "*.yml"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) == 0 {
		t.Fatal("no manifests found")
	}
	var docs []document
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for i := 0; ; i++ {
			var n yaml.Node
			err := dec.Decode(&n)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s document %d: %v", f, i, err)
			}
			var m meta
			if err := n.Decode(&m); err != nil {
				t.Fatalf("%s document %d: %v", f, i, err)
			}
			if m.Kind == "" || m.Metadata.Name == "" {
				t.Fatalf("%s document %d has no kind or metadata.name", f, i)
			}
			docs = append(docs, document{file: f, kind: m.Kind, name: m.Metadata.Name, node: &n})
		}
	}
	return docs
}

func decode[T any](t *testing.T, d document) T {
	t.Helper()
	var v T
	if err := d.node.Decode(&v); err != nil {
		t.Fatalf("%s %s/%s: %v", d.file, d.kind, d.name, err)
	}
	return v
}

// sidecar is a drawbridge register container and the pod it runs in.
type sidecar struct {
	doc document
	pod podTemplate
	c   container
}

func findSidecars(t *testing.T, docs []document) []sidecar {
	t.Helper()
	var out []sidecar
	for _, d := range docs {
		switch d.kind {
		case "Deployment", "StatefulSet", "DaemonSet":
		default:
			continue
		}
		w := decode[workload](t, d)
		for _, c := range w.Spec.Template.Spec.Containers {
			if strings.Contains(c.Image, "drawbridge") {
				out = append(out, sidecar{doc: d, pod: w.Spec.Template, c: c})
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("no workload runs a drawbridge container")
	}
	return out
}

func env(c container, name string) (envVar, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e, true
		}
	}
	return envVar{}, false
}

// literal returns the value of a plain env var, failing when it is missing
// or comes from elsewhere.
func literal(t *testing.T, s sidecar, name string) string {
	t.Helper()
	e, ok := env(s.c, name)
	if !ok {
		t.Fatalf("%s: sidecar %s has no %s", s.doc.file, s.c.Name, name)
	}
	if e.Value == nil || e.ValueFrom != nil {
		t.Fatalf("%s: sidecar %s: %s should be a plain value", s.doc.file, s.c.Name, name)
	}
	return *e.Value
}

func port(t *testing.T, s sidecar, name string) int {
	t.Helper()
	v := literal(t, s, name)
	p, err := strconv.Atoi(v)
	if err != nil || p < 1 || p > 65535 {
		t.Fatalf("%s: %s %q is not a port from 1 to 65535", s.doc.file, name, v)
	}
	return p
}

var routeName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

func TestSidecarSettings(t *testing.T) {
	docs := readDocuments(t)
	for _, s := range findSidecars(t, docs) {
		t.Run(s.doc.name+"/"+s.c.Name, func(t *testing.T) {
			if got := append(append([]string{}, s.c.Command...), s.c.Args...); len(got) == 0 || got[0] != "register" {
				t.Errorf("sidecar runs %q, want the register command", got)
			}
			port(t, s, "FRONTEND_PORT")
			port(t, s, "BACKEND_PORT")
			if name := literal(t, s, "NAME"); !routeName.MatchString(name) {
				t.Errorf("NAME %q must match %s", name, routeName)
			}
			members := literal(t, s, "WEBHOOKS")
			for _, m := range strings.Split(members, ",") {
				u, err := url.Parse(strings.TrimSpace(m))
				if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil {
					t.Errorf("WEBHOOKS entry %q is not an http(s) URL without credentials", m)
				}
			}
			interval, err := strconv.Atoi(literal(t, s, "REPEAT_INTERVAL"))
			if err != nil || interval < 1 {
				t.Fatalf("REPEAT_INTERVAL must be a positive number of seconds")
			}
			ttl, err := time.ParseDuration(literal(t, s, "TTL"))
			if err != nil || ttl <= time.Duration(interval)*time.Second {
				t.Errorf("TTL must be a duration longer than REPEAT_INTERVAL (%ds)", interval)
			}

			dst, ok := env(s.c, "DST_IP")
			if !ok || dst.Value != nil || dst.ValueFrom == nil || dst.ValueFrom.FieldRef == nil ||
				dst.ValueFrom.FieldRef.FieldPath != "status.hostIP" {
				t.Errorf("DST_IP must come from the downward API: valueFrom.fieldRef.fieldPath status.hostIP")
			}

			tok, ok := env(s.c, "DRAWBRIDGE_API_TOKEN")
			if !ok {
				tok, ok = env(s.c, "WEBHOOK_TOKEN")
			}
			if !ok || tok.Value != nil || tok.ValueFrom == nil || tok.ValueFrom.SecretKeyRef == nil {
				t.Fatalf("the token (DRAWBRIDGE_API_TOKEN or WEBHOOK_TOKEN) must come from a Secret via secretKeyRef")
			}
			ref := tok.ValueFrom.SecretKeyRef
			found := false
			for _, d := range docs {
				if d.kind != "Secret" || d.name != ref.Name {
					continue
				}
				found = true
				sec := decode[secret](t, d)
				v, inString := sec.StringData[ref.Key]
				if _, inData := sec.Data[ref.Key]; !inString && !inData {
					t.Errorf("Secret %s has no key %q", ref.Name, ref.Key)
				}
				if inString && !strings.Contains(v, "example") {
					t.Errorf("the example Secret %s must hold an obviously fake token", ref.Name)
				}
			}
			if !found {
				t.Errorf("no Secret %s in the examples for the token's secretKeyRef", ref.Name)
			}

			if g := s.pod.Spec.TerminationGracePeriodSeconds; g != nil && *g < 15 {
				t.Errorf("terminationGracePeriodSeconds %d leaves too little time to deregister", *g)
			}
		})
	}
}

// TestNoLiteralSecrets fails when any container gets a token, password or
// key as a literal value.
func TestNoLiteralSecrets(t *testing.T) {
	for _, d := range readDocuments(t) {
		switch d.kind {
		case "Deployment", "StatefulSet", "DaemonSet":
		default:
			continue
		}
		for _, c := range decode[workload](t, d).Spec.Template.Spec.Containers {
			for _, e := range c.Env {
				n := strings.ToUpper(e.Name)
				if e.Value != nil && (strings.Contains(n, "TOKEN") || strings.Contains(n, "PASSWORD") || strings.Contains(n, "SECRET")) {
					t.Errorf("%s: %s/%s sets %s as a literal; use secretKeyRef", d.file, d.name, c.Name, e.Name)
				}
			}
		}
	}
}

func TestServiceNodePortMatchesBackendPort(t *testing.T) {
	docs := readDocuments(t)
	for _, s := range findSidecars(t, docs) {
		backend := port(t, s, "BACKEND_PORT")
		matched := false
		for _, d := range docs {
			if d.kind != "Service" {
				continue
			}
			svc := decode[service](t, d)
			if !selects(svc.Spec.Selector, s.pod.Metadata.Labels) {
				continue
			}
			for _, p := range svc.Spec.Ports {
				if p.NodePort != backend {
					continue
				}
				matched = true
				if svc.Spec.Type != "NodePort" && svc.Spec.Type != "LoadBalancer" {
					t.Errorf("Service %s has type %q, want NodePort", d.name, svc.Spec.Type)
				}
				if p.Protocol != "" && p.Protocol != "TCP" {
					t.Errorf("Service %s port %d is %s; drawbridge routes TCP", d.name, p.NodePort, p.Protocol)
				}
				if backend < 30000 || backend > 32767 {
					t.Errorf("BACKEND_PORT %d is outside Kubernetes' default NodePort range 30000-32767", backend)
				}
				if !targetsContainer(p.TargetPort, p.Port, s.pod.Spec.Containers) {
					t.Errorf("Service %s port %d targets no container port of the pod", d.name, p.NodePort)
				}
			}
		}
		if !matched {
			t.Errorf("%s: no Service selecting the pod has nodePort %d (BACKEND_PORT)", s.doc.file, backend)
		}
	}
}

// selects reports whether a Service selector matches pod labels.
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// targetsContainer reports whether a Service port's targetPort (a number, a
// name, or absent: the port itself) is a port of one of the containers.
func targetsContainer(target yaml.Node, svcPort int, containers []container) bool {
	want := target.Value
	if target.Kind == 0 || want == "" {
		want = strconv.Itoa(svcPort)
	}
	for _, c := range containers {
		for _, p := range c.Ports {
			if p.Name == want || strconv.Itoa(p.ContainerPort) == want {
				return true
			}
		}
	}
	return false
}

// TestControllerTokenExample: the controller's example Secret holds an
// obviously fake token, and the api.tokens entry that secret.yaml and the
// README show for the edge nodes is a register token limited to k8s.*
// names whose sha256 is that very token's, so the example is consistent
// without being usable.
func TestControllerTokenExample(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("controller", "secret.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var sec secret
	if err := yaml.Unmarshal(data, &sec); err != nil {
		t.Fatal(err)
	}
	token := sec.StringData["token"]
	if !strings.Contains(token, "example") || !strings.Contains(token, "not-a-real") {
		t.Fatalf("the example token %q must be obviously fake", token)
	}
	sum := sha256.Sum256([]byte(token))
	digest := hex.EncodeToString(sum[:])
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for name, text := range map[string]string{"controller/secret.yaml": string(data), "README.md": string(readme)} {
		i := strings.Index(text, "name: k8s-controller")
		if i < 0 {
			t.Errorf("%s shows no api.tokens entry for the controller", name)
			continue
		}
		entry := text[i:min(len(text), i+600)]
		for _, want := range []string{"role: register", "sha256: " + digest, `names: ["k8s.*"]`, "ports:", "backend_cidrs:"} {
			if !strings.Contains(entry, want) {
				t.Errorf("%s: the controller's token entry lacks %q:\n%s", name, want, entry)
			}
		}
	}
}
