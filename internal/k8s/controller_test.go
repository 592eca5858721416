package k8s

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"

	"github.com/drawbridge-lb/drawbridge/api/client"
	"github.com/drawbridge-lb/drawbridge/fsm"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// memRoutes is an in-memory route table with drawbridge's rules for what
// the controller does: PUT never takes a port from another name (409),
// DELETE with a name only removes a route of that name.
type memRoutes struct {
	mu     sync.Mutex
	routes map[int]fsm.Route
	writes int
	fip    string
	fail   error // every call fails with it when set
}

func newMemRoutes() *memRoutes { return &memRoutes{routes: map[int]fsm.Route{}} }

func (m *memRoutes) ListRoutes(context.Context) ([]fsm.Route, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return nil, m.fail
	}
	var out []fsm.Route
	for _, r := range m.routes {
		out = append(out, r.Clone())
	}
	slices.SortFunc(out, func(a, b fsm.Route) int { return a.Port - b.Port })
	return out, nil
}

func (m *memRoutes) PutRoute(_ context.Context, r fsm.Route) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	if cur, ok := m.routes[r.Port]; ok && cur.Name != r.Name {
		return &client.Error{Member: "mem", Status: http.StatusConflict, Message: fmt.Sprintf("port %d belongs to route %q", r.Port, cur.Name)}
	}
	if err := r.Validate(); err != nil {
		return &client.Error{Member: "mem", Status: http.StatusBadRequest, Message: err.Error()}
	}
	m.routes[r.Port] = r.Clone()
	m.writes++
	return nil
}

func (m *memRoutes) DeleteRoute(_ context.Context, port int, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	if cur, ok := m.routes[port]; ok && cur.Name == name {
		delete(m.routes, port)
		m.writes++
	}
	return nil
}

func (m *memRoutes) FloatingIP(context.Context) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.fip, m.fail
}

func (m *memRoutes) set(r fsm.Route) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.routes[r.Port] = r
}

func (m *memRoutes) get(port int) (fsm.Route, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.routes[port]
	return r, ok
}

func (m *memRoutes) writeCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.writes
}

// logWriter sends component logs to t.Log.
type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

type harness struct {
	t      *testing.T
	kube   *fake.Clientset
	routes *memRoutes
	ctx    context.Context
}

func startController(t *testing.T, kube *fake.Clientset, routes Routes, cfg Config) *Controller {
	t.Helper()
	// The fake clientset's watches do not resume from a resourceVersion: an
	// object made between an informer's list and its watch is never seen.
	// Wait for the three watches before the test makes anything.
	watches := make(chan struct{}, 16)
	kube.PrependWatchReactor("*", func(a clienttesting.Action) (bool, watch.Interface, error) {
		w, err := kube.Tracker().Watch(a.GetResource(), a.GetNamespace())
		if err != nil {
			return false, nil, err
		}
		watches <- struct{}{}
		return true, w, nil
	})
	log := slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, err := New(cfg, Clients{Core: kube.CoreV1(), Discovery: kube.DiscoveryV1(), Coordination: kube.CoordinationV1()}, routes, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := c.Run(ctx); err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	for range 3 {
		select {
		case <-watches:
		case <-time.After(10 * time.Second):
			t.Fatal("the informers did not start watching")
		}
	}
	return c
}

// newKube returns a fake clientset whose Services keep spec and status
// apart as an API server does: UpdateStatus changes the status alone. The
// plain fake stores the whole object it is given, so a controller's status
// write from a stale copy, racing a test's spec update, would put the old
// spec back (and the test would wait for a change that was undone).
func newKube() *fake.Clientset {
	kube := fake.NewClientset()
	services := corev1.SchemeGroupVersion.WithResource("services")
	kube.PrependReactor("update", "services", func(a clienttesting.Action) (bool, runtime.Object, error) {
		u, ok := a.(clienttesting.UpdateAction)
		if !ok || u.GetSubresource() != "status" {
			return false, nil, nil
		}
		in, ok := u.GetObject().(*corev1.Service)
		if !ok {
			return false, nil, nil
		}
		cur, err := kube.Tracker().Get(services, in.Namespace, in.Name)
		if err != nil {
			return true, nil, err
		}
		out := cur.(*corev1.Service).DeepCopy()
		in.Status.DeepCopyInto(&out.Status)
		if err := kube.Tracker().Update(services, out, in.Namespace); err != nil {
			return true, nil, err
		}
		return true, out, nil
	})
	return kube
}

func newHarness(t *testing.T, cfg Config, objs ...any) *harness {
	t.Helper()
	kube := newKube()
	h := &harness{t: t, kube: kube, routes: newMemRoutes(), ctx: context.Background()}
	for _, o := range objs {
		h.create(o)
	}
	if cfg.Resync == 0 {
		cfg.Resync = time.Hour
	}
	if cfg.RefusedRetry == 0 {
		cfg.RefusedRetry = time.Hour
	}
	startController(t, kube, h.routes, cfg)
	return h
}

func (h *harness) create(o any) {
	h.t.Helper()
	var err error
	switch o := o.(type) {
	case *corev1.Node:
		_, err = h.kube.CoreV1().Nodes().Create(h.ctx, o, metav1.CreateOptions{})
	case *corev1.Service:
		_, err = h.kube.CoreV1().Services(o.Namespace).Create(h.ctx, o, metav1.CreateOptions{})
	default:
		h.t.Fatalf("cannot create %T", o)
	}
	if err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) service(ns, name string) *corev1.Service {
	h.t.Helper()
	s, err := h.kube.CoreV1().Services(ns).Get(h.ctx, name, metav1.GetOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	return s
}

func (h *harness) updateService(s *corev1.Service) {
	h.t.Helper()
	if _, err := h.kube.CoreV1().Services(s.Namespace).Update(h.ctx, s, metav1.UpdateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) events(ns string) []corev1.Event {
	h.t.Helper()
	l, err := h.kube.CoreV1().Events(ns).List(h.ctx, metav1.ListOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	return l.Items
}

func (h *harness) hasEvent(ns, typ, reason string) bool {
	for _, e := range h.events(ns) {
		if e.Type == typ && e.Reason == reason {
			return true
		}
	}
	return false
}

func backendKeys(r fsm.Route) string {
	var out []string
	for _, b := range r.Backends {
		out = append(out, b.Key())
	}
	return strings.Join(out, ",")
}

func TestControllerServesAService(t *testing.T) {
	h := newHarness(t, Config{ExternalIP: "203.0.113.10"}, readyNode("n1", "10.0.0.1"), readyNode("n2", "10.0.0.2"))
	h.create(lbService("default", "web", tcpPort("http", 80, 30080),
		corev1.ServicePort{Name: "dns", Port: 53, NodePort: 30053, Protocol: corev1.ProtocolUDP}))

	testenv.Eventually(t, 10*time.Second, "route 80", func() bool {
		r, ok := h.routes.get(80)
		return ok && backendKeys(r) == "10.0.0.1:30080,10.0.0.2:30080" && r.Name == "k8s.default_web_80"
	})
	testenv.Eventually(t, 10*time.Second, "status", func() bool {
		s := h.service("default", "web")
		c := meta.FindStatusCondition(s.Status.Conditions, ConditionRoutes)
		return len(s.Status.LoadBalancer.Ingress) == 1 && s.Status.LoadBalancer.Ingress[0].IP == "203.0.113.10" &&
			hasFinalizer(s) && c != nil && c.Reason == ReasonUnsupportedProtocol
	})
	testenv.Eventually(t, 10*time.Second, "UDP refused with a Warning event", func() bool {
		return h.hasEvent("default", corev1.EventTypeWarning, ReasonUnsupportedProtocol)
	})

	// A node going NotReady leaves the backends.
	n, _ := h.kube.CoreV1().Nodes().Get(h.ctx, "n2", metav1.GetOptions{})
	n.Status.Conditions[0].Status = corev1.ConditionFalse
	if _, err := h.kube.CoreV1().Nodes().UpdateStatus(h.ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "n2 removed", func() bool { r, _ := h.routes.get(80); return backendKeys(r) == "10.0.0.1:30080" })
	// A node deleted too.
	if err := h.kube.CoreV1().Nodes().Delete(h.ctx, "n1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "n1 removed", func() bool { r, ok := h.routes.get(80); return ok && len(r.Backends) == 0 })
	h.create(readyNode("n3", "10.0.0.3"))
	testenv.Eventually(t, 10*time.Second, "n3 added", func() bool { r, _ := h.routes.get(80); return backendKeys(r) == "10.0.0.3:30080" })

	// Type changes away from LoadBalancer: routes go, status and finalizer too.
	s := h.service("default", "web")
	s.Spec.Type = corev1.ServiceTypeNodePort
	s.Spec.LoadBalancerClass = nil
	h.updateService(s)
	testenv.Eventually(t, 10*time.Second, "released", func() bool {
		s := h.service("default", "web")
		_, ok := h.routes.get(80)
		return !ok && !hasFinalizer(s) && len(s.Status.LoadBalancer.Ingress) == 0 &&
			meta.FindStatusCondition(s.Status.Conditions, ConditionRoutes) == nil
	})
}

func TestControllerConflictIsReportedNotOverwritten(t *testing.T) {
	h := newHarness(t, Config{ExternalIP: "203.0.113.10"}, readyNode("n1", "10.0.0.1"))
	theirs := fsm.NewRoute(80, "someone-else")
	theirs.Backends = []fsm.Backend{{Address: "192.0.2.1", Port: 8080}}
	h.routes.set(theirs)
	// Another Service of ours that wants the same public port loses too:
	// the first one keeps it.
	h.create(lbService("default", "web", tcpPort("", 80, 30080), tcpPort("", 81, 30081)))
	testenv.Eventually(t, 10*time.Second, "conflict condition", func() bool {
		c := meta.FindStatusCondition(h.service("default", "web").Status.Conditions, ConditionRoutes)
		return c != nil && c.Status == metav1.ConditionFalse && c.Reason == ReasonPortConflict &&
			strings.Contains(c.Message, `"someone-else"`)
	})
	testenv.Eventually(t, 10*time.Second, "warning event", func() bool { return h.hasEvent("default", corev1.EventTypeWarning, ReasonPortConflict) })
	if r, _ := h.routes.get(80); r.Name != "someone-else" || backendKeys(r) != "192.0.2.1:8080" {
		t.Fatalf("the other route was changed: %+v", r)
	}
	// The other port is still served, and the Service has its address.
	testenv.Eventually(t, 10*time.Second, "port 81", func() bool { _, ok := h.routes.get(81); return ok })
	testenv.Eventually(t, 10*time.Second, "ingress", func() bool { return len(h.service("default", "web").Status.LoadBalancer.Ingress) == 1 })

	// Deleting the Service removes its own route and leaves the other.
	if err := h.kube.CoreV1().Services("default").Delete(h.ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "port 81 removed", func() bool { _, ok := h.routes.get(81); return !ok })
	if r, ok := h.routes.get(80); !ok || r.Name != "someone-else" {
		t.Fatalf("the other route was removed or changed: %+v", r)
	}
}

func TestControllerIgnoresOtherClasses(t *testing.T) {
	h := newHarness(t, Config{ExternalIP: "203.0.113.10"}, readyNode("n1", "10.0.0.1"))
	other := lbService("default", "other", tcpPort("", 80, 30080))
	class := "example.com/other"
	other.Spec.LoadBalancerClass = &class
	unclassed := lbService("default", "unclassed", tcpPort("", 81, 30081))
	unclassed.Spec.LoadBalancerClass = nil
	h.create(other)
	h.create(unclassed)
	mine := lbService("default", "mine", tcpPort("", 82, 30082))
	h.create(mine)
	testenv.Eventually(t, 10*time.Second, "mine served", func() bool { _, ok := h.routes.get(82); return ok })
	for _, name := range []string{"other", "unclassed"} {
		s := h.service("default", name)
		if hasFinalizer(s) || len(s.Status.LoadBalancer.Ingress) > 0 {
			t.Errorf("%s was touched: %+v", name, s)
		}
	}
	if _, ok := h.routes.get(80); ok {
		t.Error("route for another class")
	}
	if _, ok := h.routes.get(81); ok {
		t.Error("route for an unclassed Service without --claim-unclassed")
	}
}

func TestControllerClaimUnclassed(t *testing.T) {
	h := newHarness(t, Config{ExternalIP: "203.0.113.10", ClaimUnclassed: true}, readyNode("n1", "10.0.0.1"))
	s := lbService("default", "unclassed", tcpPort("", 81, 30081))
	s.Spec.LoadBalancerClass = nil
	h.create(s)
	testenv.Eventually(t, 10*time.Second, "served", func() bool { _, ok := h.routes.get(81); return ok })
}

func TestControllerRepairsDriftAndCollectsGarbage(t *testing.T) {
	h := newHarness(t, Config{ExternalIP: "203.0.113.10", Resync: 200 * time.Millisecond}, readyNode("n1", "10.0.0.1"))
	// Left over from a Service deleted while no controller ran.
	h.routes.set(fsm.NewRoute(9000, "k8s.gone_svc_9000"))
	// Not ours: no prefix.
	h.routes.set(fsm.NewRoute(9001, "manual"))
	h.create(lbService("default", "web", tcpPort("", 80, 30080)))
	testenv.Eventually(t, 10*time.Second, "route", func() bool { _, ok := h.routes.get(80); return ok })
	testenv.Eventually(t, 10*time.Second, "garbage removed", func() bool { _, ok := h.routes.get(9000); return !ok })
	if _, ok := h.routes.get(9001); !ok {
		t.Fatal("a route without the prefix was removed")
	}

	// Deleted by hand: it comes back.
	h.routes.DeleteRoute(h.ctx, 80, "k8s.default_web_80")
	testenv.Eventually(t, 10*time.Second, "route restored", func() bool { _, ok := h.routes.get(80); return ok })
	// Changed by hand: it is set back.
	r, _ := h.routes.get(80)
	r.Backends = append(r.Backends, fsm.Backend{Address: "192.0.2.66", Port: 22})
	r.Balance = fsm.BalanceFirst
	h.routes.set(r)
	testenv.Eventually(t, 10*time.Second, "route repaired", func() bool {
		r, _ := h.routes.get(80)
		return backendKeys(r) == "10.0.0.1:30080" && r.Balance == fsm.BalanceRoundRobin
	})
}

func TestControllerRestartChangesNothing(t *testing.T) {
	kube := newKube()
	routes := newMemRoutes()
	routes.fip = "198.51.100.7"
	ctx := context.Background()
	for _, n := range []*corev1.Node{readyNode("n1", "10.0.0.1"), readyNode("n2", "10.0.0.2")} {
		kube.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	}
	for i := range 5 {
		kube.CoreV1().Services("default").Create(ctx, lbService("default", fmt.Sprintf("s%d", i), tcpPort("", int32(8000+i), int32(30000+i))), metav1.CreateOptions{})
	}
	cfg := Config{Resync: 100 * time.Millisecond}
	run := func() (stop func()) {
		log := slog.New(slog.NewTextHandler(logWriter{t}, nil))
		c, err := New(cfg, Clients{Core: kube.CoreV1(), Discovery: kube.DiscoveryV1(), Coordination: kube.CoordinationV1()}, routes, log)
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); c.Run(cctx) }()
		testenv.Eventually(t, 10*time.Second, "caches", func() bool { return c.Reconciled() > 0 })
		testenv.Eventually(t, 10*time.Second, "reconciles", func() bool { return c.Reconciled() >= 20 })
		return func() { cancel(); <-done }
	}
	stop := run()
	testenv.Eventually(t, 10*time.Second, "all served", func() bool {
		for i := range 5 {
			s, _ := kube.CoreV1().Services("default").Get(ctx, fmt.Sprintf("s%d", i), metav1.GetOptions{})
			if len(s.Status.LoadBalancer.Ingress) != 1 || s.Status.LoadBalancer.Ingress[0].IP != "198.51.100.7" {
				return false
			}
		}
		return true
	})
	stop()
	writes := routes.writeCount()
	if writes != 5 {
		t.Fatalf("%d route writes for 5 Services, want 5", writes)
	}
	actions := len(kube.Actions())
	stop = run()
	defer stop()
	// Many reconciles and resyncs later: no route write, and no write to
	// Kubernetes (only reads: list and watch).
	if n := routes.writeCount(); n != writes {
		t.Fatalf("restart wrote %d routes", n-writes)
	}
	for _, a := range kube.Actions()[actions:] {
		if v := a.GetVerb(); v != "list" && v != "watch" && v != "get" {
			t.Errorf("restart made a %s of %s", v, a.GetResource().Resource)
		}
	}
}

func TestControllerDrawbridgeDownRetries(t *testing.T) {
	kube := newKube()
	routes := newMemRoutes()
	routes.fail = fmt.Errorf("connection refused")
	kube.CoreV1().Nodes().Create(context.Background(), readyNode("n1", "10.0.0.1"), metav1.CreateOptions{})
	c := startController(t, kube, routes, Config{ExternalIP: "203.0.113.10", Resync: time.Hour})
	kube.CoreV1().Services("default").Create(context.Background(), lbService("default", "web", tcpPort("", 80, 30080)), metav1.CreateOptions{})
	testenv.Eventually(t, 10*time.Second, "a few failed attempts", func() bool { return c.Reconciled() >= 4 })
	if _, ok := routes.get(80); ok {
		t.Fatal("route set while drawbridge failed")
	}
	routes.mu.Lock()
	routes.fail = nil
	routes.mu.Unlock()
	testenv.Eventually(t, 10*time.Second, "served after drawbridge came back", func() bool { _, ok := routes.get(80); return ok })
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{
		{NamePrefix: "K8S."},
		{NamePrefix: "-x"},
		{NamePrefix: strings.Repeat("a", 25)},
		{ExternalIP: "not-an-ip"},
		{ExternalIP: "fe80::1%eth0"},
		{Resync: time.Millisecond},
		{Workers: 100},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	c := Config{ExternalIP: "::ffff:203.0.113.5"}
	if err := c.Validate(); err != nil || c.ExternalIP != "203.0.113.5" || c.Class != DefaultClass {
		t.Errorf("got %+v, %v", c, err)
	}
}

// TestControllerRefusesAFloatingIPThatIsNotOne: what drawbridge reports is
// checked before it reaches a Service's status.
func TestControllerRefusesAFloatingIPThatIsNotOne(t *testing.T) {
	kube := newKube()
	routes := newMemRoutes()
	routes.fip = "192.0.2.1\nx"
	kube.CoreV1().Nodes().Create(context.Background(), readyNode("n1", "10.0.0.1"), metav1.CreateOptions{})
	c := startController(t, kube, routes, Config{Resync: time.Hour})
	kube.CoreV1().Services("default").Create(context.Background(), lbService("default", "web", tcpPort("", 80, 30080)), metav1.CreateOptions{})
	testenv.Eventually(t, 10*time.Second, "a few attempts", func() bool { return c.Reconciled() >= 4 })
	s, _ := kube.CoreV1().Services("default").Get(context.Background(), "web", metav1.GetOptions{})
	if len(s.Status.LoadBalancer.Ingress) != 0 {
		t.Fatalf("status got %+v", s.Status.LoadBalancer.Ingress)
	}
	routes.mu.Lock()
	routes.fip = "192.0.2.1"
	routes.mu.Unlock()
	testenv.Eventually(t, 10*time.Second, "status once the address is one", func() bool {
		s, _ := kube.CoreV1().Services("default").Get(context.Background(), "web", metav1.GetOptions{})
		return len(s.Status.LoadBalancer.Ingress) == 1 && s.Status.LoadBalancer.Ingress[0].IP == "192.0.2.1"
	})
}
