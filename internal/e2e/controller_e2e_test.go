//go:build !nocontroller

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/drawbridge-lb/drawbridge/fsm"
	"github.com/drawbridge-lb/drawbridge/internal/k8s"
	"github.com/drawbridge-lb/drawbridge/internal/k8s/k8stest"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// controllerToken is the test's token for the controller's service
// account: it gets exactly the RBAC of deploy/kubernetes/controller.
const controllerK8sToken = "controller-token-not-a-secret-0000"

// floatingIP is what the dev agent's exec provider reports as the
// cluster's floating IP (TEST-NET-1; nothing is claimed: the command is
// true).
const floatingIP = "192.0.2.10"

// Secrets of the drawbridge tokens of the controller lab (obviously fake).
const (
	// controllerAPISecret is the controller's register token: the
	// Secret of deploy/kubernetes/controller carries it, as the README
	// has the operator create it.
	controllerAPISecret = "fake-k8s-controller-drawbridge-token-1111"
	// otherTeamSecret is another team's register token on the same ports.
	otherTeamSecret = "fake-team-b-register-token-2222"
)

// Names of the lab's drawbridge tokens, and the backends the
// controller's token may name (the test's "nodes" are 127.0.0.2-4).
const (
	controllerTokenName = "k8s-controller"
	otherTeamTokenName  = "team-b"
	nodeCIDR            = "127.0.0.0/29"
	// publicPortCount is the size of the controller's port range.
	publicPortCount = 64
)

// k8sLab is a real kube-apiserver and etcd, the controller's RBAC from
// deploy/kubernetes/controller, a drawbridge dev agent with HAProxy, and
// "nodes" on 127.0.0.x whose NodePorts answer with the node's name.
type k8sLab struct {
	t          *testing.T
	kas        *k8stest.APIServer
	kube       *kubernetes.Clientset
	agent      *testAgent
	kubeconfig string
	ctx        context.Context
	nodeIPs    map[string]string
	bound      map[string]bool // node ip:port already answering
	// firstPublic..firstPublic+publicPortCount-1 are the ports the
	// controller's token may route; nextPublic is the next one to hand
	// to a Service.
	firstPublic, nextPublic int
}

func newK8sLab(t *testing.T) *k8sLab {
	t.Helper()
	requireHAProxy(t)
	kas := k8stest.Start(t, k8stest.User{Token: controllerK8sToken,
		Name:   "system:serviceaccount:drawbridge-system:drawbridge-controller",
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:drawbridge-system", "system:authenticated"}})
	cfg, err := clientcmd.BuildConfigFromFlags("", kas.Kubeconfig(t, k8stest.AdminToken))
	if err != nil {
		t.Fatal(err)
	}
	lab := &k8sLab{t: t, kas: kas, kube: kubernetes.NewForConfigOrDie(cfg), ctx: context.Background(),
		kubeconfig: kas.Kubeconfig(t, controllerK8sToken), nodeIPs: map[string]string{}, bound: map[string]bool{}}
	// Every manifest, in the order the README applies them, goes to the
	// real API server, which validates it (no kubelet runs the Deployment;
	// the example Secret is only checked, with a dry run).
	for _, f := range []string{"namespace.yaml", "rbac.yaml", "deployment.yaml", "secret.yaml"} {
		lab.apply(filepath.Join("..", "..", "deploy", "kubernetes", "controller", f))
	}

	// The edge node accepts the controller's register token, limited to
	// its port range, the k8s.* names and the nodes' addresses, and
	// another team's register token on the same ports: the api.tokens
	// entries of the README, in an extra config file.
	lab.firstPublic = testenv.FreePortRange(t, publicPortCount)
	lab.nextPublic = lab.firstPublic
	truePath, err := exec.LookPath("true")
	if err != nil {
		t.Fatal(err)
	}
	lab.agent = startDevAgentEnv(t, []string{
		"DRAWBRIDGE_FLOATING_IP_PROVIDER=exec",
		"DRAWBRIDGE_FLOATING_IP_ADDRESS=" + floatingIP,
		"DRAWBRIDGE_FLOATING_IP_EXEC_COMMAND=" + truePath,
	}, "--config", lab.agentConfig())
	lab.createControllerSecret()
	return lab
}

// agentConfig writes the edge node's config file with the lab's tokens.
func (l *k8sLab) agentConfig() string {
	l.t.Helper()
	sum := func(secret string) string { s := sha256.Sum256([]byte(secret)); return hex.EncodeToString(s[:]) }
	ports := fmt.Sprintf("%d-%d", l.firstPublic, l.firstPublic+publicPortCount-1)
	cfg := fmt.Sprintf(`api:
  tokens:
    - name: %s
      role: register
      sha256: %s
      ports: ["%s"]
      names: ["k8s.*"]
      backend_cidrs: ["%s"]
    - name: %s
      role: register
      sha256: %s
      ports: ["%s"]
      names: ["team-b-*"]
`, controllerTokenName, sum(controllerAPISecret), ports, nodeCIDR, otherTeamTokenName, sum(otherTeamSecret), ports)
	path := filepath.Join(l.t.TempDir(), "drawbridge.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		l.t.Fatal(err)
	}
	return path
}

// createControllerSecret creates the controller's Secret as the README's
// kubectl command does: the register token and the edge nodes' API URLs.
// The first URL is a node that is down (nothing listens there), so the
// controller fails over to the live one from its first request on.
func (l *k8sLab) createControllerSecret() {
	l.t.Helper()
	down := "http://" + testenv.FreeAddr(l.t)
	if _, err := l.kube.CoreV1().Secrets("drawbridge-system").Create(l.ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "drawbridge-controller", Namespace: "drawbridge-system"},
		StringData: map[string]string{"token": controllerAPISecret, "api": down + "," + l.agent.url("")},
	}, metav1.CreateOptions{}); err != nil {
		l.t.Fatal(err)
	}
}

// controllerEnv is the environment the kubelet would give the
// Deployment's container: every variable it takes from a Secret, read
// from the API server.
func (l *k8sLab) controllerEnv() []string {
	l.t.Helper()
	d, err := l.kube.AppsV1().Deployments("drawbridge-system").Get(l.ctx, "drawbridge-controller", metav1.GetOptions{})
	if err != nil {
		l.t.Fatal(err)
	}
	var env []string
	for _, e := range d.Spec.Template.Spec.Containers[0].Env {
		if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			continue
		}
		ref := e.ValueFrom.SecretKeyRef
		sec, err := l.kube.CoreV1().Secrets(d.Namespace).Get(l.ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			l.t.Fatal(err)
		}
		v, ok := sec.Data[ref.Key]
		if !ok {
			l.t.Fatalf("secret %s has no key %s for %s", ref.Name, ref.Key, e.Name)
		}
		env = append(env, e.Name+"="+string(v))
	}
	return env
}

// publicPort hands out the next port of the controller's range.
func (l *k8sLab) publicPort() int {
	l.t.Helper()
	if l.nextPublic >= l.firstPublic+publicPortCount {
		l.t.Fatal("the controller's port range is used up")
	}
	p := l.nextPublic
	l.nextPublic++
	return p
}

// apply creates the objects of a manifest file the test needs (namespace,
// service account, RBAC) as the admin.
func (l *k8sLab) apply(path string) {
	l.t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		l.t.Fatal(err)
	}
	dec := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := dec.Read()
		if err != nil {
			break
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			l.t.Fatalf("%s: %v", path, err)
		}
		switch o := obj.(type) {
		case *corev1.Namespace:
			_, err = l.kube.CoreV1().Namespaces().Create(l.ctx, o, metav1.CreateOptions{})
		case *corev1.ServiceAccount:
			_, err = l.kube.CoreV1().ServiceAccounts(o.Namespace).Create(l.ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRole:
			_, err = l.kube.RbacV1().ClusterRoles().Create(l.ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRoleBinding:
			_, err = l.kube.RbacV1().ClusterRoleBindings().Create(l.ctx, o, metav1.CreateOptions{})
		case *rbacv1.Role:
			_, err = l.kube.RbacV1().Roles(o.Namespace).Create(l.ctx, o, metav1.CreateOptions{})
		case *rbacv1.RoleBinding:
			_, err = l.kube.RbacV1().RoleBindings(o.Namespace).Create(l.ctx, o, metav1.CreateOptions{})
		case *corev1.Secret:
			// An example whose values the operator replaces: validated,
			// not stored (createControllerSecret makes the real one).
			_, err = l.kube.CoreV1().Secrets(o.Namespace).Create(l.ctx, o, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		case *appsv1.Deployment:
			_, err = l.kube.AppsV1().Deployments(o.Namespace).Create(l.ctx, o, metav1.CreateOptions{})
			if err == nil {
				l.checkDeployment(o)
			}
		default:
			l.t.Fatalf("%s: unexpected %T", path, obj)
		}
		if err != nil {
			l.t.Fatalf("%s: create %T: %v", path, obj, err)
		}
	}
}

// checkDeployment checks that the Deployment runs the controller as the
// service account the RBAC is for, and takes the token and API URLs from
// the Secret that secret.yaml and the README create.
func (l *k8sLab) checkDeployment(d *appsv1.Deployment) {
	l.t.Helper()
	spec := d.Spec.Template.Spec
	if spec.ServiceAccountName != "drawbridge-controller" {
		l.t.Errorf("deployment runs as %q", spec.ServiceAccountName)
	}
	c := spec.Containers[0]
	if len(c.Args) == 0 || c.Args[0] != "controller" {
		l.t.Errorf("deployment args %v do not start the controller", c.Args)
	}
	want := map[string]string{"DRAWBRIDGE_API_TOKEN": "token", "DRAWBRIDGE_API_URLS": "api"}
	for _, e := range c.Env {
		if key, ok := want[e.Name]; ok {
			if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil || e.ValueFrom.SecretKeyRef.Name != "drawbridge-controller" ||
				e.ValueFrom.SecretKeyRef.Key != key {
				l.t.Errorf("%s does not come from secret drawbridge-controller key %s", e.Name, key)
			}
			delete(want, e.Name)
		}
	}
	if len(want) > 0 {
		l.t.Errorf("deployment lacks %v", want)
	}
}

// controllerProc is one `drawbridge controller` process.
type controllerProc struct {
	agentProc
	name string
}

// startController runs a controller replica with short leader-election
// timings and resync, as the controller service account, with the
// environment the Deployment takes from its Secret: the register token
// and the API URLs.
func (l *k8sLab) startController(name string, extra ...string) *controllerProc {
	l.t.Helper()
	c := &controllerProc{name: name}
	args := append([]string{"controller",
		"--kubeconfig", l.kubeconfig,
		"--lease-namespace", "drawbridge-system",
		"--identity", name,
		"--resync", "1s",
		"--lease-duration", "2s", "--renew-deadline", "1500ms", "--retry-period", "250ms",
		"--log-level", "debug",
	}, extra...)
	c.launch(l.t, exec.Command(binPath, args...), l.controllerEnv())
	l.t.Cleanup(func() {
		c.stopOrKill(10 * time.Second)
		if l.t.Failed() {
			l.t.Logf("controller %s logs:\n%s", name, c.logs.String())
		}
	})
	return c
}

// addNode creates a Ready node with InternalIP ip.
func (l *k8sLab) addNode(name, ip string) {
	l.t.Helper()
	n, err := l.kube.CoreV1().Nodes().Create(l.ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		l.t.Fatal(err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
		LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(), Reason: "KubeletReady"}}
	if _, err := l.kube.CoreV1().Nodes().UpdateStatus(l.ctx, n, metav1.UpdateOptions{}); err != nil {
		l.t.Fatal(err)
	}
	l.nodeIPs[name] = ip
}

// setNodeReady sets the node's Ready condition.
func (l *k8sLab) setNodeReady(name string, ready bool) {
	l.t.Helper()
	n, err := l.kube.CoreV1().Nodes().Get(l.ctx, name, metav1.GetOptions{})
	if err != nil {
		l.t.Fatal(err)
	}
	st := corev1.ConditionTrue
	if !ready {
		st = corev1.ConditionFalse
	}
	n.Status.Conditions[0].Status = st
	if _, err := l.kube.CoreV1().Nodes().UpdateStatus(l.ctx, n, metav1.UpdateOptions{}); err != nil {
		l.t.Fatal(err)
	}
}

// serveNodePort answers on every node's InternalIP at port with the node's
// name, standing in for kube-proxy's NodePort.
func (l *k8sLab) serveNodePort(port int32) {
	l.t.Helper()
	for name, ip := range l.nodeIPs {
		addr := net.JoinHostPort(ip, strconv.Itoa(int(port)))
		if l.bound[addr] {
			continue
		}
		l.bound[addr] = true
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			l.t.Fatalf("node %s port %d: %v", name, port, err)
		}
		l.t.Cleanup(func() { ln.Close() })
		go serveGreeting(ln, name)
	}
}

// createService makes a LoadBalancer Service of the drawbridge class on
// public port port and starts its NodePort listeners.
func (l *k8sLab) createService(name string, port int, mutate ...func(*corev1.Service)) *corev1.Service {
	l.t.Helper()
	class := k8s.DefaultClass
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: &class,
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Name: "tcp", Port: int32(port), Protocol: corev1.ProtocolTCP}}},
	}
	for _, m := range mutate {
		m(s)
	}
	s, err := l.kube.CoreV1().Services("default").Create(l.ctx, s, metav1.CreateOptions{})
	if err != nil {
		l.t.Fatal(err)
	}
	for _, p := range s.Spec.Ports {
		if p.Protocol == corev1.ProtocolTCP {
			l.serveNodePort(p.NodePort)
		}
	}
	return s
}

func (l *k8sLab) service(name string) (*corev1.Service, error) {
	return l.kube.CoreV1().Services("default").Get(l.ctx, name, metav1.GetOptions{})
}

// routes reads drawbridge's table and its index.
func (l *k8sLab) routes() (uint64, map[int]fsm.Route) {
	l.t.Helper()
	code, body := l.agent.request("GET", "/v1/routes", bearer(), nil)
	if code != 200 {
		l.t.Fatalf("GET /v1/routes: %d %s", code, body)
	}
	var out struct {
		Index  uint64      `json:"index"`
		Routes []fsm.Route `json:"routes"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		l.t.Fatal(err)
	}
	m := map[int]fsm.Route{}
	for _, r := range out.Routes {
		m[r.Port] = r
	}
	return out.Index, m
}

// backendsOf returns the route's backends as "ip:port" sorted, and whether
// the route exists.
func (l *k8sLab) backendsOf(port int) (string, bool) {
	_, m := l.routes()
	r, ok := m[port]
	if !ok {
		return "", false
	}
	var bs []string
	for _, b := range r.Backends {
		bs = append(bs, b.Key())
	}
	sort.Strings(bs)
	return strings.Join(bs, ","), true
}

// served reports whether the Service has the floating IP in its status.
func (l *k8sLab) served(name string) bool {
	s, err := l.service(name)
	return err == nil && len(s.Status.LoadBalancer.Ingress) == 1 && s.Status.LoadBalancer.Ingress[0].IP == floatingIP
}

// live reports whether a connection to the public port through HAProxy
// reaches one of the named nodes.
func live(port int, nodes ...string) bool {
	got, err := dialRead(net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	return err == nil && slices.Contains(nodes, got)
}

// condition is the Service's routes condition, nil when it has none.
func (l *k8sLab) condition(name string) *metav1.Condition {
	s, err := l.service(name)
	if err != nil {
		return nil
	}
	return meta.FindStatusCondition(s.Status.Conditions, k8s.ConditionRoutes)
}

// route is the route on port as the admin token reads it (zero when none).
func (l *k8sLab) route(port int) fsm.Route {
	l.t.Helper()
	_, m := l.routes()
	return m[port]
}

// deleteService deletes a Service and waits until it is gone: the
// controller removed its routes and then its finalizer.
func (l *k8sLab) deleteService(t *testing.T, name string) {
	t.Helper()
	if err := l.kube.CoreV1().Services("default").Delete(l.ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, name+" gone (finalizer cleared)", func() bool {
		_, err := l.service(name)
		return apierrors.IsNotFound(err)
	})
}

// waitGarbagePasses waits for n more full resyncs of the controller (each
// ends with a garbage pass).
func (l *k8sLab) waitGarbagePasses(t *testing.T, c *controllerProc, n int) {
	t.Helper()
	start := strings.Count(c.logs.String(), "garbage check done")
	testenv.Eventually(t, 30*time.Second, fmt.Sprintf("%d more resyncs", n), func() bool {
		return strings.Count(c.logs.String(), "garbage check done") >= start+n
	})
}

func (l *k8sLab) hasEvent(name, reason string) bool {
	evs, err := l.kube.CoreV1().Events("default").List(l.ctx, metav1.ListOptions{})
	if err != nil {
		return false
	}
	for _, e := range evs.Items {
		if e.InvolvedObject.Name == name && e.Reason == reason && e.Type == corev1.EventTypeWarning {
			return true
		}
	}
	return false
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p)
	return s[i]
}

// TestE2EControllerAgainstKubeAPIServer runs the controller, as its own
// service account with the RBAC of deploy/kubernetes/controller and on the
// register token its Secret carries (limited to its port range, the k8s.*
// names and the nodes' addresses), against a real kube-apiserver and etcd,
// and a drawbridge agent with a real HAProxy.
func TestE2EControllerAgainstKubeAPIServer(t *testing.T) {
	l := newK8sLab(t)
	l.addNode("node-a", "127.0.0.2")
	l.addNode("node-b", "127.0.0.3")
	ctrl := l.startController("replica-1")

	t.Run("the controller's RBAC grants nothing more", func(t *testing.T) {
		cfg, err := clientcmd.BuildConfigFromFlags("", l.kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		as := kubernetes.NewForConfigOrDie(cfg)
		victim := l.createService("victim", l.publicPort())
		attempts := map[string]func() error{
			"list secrets": func() error {
				_, err := as.CoreV1().Secrets("drawbridge-system").List(l.ctx, metav1.ListOptions{})
				return err
			},
			"read a pod": func() error {
				_, err := as.CoreV1().Pods("default").List(l.ctx, metav1.ListOptions{})
				return err
			},
			"delete a Service": func() error {
				return as.CoreV1().Services("default").Delete(l.ctx, "victim", metav1.DeleteOptions{})
			},
			"update a Service's spec": func() error {
				v := victim.DeepCopy()
				v.Spec.Ports[0].Port++
				_, err := as.CoreV1().Services("default").Update(l.ctx, v, metav1.UpdateOptions{})
				return err
			},
			"create a Service": func() error {
				v := victim.DeepCopy()
				v.ResourceVersion, v.Name, v.Spec.ClusterIP, v.Spec.ClusterIPs = "", "mine", "", nil
				_, err := as.CoreV1().Services("default").Create(l.ctx, v, metav1.CreateOptions{})
				return err
			},
			"update a node": func() error {
				n, err := l.kube.CoreV1().Nodes().Get(l.ctx, "node-a", metav1.GetOptions{})
				if err != nil {
					return err
				}
				_, err = as.CoreV1().Nodes().Update(l.ctx, n, metav1.UpdateOptions{})
				return err
			},
			"create a Lease in another namespace": func() error {
				_, err := as.CoordinationV1().Leases("kube-system").Create(l.ctx, &coordinationv1.Lease{
					ObjectMeta: metav1.ObjectMeta{Name: "drawbridge-controller"}}, metav1.CreateOptions{})
				return err
			},
			"read another Lease in its namespace": func() error {
				_, err := as.CoordinationV1().Leases("drawbridge-system").Get(l.ctx, "someone-else", metav1.GetOptions{})
				return err
			},
		}
		for what, try := range attempts {
			if err := try(); !apierrors.IsForbidden(err) {
				t.Errorf("%s: got %v, want Forbidden", what, err)
			}
		}
		if err := l.kube.CoreV1().Services("default").Delete(l.ctx, "victim", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	})

	webPort := l.publicPort()
	var web *corev1.Service
	t.Run("created: external IP and route live through HAProxy", func(t *testing.T) {
		web = l.createService("web", webPort)
		np := web.Spec.Ports[0].NodePort
		testenv.Eventually(t, 30*time.Second, "web served", func() bool { return l.served("web") })
		testenv.Eventually(t, 10*time.Second, "route live", func() bool { return live(webPort, "node-a", "node-b") })
		b, _ := l.backendsOf(webPort)
		if want := fmt.Sprintf("127.0.0.2:%d,127.0.0.3:%d", np, np); b != want {
			t.Fatalf("backends %s, want %s", b, want)
		}
		if r := l.route(webPort); r.Token != controllerTokenName {
			t.Fatalf("the route belongs to token %q, not the controller's register token %q", r.Token, controllerTokenName)
		}
		if !strings.Contains(ctrl.logs.String(), "switched member") {
			t.Error("the controller never failed over from the node that is down")
		}
		s, _ := l.service("web")
		if !slices.Contains(s.Finalizers, k8s.Finalizer) {
			t.Fatalf("no finalizer: %v", s.Finalizers)
		}
		c := meta.FindStatusCondition(s.Status.Conditions, k8s.ConditionRoutes)
		if c == nil || c.Status != metav1.ConditionTrue {
			t.Fatalf("condition %+v", c)
		}
	})

	t.Run("node removed, NotReady, added: backends follow", func(t *testing.T) {
		np := web.Spec.Ports[0].NodePort
		start := time.Now()
		if err := l.kube.CoreV1().Nodes().Delete(l.ctx, "node-b", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 20*time.Second, "node-b gone", func() bool {
			b, _ := l.backendsOf(webPort)
			return b == fmt.Sprintf("127.0.0.2:%d", np)
		})
		took := time.Since(start)
		testenv.Eventually(t, 10*time.Second, "only node-a answers", func() bool { return live(webPort, "node-a") })
		t.Logf("FIGURE node removed -> backends updated in drawbridge: %v", took.Round(time.Millisecond))
		delete(l.nodeIPs, "node-b")

		l.addNode("node-c", "127.0.0.4")
		l.serveNodePort(np) // node-c's NodePort
		testenv.Eventually(t, 20*time.Second, "node-c added", func() bool {
			b, _ := l.backendsOf(webPort)
			return b == fmt.Sprintf("127.0.0.2:%d,127.0.0.4:%d", np, np)
		})
		l.setNodeReady("node-a", false)
		testenv.Eventually(t, 20*time.Second, "node-a NotReady leaves", func() bool {
			b, _ := l.backendsOf(webPort)
			return b == fmt.Sprintf("127.0.0.4:%d", np)
		})
		testenv.Eventually(t, 10*time.Second, "only node-c answers", func() bool { return live(webPort, "node-c") })
		l.setNodeReady("node-a", true)
		testenv.Eventually(t, 20*time.Second, "node-a back", func() bool {
			b, _ := l.backendsOf(webPort)
			return b == fmt.Sprintf("127.0.0.2:%d,127.0.0.4:%d", np, np)
		})
	})

	t.Run("externalTrafficPolicy Local: only nodes with ready endpoints", func(t *testing.T) {
		np := web.Spec.Ports[0].NodePort
		nodeC := "node-c"
		ready := true
		if _, err := l.kube.DiscoveryV1().EndpointSlices("default").Create(l.ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.5"}, NodeName: &nodeC,
				Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := l.kube.CoreV1().Services("default").Patch(l.ctx, "web", types.MergePatchType,
			[]byte(`{"spec":{"externalTrafficPolicy":"Local"}}`), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 20*time.Second, "only node-c", func() bool {
			b, _ := l.backendsOf(webPort)
			return b == fmt.Sprintf("127.0.0.4:%d", np)
		})
		// The API server allocated a healthCheckNodePort: the route checks
		// every backend there by HTTP. Stand in for kube-proxy on node-c:
		// 200 while it has a ready local endpoint, 503 when not.
		s, err := l.service("web")
		if err != nil || s.Spec.HealthCheckNodePort == 0 {
			t.Fatalf("no healthCheckNodePort allocated: %v %+v", err, s.Spec)
		}
		hc := int(s.Spec.HealthCheckNodePort)
		var healthy atomic.Bool
		healthy.Store(true)
		hln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.4", strconv.Itoa(hc)))
		if err != nil {
			t.Fatal(err)
		}
		hsrv := &http.Server{ReadHeaderTimeout: time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if healthy.Load() {
				w.WriteHeader(http.StatusOK)
				return
			}
			w.WriteHeader(http.StatusServiceUnavailable)
		})}
		go func() { _ = hsrv.Serve(hln) }()
		defer hsrv.Close()
		testenv.Eventually(t, 20*time.Second, "route checks on the healthCheckNodePort by HTTP", func() bool {
			_, m := l.routes()
			r := m[webPort]
			return r.CheckPort == hc && r.CheckMode == fsm.CheckModeHTTP
		})
		testenv.Eventually(t, 20*time.Second, "node-c answers", func() bool { return live(webPort, "node-c") })
		// kube-proxy says node-c lost its endpoint before the slice does:
		// HAProxy takes it out; and back in when it answers 200 again.
		healthy.Store(false)
		testenv.Eventually(t, 30*time.Second, "node-c taken out by its health check", func() bool { return !live(webPort, "node-c") })
		healthy.Store(true)
		testenv.Eventually(t, 30*time.Second, "node-c back", func() bool { return live(webPort, "node-c") })
		if _, err := l.kube.CoreV1().Services("default").Patch(l.ctx, "web", types.MergePatchType,
			[]byte(`{"spec":{"externalTrafficPolicy":"Cluster"}}`), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 20*time.Second, "all ready nodes again", func() bool {
			b, _ := l.backendsOf(webPort)
			return b == fmt.Sprintf("127.0.0.2:%d,127.0.0.4:%d", np, np)
		})
		_, m := l.routes()
		if r := m[webPort]; r.CheckPort != 0 || r.CheckMode != "" {
			t.Errorf("Cluster policy still checks on %d %q", r.CheckPort, r.CheckMode)
		}
	})

	t.Run("UDP refused with an Event", func(t *testing.T) {
		l.createService("dns", l.publicPort(), func(s *corev1.Service) {
			s.Spec.Ports = []corev1.ServicePort{{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}
		})
		testenv.Eventually(t, 20*time.Second, "UnsupportedProtocol event", func() bool { return l.hasEvent("dns", k8s.ReasonUnsupportedProtocol) })
	})

	// The controller's token sees only its own routes: another token's
	// route on a port a Service asks for is known only from drawbridge's
	// refusal, and must be reported, never overwritten.
	t.Run("a port held by another token's route: conflict reported, that route untouched, the port taken once free", func(t *testing.T) {
		taken := l.publicPort()
		backend := startBackend(t, "team-b")
		code, body := l.agent.request("PUT", fmt.Sprintf("/v1/routes/%d", taken), tokenHeader(otherTeamSecret),
			map[string]any{"name": "team-b-app", "backends": []map[string]any{{"address": "127.0.0.1", "port": backend.port()}}})
		if code != 200 {
			t.Fatalf("PUT team-b's route: %d %s", code, body)
		}
		l.createService("thief", taken)
		testenv.Eventually(t, 20*time.Second, "PortConflict condition and Warning event", func() bool {
			c := l.condition("thief")
			return c != nil && c.Status == metav1.ConditionFalse && c.Reason == k8s.ReasonPortConflict &&
				l.hasEvent("thief", k8s.ReasonPortConflict)
		})
		c := l.condition("thief")
		t.Logf("condition: %s: %s", c.Reason, c.Message)
		// Several resyncs later, team-b's route is as team-b made it.
		l.waitGarbagePasses(t, ctrl, 3)
		if r := l.route(taken); r.Name != "team-b-app" || r.Token != otherTeamTokenName || len(r.Backends) != 1 ||
			r.Backends[0].Address != "127.0.0.1" || r.Backends[0].Port != backend.port() {
			t.Fatalf("team-b's route was changed: %+v", r)
		}
		testenv.Eventually(t, 10*time.Second, "team-b's route answering", func() bool { return live(taken, "team-b") })
		if s, _ := l.service("thief"); len(s.Status.LoadBalancer.Ingress) != 0 {
			t.Fatalf("thief got an address with no port routed: %+v", s.Status.LoadBalancer.Ingress)
		}

		// Team B frees the port: a resync takes it.
		code, body = l.agent.request("DELETE", fmt.Sprintf("/v1/routes/%d?name=team-b-app", taken), tokenHeader(otherTeamSecret), nil)
		if code != 200 {
			t.Fatalf("DELETE team-b's route: %d %s", code, body)
		}
		testenv.Eventually(t, 20*time.Second, "thief routed on the freed port", func() bool {
			r := l.route(taken)
			c := l.condition("thief")
			return r.Name == fmt.Sprintf("k8s.default_thief_%d", taken) && r.Token == controllerTokenName &&
				c != nil && c.Status == metav1.ConditionTrue && l.served("thief")
		})
		testenv.Eventually(t, 10*time.Second, "thief live", func() bool { return live(taken, "node-a", "node-c") })
		l.deleteService(t, "thief")
		if r := l.route(taken); r.Name != "" {
			t.Fatalf("thief's route outlived it: %+v", r)
		}
	})

	t.Run("a public port outside the token's ports: Forbidden, nothing written", func(t *testing.T) {
		outside := testenv.FreePort(t) // never in the token's range, which FreePort does not hand out
		l.createService("outside", l.publicPort(), func(s *corev1.Service) {
			s.Annotations = map[string]string{k8s.AnnotationPublicPorts: fmt.Sprintf("tcp=%d", outside)}
		})
		testenv.Eventually(t, 20*time.Second, "Forbidden condition and Warning event", func() bool {
			c := l.condition("outside")
			return c != nil && c.Status == metav1.ConditionFalse && c.Reason == k8s.ReasonForbidden &&
				l.hasEvent("outside", k8s.ReasonForbidden)
		})
		c := l.condition("outside")
		t.Logf("condition: %s: %s", c.Reason, c.Message)
		if code, body := l.agent.request("GET", fmt.Sprintf("/v1/routes/%d", outside), bearer(), nil); code != 404 {
			t.Fatalf("GET /v1/routes/%d: %d %s, want 404", outside, code, body)
		}
		_, m := l.routes()
		for _, r := range m {
			if strings.HasPrefix(r.Name, "k8s.default_outside_") {
				t.Fatalf("a route was written for the Service: %+v", r)
			}
		}
		l.deleteService(t, "outside")
	})

	t.Run("a node outside the token's backend CIDRs: Forbidden, the routes keep their backends", func(t *testing.T) {
		before, _ := l.backendsOf(webPort)
		l.addNode("node-x", "127.0.0.9")
		testenv.Eventually(t, 20*time.Second, "web: Forbidden condition and Warning event", func() bool {
			c := l.condition("web")
			return c != nil && c.Status == metav1.ConditionFalse && c.Reason == k8s.ReasonForbidden &&
				l.hasEvent("web", k8s.ReasonForbidden)
		})
		c := l.condition("web")
		t.Logf("condition: %s: %s", c.Reason, c.Message)
		if after, _ := l.backendsOf(webPort); after != before {
			t.Fatalf("backends changed from %s to %s", before, after)
		}
		if err := l.kube.CoreV1().Nodes().Delete(l.ctx, "node-x", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		delete(l.nodeIPs, "node-x")
		testenv.Eventually(t, 20*time.Second, "web routed again", func() bool {
			c := l.condition("web")
			return c != nil && c.Status == metav1.ConditionTrue
		})
		if after, _ := l.backendsOf(webPort); after != before {
			t.Fatalf("backends changed from %s to %s", before, after)
		}
	})

	t.Run("orphan removal deletes the controller's own routes only", func(t *testing.T) {
		backend := startBackend(t, "other")
		put := func(hdr map[string]string, port int, name string) {
			t.Helper()
			code, body := l.agent.request("PUT", fmt.Sprintf("/v1/routes/%d", port), hdr,
				map[string]any{"name": name, "backends": []map[string]any{{"address": "127.0.0.1", "port": backend.port()}}})
			if code != 200 {
				t.Fatalf("PUT %d %s: %d %s", port, name, code, body)
			}
		}
		ghost, keep, own := l.publicPort(), l.publicPort(), l.publicPort()
		put(bearer(), ghost, "k8s.default_ghost_80")                      // an admin's, under the controller's prefix
		put(tokenHeader(otherTeamSecret), keep, "team-b-keep")            // another team's, outside the prefix
		put(tokenHeader(controllerAPISecret), own, "k8s.default_gone_80") // the controller's own; no Service wants it
		testenv.Eventually(t, 20*time.Second, "the controller's orphan removed", func() bool { return l.route(own).Name == "" })
		l.waitGarbagePasses(t, ctrl, 3)
		for port, owner := range map[int]string{ghost: "legacy", keep: otherTeamTokenName} {
			if r := l.route(port); r.Token != owner || len(r.Backends) != 1 || r.Backends[0].Port != backend.port() {
				t.Errorf("route %d of %s was removed or changed: %+v", port, owner, r)
			}
		}
		for port, name := range map[int]string{ghost: "k8s.default_ghost_80", keep: "team-b-keep"} {
			if code, body := l.agent.request("DELETE", fmt.Sprintf("/v1/routes/%d?name=%s", port, name), bearer(), nil); code != 200 {
				t.Fatalf("DELETE %d: %d %s", port, code, body)
			}
		}
	})

	t.Run("drift repaired: a route deleted by hand comes back", func(t *testing.T) {
		name := fmt.Sprintf("k8s.default_web_%d", webPort)
		code, body := l.agent.request("DELETE", fmt.Sprintf("/v1/routes/%d?name=%s", webPort, name), bearer(), nil)
		if code != 200 {
			t.Fatalf("DELETE: %d %s", code, body)
		}
		testenv.Eventually(t, 20*time.Second, "route restored", func() bool { _, ok := l.backendsOf(webPort); return ok })
		testenv.Eventually(t, 10*time.Second, "live again", func() bool { return live(webPort, "node-a", "node-c") })
	})

	t.Run("deleted: route removed and finalizer cleared", func(t *testing.T) {
		if err := l.kube.CoreV1().Services("default").Delete(l.ctx, "web", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 20*time.Second, "route removed", func() bool { _, ok := l.backendsOf(webPort); return !ok })
		testenv.Eventually(t, 20*time.Second, "Service gone (finalizer cleared)", func() bool {
			_, err := l.service("web")
			return apierrors.IsNotFound(err)
		})
	})

	// 20 Services, one after another: created -> external IP in status and
	// a connection through HAProxy reaching a node.
	ports := make([]int, 20)
	t.Run("20 Services: time to external IP and live route", func(t *testing.T) {
		var took []time.Duration
		for i := range ports {
			ports[i] = l.publicPort()
			name := fmt.Sprintf("svc-%02d", i)
			start := time.Now()
			l.createService(name, ports[i])
			testenv.Eventually(t, 30*time.Second, name+" served and live", func() bool {
				return l.served(name) && live(ports[i], "node-a", "node-c")
			})
			took = append(took, time.Since(start))
		}
		t.Logf("FIGURE Service created -> external IP + route live through HAProxy, 20 Services: p50 %v, p90 %v, max %v",
			percentile(took, 0.5).Round(time.Millisecond), percentile(took, 0.9).Round(time.Millisecond),
			percentile(took, 1).Round(time.Millisecond))
	})

	t.Run("controller restart changes no route", func(t *testing.T) {
		before, _ := l.routes()
		if !ctrl.stopOrKill(10 * time.Second) {
			t.Fatal("controller did not stop on SIGTERM")
		}
		ctrl = l.startController("replica-2")
		// Two full resyncs by the new leader: every Service compared with
		// drawbridge, and the garbage pass run.
		testenv.Eventually(t, 30*time.Second, "two resyncs after the restart", func() bool {
			return strings.Count(ctrl.logs.String(), "garbage check done") >= 2
		})
		after, _ := l.routes()
		if after != before {
			t.Fatalf("route table index moved from %d to %d across a restart", before, after)
		}
		t.Logf("FIGURE controller restart: route table index %d before, %d after two resyncs by the new leader (0 route writes)", before, after)
	})

	t.Run("killed mid-reconcile: the standby takes over and converges", func(t *testing.T) {
		standby := l.startController("replica-3")
		testenv.Eventually(t, 10*time.Second, "standby following", func() bool { return strings.Contains(standby.logs.String(), "following") })
		var names []string
		var kports []int
		for i := range 10 {
			name := fmt.Sprintf("burst-%02d", i)
			names = append(names, name)
			kports = append(kports, l.publicPort())
			l.createService(name, kports[i])
		}
		testenv.Eventually(t, 30*time.Second, "the first burst route", func() bool {
			_, m := l.routes()
			for _, p := range kports {
				if _, ok := m[p]; ok {
					return true
				}
			}
			return false
		})
		ctrl.signal(syscall.SIGKILL, 10*time.Second)
		testenv.Eventually(t, 60*time.Second, "every burst Service served by the standby", func() bool {
			for i, n := range names {
				if !l.served(n) || !live(kports[i], "node-a", "node-c") {
					return false
				}
			}
			return true
		})
		if !strings.Contains(standby.logs.String(), "leading") {
			t.Fatal("the standby never led")
		}
		// Exactly the routes the Services want: none twice, none left over.
		_, m := l.routes()
		managed := 0
		for _, r := range m {
			if strings.HasPrefix(r.Name, k8s.DefaultNamePrefix) {
				managed++
			}
		}
		if want := len(ports) + len(kports); managed != want {
			t.Fatalf("%d managed routes, want %d", managed, want)
		}
	})
}
