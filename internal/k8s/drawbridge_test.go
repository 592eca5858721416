package k8s

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/api/client"
	"github.com/drawbridge-lb/drawbridge/api/client/clienttest"
	"github.com/drawbridge-lb/drawbridge/fsm"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

// Secrets of the tokens the API under test accepts (obviously fake).
const (
	opsSecret        = "fake-ops-admin-secret-0000"
	controllerSecret = "fake-k8s-controller-secret-1111"
	teamBSecret      = "fake-team-b-register-secret-2222"
)

// scopedTokens are an admin token (ops), the controller's register token
// (k8s-controller: ports controllerPorts, names k8s.*, backends in
// 10.0.0.0/24, as the README configures it) and another team's register
// token on 31000-31099 (team-b: any name).
func scopedTokens(t *testing.T, controllerPorts string) []api.Token {
	t.Helper()
	ports := func(s string) fsm.PortRanges {
		p, err := fsm.ParsePortRanges([]string{s})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	return []api.Token{
		{Name: "ops", Role: api.RoleAdmin, SHA256: api.HashSecret(opsSecret)},
		{Name: "k8s-controller", Role: api.RoleRegister, SHA256: api.HashSecret(controllerSecret), Ports: ports(controllerPorts),
			Names: []string{"k8s.*"}, BackendCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}},
		{Name: "team-b", Role: api.RoleRegister, SHA256: api.HashSecret(teamBSecret), Ports: ports("31000-31099"), Names: []string{"*"}},
	}
}

// scopedAPI is drawbridge's real API handler with scopedTokens (the
// controller's on 31000-31099); port 31050 is reserved.
func scopedAPI(t *testing.T) *clienttest.RealAPI {
	t.Helper()
	reserved, err := fsm.ParsePortRanges([]string{"31050"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := api.DefaultConfig()
	cfg.Limits.Rate = 0
	cfg.ReservedPorts = reserved
	cfg.ScopedTokens = scopedTokens(t, "31000-31099")
	return clienttest.NewRealAPI(t, cfg, testenv.Logger(t))
}

// routesAs is Routes over the API with secret.
func routesAs(t *testing.T, a *clienttest.RealAPI, secret string) APIRoutes {
	t.Helper()
	c, err := client.New(client.Config{Members: []string{a.URL()}, Token: secret})
	if err != nil {
		t.Fatal(err)
	}
	return APIRoutes{C: c}
}

func route(port int, name string, backends ...string) fsm.Route {
	r := fsm.NewRoute(port, name)
	for _, b := range backends {
		ap := netip.MustParseAddrPort(b)
		r.Backends = append(r.Backends, fsm.Backend{Address: ap.Addr().String(), Port: int(ap.Port())})
	}
	return r
}

// What drawbridge's real API answers the controller's token becomes the
// right reason on the Service: a port held by another token's route is a
// conflict (the token cannot see that route, so the answer is all it
// learns), the token's scope is Forbidden, the cluster's policy Refused.
// Nothing refused changes the table.
func TestRefusalsOfTheRealAPI(t *testing.T) {
	a := scopedAPI(t)
	ctx := context.Background()
	ctrl, teamB, ops := routesAs(t, a, controllerSecret), routesAs(t, a, teamBSecret), routesAs(t, a, opsSecret)
	if err := teamB.PutRoute(ctx, route(31005, "team-b-app", "10.0.0.9:30000")); err != nil {
		t.Fatal(err)
	}
	// An admin's route with the very name the controller would give it.
	if err := ops.PutRoute(ctx, route(31006, "k8s.default_web_81", "10.0.0.9:30001")); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		as     APIRoutes
		route  fsm.Route
		reason string
	}{
		{"another token's route on the port", ctrl, route(31005, "k8s.default_web_80", "10.0.0.1:30080"), ReasonPortConflict},
		{"another token's route with our name", ctrl, route(31006, "k8s.default_web_81", "10.0.0.1:30081"), ReasonPortConflict},
		{"with an admin token, a route of another name", ops, route(31005, "k8s.default_web_80", "10.0.0.1:30080"), ReasonPortConflict},
		{"a port outside the token's ports", ctrl, route(40000, "k8s.default_web_80", "10.0.0.1:30080"), ReasonForbidden},
		{"a name outside the token's names", ctrl, route(31010, "web", "10.0.0.1:30080"), ReasonForbidden},
		{"a backend outside the token's CIDRs", ctrl, route(31011, "k8s.default_web_80", "10.0.0.1:30080", "10.1.0.5:30080"), ReasonForbidden},
		{"a backend the cluster's policy refuses", ctrl, route(31012, "k8s.default_web_80", "169.254.169.254:80"), ReasonRefused},
		{"a reserved port", ctrl, route(31050, "k8s.default_web_80", "10.0.0.1:30080"), ReasonRefused},
		{"an unknown token", routesAs(t, a, "fake-unknown-token-9999"), route(31013, "k8s.default_web_80", "10.0.0.1:30080"), ReasonUnauthorized},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := a.FSM.State().Hash()
			err := tc.as.PutRoute(ctx, tc.route)
			reason, refused := refusal(err)
			if !refused || reason != tc.reason {
				t.Fatalf("PUT %d %s: %v classified %q (refused %t), want %q", tc.route.Port, tc.route.Name, err, reason, refused, tc.reason)
			}
			if a.FSM.State().Hash() != before {
				t.Fatal("a refused route changed the table")
			}
		})
	}

	// The controller's token sees only its own routes, and deleting a
	// route it saw that another token owns now is a no-op, not an error.
	if err := ctrl.PutRoute(ctx, route(31020, "k8s.default_ok_80", "10.0.0.1:30080")); err != nil {
		t.Fatal(err)
	}
	list, err := ctrl.ListRoutes(ctx)
	if err != nil || len(list) != 1 || list[0].Port != 31020 || list[0].Token != "k8s-controller" {
		t.Fatalf("the controller's token listed %+v, %v; want only its own route", list, err)
	}
	if err := ctrl.DeleteRoute(ctx, 31006, "k8s.default_web_81"); err != nil {
		t.Fatalf("delete of another token's route: %v, want it left alone without an error", err)
	}
	if r, ok := a.Route(31006); !ok || r.Token != "ops" {
		t.Fatalf("another token's route was deleted or changed: %+v", r)
	}
}

// The controller on a register token, against drawbridge's real API: it
// reports a port held by another token's route as a conflict and leaves
// that route alone, reports a port outside its token's scope as
// Forbidden, removes its own orphans but never another's route (inside or
// outside its prefix), and takes the port once it is free.
func TestControllerOnARegisterToken(t *testing.T) {
	a := scopedAPI(t)
	ctx := context.Background()
	teamB, ops := routesAs(t, a, teamBSecret), routesAs(t, a, opsSecret)
	ctrlRoutes := routesAs(t, a, controllerSecret)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(teamB.PutRoute(ctx, route(31005, "team-b-app", "10.0.0.9:30000")))
	// An admin's route under the controller's prefix that no Service wants,
	// and one outside it: neither is the controller's to remove.
	must(ops.PutRoute(ctx, route(31007, "k8s.gone_svc_80", "10.0.0.9:30001")))
	must(ops.PutRoute(ctx, route(31008, "manual", "10.0.0.9:30002")))
	// The controller's own route of a Service deleted while it was away.
	must(ctrlRoutes.PutRoute(ctx, route(31009, "k8s.gone_old_80", "10.0.0.1:30003")))

	kube := newKube()
	h := &harness{t: t, kube: kube, ctx: ctx}
	h.create(readyNode("n1", "10.0.0.1"))
	c := startController(t, kube, ctrlRoutes, Config{ExternalIP: "203.0.113.10", Resync: 200 * time.Millisecond, RefusedRetry: time.Hour})

	h.create(lbService("default", "thief", tcpPort("", 31005, 30080)))
	far := lbService("default", "far", tcpPort("http", 80, 30081))
	far.Annotations = map[string]string{AnnotationPublicPorts: "http=40000"}
	h.create(far)
	h.create(lbService("default", "web", tcpPort("", 31020, 30082)))

	condition := func(name string) *metav1.Condition {
		return meta.FindStatusCondition(h.service("default", name).Status.Conditions, ConditionRoutes)
	}
	testenv.Eventually(t, 10*time.Second, "thief: PortConflict condition and Warning event", func() bool {
		c := condition("thief")
		return c != nil && c.Status == metav1.ConditionFalse && c.Reason == ReasonPortConflict &&
			h.hasEvent("default", corev1.EventTypeWarning, ReasonPortConflict)
	})
	testenv.Eventually(t, 10*time.Second, "far: Forbidden condition and Warning event", func() bool {
		c := condition("far")
		return c != nil && c.Status == metav1.ConditionFalse && c.Reason == ReasonForbidden &&
			h.hasEvent("default", corev1.EventTypeWarning, ReasonForbidden)
	})
	testenv.Eventually(t, 10*time.Second, "web served", func() bool {
		r, ok := a.Route(31020)
		c := condition("web")
		return ok && r.Token == "k8s-controller" && c != nil && c.Status == metav1.ConditionTrue
	})
	testenv.Eventually(t, 10*time.Second, "its own orphan removed", func() bool { _, ok := a.Route(31009); return !ok })
	// Five more resyncs (three Services and a garbage pass each) before
	// looking at what must not have changed.
	n := c.Reconciled()
	testenv.Eventually(t, 10*time.Second, "five more resyncs", func() bool { return c.Reconciled() >= n+20 })

	if s := h.service("default", "thief"); len(s.Status.LoadBalancer.Ingress) != 0 {
		t.Errorf("thief has an address with no port routed: %+v", s.Status.LoadBalancer.Ingress)
	}
	if _, ok := a.Route(40000); ok {
		t.Error("a route outside the token's ports was written")
	}
	for port, want := range map[int]string{31005: "team-b", 31007: "ops", 31008: "ops"} {
		if r, ok := a.Route(port); !ok || r.Token != want || len(r.Backends) != 1 || r.Backends[0].Address != "10.0.0.9" {
			t.Errorf("route %d of %s was removed or changed: %+v", port, want, r)
		}
	}

	// Team B frees the port: the next resync takes it.
	if err := teamB.DeleteRoute(ctx, 31005, "team-b-app"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "thief takes the free port", func() bool {
		r, ok := a.Route(31005)
		c := condition("thief")
		return ok && r.Token == "k8s-controller" && r.Name == "k8s.default_thief_31005" &&
			c != nil && c.Status == metav1.ConditionTrue
	})
}

// A token drawbridge does not know is said on every Service (it could be
// missing from one edge node's api.tokens), and nothing is written.
func TestControllerReportsAnUnknownToken(t *testing.T) {
	a := scopedAPI(t)
	kube := newKube()
	h := &harness{t: t, kube: kube, ctx: context.Background()}
	h.create(readyNode("n1", "10.0.0.1"))
	startController(t, kube, routesAs(t, a, "fake-unknown-token-9999"), Config{ExternalIP: "203.0.113.10", Resync: time.Hour, RefusedRetry: time.Hour})
	h.create(lbService("default", "web", tcpPort("", 31020, 30080)))
	testenv.Eventually(t, 10*time.Second, "Unauthorized condition and Warning event", func() bool {
		c := meta.FindStatusCondition(h.service("default", "web").Status.Conditions, ConditionRoutes)
		return c != nil && c.Status == metav1.ConditionFalse && c.Reason == ReasonUnauthorized &&
			h.hasEvent("default", corev1.EventTypeWarning, ReasonUnauthorized)
	})
	if n := a.FSM.State().Len(); n != 0 {
		t.Fatalf("%d routes written with an unknown token", n)
	}
}

// When the token's scope was narrowed after the controller made a route,
// drawbridge refuses to remove it: the Service says so with a Warning
// Event and keeps its finalizer, and the route goes once the token allows
// it again.
func TestControllerKeepsTheFinalizerWhileRemovalIsRefused(t *testing.T) {
	a := scopedAPI(t)
	kube := newKube()
	h := &harness{t: t, kube: kube, ctx: context.Background()}
	h.create(readyNode("n1", "10.0.0.1"))
	c := startController(t, kube, routesAs(t, a, controllerSecret), Config{ExternalIP: "203.0.113.10", Resync: 200 * time.Millisecond, RefusedRetry: time.Hour})
	h.create(lbService("default", "old", tcpPort("", 31030, 30080)))
	testenv.Eventually(t, 10*time.Second, "routed", func() bool { _, ok := a.Route(31030); return ok })
	// Its status written, and a few resyncs later in the controller's
	// cache too: the fake clientset's status update replaces the whole
	// object (a real API server keeps the spec), so a status write from a
	// stale cache must not race the spec change below.
	testenv.Eventually(t, 10*time.Second, "finalizer and status", func() bool {
		s := h.service("default", "old")
		c := meta.FindStatusCondition(s.Status.Conditions, ConditionRoutes)
		return hasFinalizer(s) && c != nil && c.Status == metav1.ConditionTrue
	})
	n := c.Reconciled()
	testenv.Eventually(t, 10*time.Second, "three more resyncs", func() bool { return c.Reconciled() >= n+6 })

	if err := a.API.SetTokens(scopedTokens(t, "31000-31010")); err != nil {
		t.Fatal(err)
	}
	s := h.service("default", "old")
	s.Spec.Type = corev1.ServiceTypeNodePort
	s.Spec.LoadBalancerClass = nil
	h.updateService(s)
	testenv.Eventually(t, 10*time.Second, "Warning event: removal refused", func() bool {
		for _, e := range h.events("default") {
			if e.Type == corev1.EventTypeWarning && e.Reason == ReasonForbidden && strings.Contains(e.Message, "refused to remove") {
				return true
			}
		}
		return false
	})
	n = c.Reconciled()
	testenv.Eventually(t, 10*time.Second, "more attempts", func() bool { return c.Reconciled() >= n+3 })
	if _, ok := a.Route(31030); !ok || !hasFinalizer(h.service("default", "old")) {
		t.Fatal("the route or the finalizer went while drawbridge refused the removal")
	}

	if err := a.API.SetTokens(scopedTokens(t, "31000-31099")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 40*time.Second, "released once the token allows it", func() bool {
		_, ok := a.Route(31030)
		return !ok && !hasFinalizer(h.service("default", "old"))
	})
}

// On a token that sees other tokens' routes (an admin token), the
// controller warns once that it should run on a register token; on its
// register token it never does.
func TestControllerWarnsWhenItsTokenIsNotScoped(t *testing.T) {
	a := scopedAPI(t)
	ctx := context.Background()
	if err := routesAs(t, a, teamBSecret).PutRoute(ctx, route(31005, "team-b-app", "10.0.0.9:30000")); err != nil {
		t.Fatal(err)
	}
	if err := routesAs(t, a, controllerSecret).PutRoute(ctx, route(31006, "k8s.default_web_80", "10.0.0.1:30080")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, secret string
		warns        int
	}{{"k8s-controller", controllerSecret, 0}, {"ops", opsSecret, 1}} {
		logs := &testenv.Buffer{}
		kube := newKube()
		c, err := New(Config{}, Clients{Core: kube.CoreV1(), Discovery: kube.DiscoveryV1(), Coordination: kube.CoordinationV1()},
			routesAs(t, a, tc.secret), slog.New(slog.NewTextHandler(logs, nil)))
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			have, err := c.routes.ListRoutes(ctx)
			if err != nil {
				t.Fatal(err)
			}
			c.warnIfUnscoped(have)
		}
		if n := strings.Count(logs.String(), "is not a register token"); n != tc.warns {
			t.Errorf("token %s: %d warnings, want %d:\n%s", tc.name, n, tc.warns, logs)
		}
	}
}
