package api_test

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/api"
	"github.com/drawbridge-lb/drawbridge/fsm"
)

const hookPath = "/hooks/update-haproxy"

// The recipe's own example: the UniFi controller's phone-home port.
var recipeAdd = hookBody(`"unifi-adoption"`, `8080`, `30808`, `"35.244.91.178"`, `"add"`)

func TestHookAdd(t *testing.T) {
	lease := fixedNow.Add(api.DefaultHookLease)
	tests := []struct {
		name string
		hdr  http.Header
		body string
	}{
		{"recipe payload, numbers, legacy header", legacy(testToken), recipeAdd},
		{"recipe payload, strings, legacy header", legacy(testToken),
			hookBody(`"unifi-adoption"`, `"8080"`, `"30808"`, `"35.244.91.178"`, `"add"`)},
		{"bearer token", bearer(testToken), recipeAdd},
		{"drawbridge header, second token", http.Header{"X-Drawbridge-Token": {otherToken}}, recipeAdd},
		{"unknown keys ignored", legacy(testToken),
			`{"name":"unifi-adoption","frontend-port":8080,"backend-port":30808,"dst-ip":"35.244.91.178","action":"add","extra":1}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			rec := e.do(http.MethodPost, hookPath, tc.hdr, tc.body)
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d, body %s", rec.Code, rec.Body)
			}
			got := decode[struct {
				Route fsm.Route `json:"route"`
			}](t, rec).Route
			want := fsm.NewRoute(8080, "unifi-adoption")
			want.Implicit = true
			want.Backends = []fsm.Backend{{Address: "35.244.91.178", Port: 30808, Owner: "unifi-adoption", ExpiresAt: lease, TTL: lease.Sub(fixedNow)}}
			assertRoute(t, got, want)
			// Answered after commit: the state already has it.
			if r, ok := e.fsm.State().Route(8080); !ok || len(r.Backends) != 1 {
				t.Fatalf("state after hook: %+v, %v", r, ok)
			}
		})
	}
}

func assertRoute(t *testing.T, got, want fsm.Route) {
	t.Helper()
	if got.Port != want.Port || got.Name != want.Name || got.Mode != want.Mode || got.Balance != want.Balance ||
		got.Sticky != want.Sticky || got.HealthCheck != want.HealthCheck || got.ProxyProtocol != want.ProxyProtocol ||
		got.Implicit != want.Implicit || len(got.Backends) != len(want.Backends) {
		t.Fatalf("route\n got %+v\nwant %+v", got, want)
	}
	for i := range want.Backends {
		g, w := got.Backends[i], want.Backends[i]
		if g.Address != w.Address || g.Port != w.Port || g.Owner != w.Owner || !g.ExpiresAt.Equal(w.ExpiresAt) || g.TTL != w.TTL {
			t.Fatalf("backend %d\n got %+v\nwant %+v", i, g, w)
		}
	}
}

func TestHookLeaseDisabled(t *testing.T) {
	e := newEnv(t, func(c *api.Config) { c.HookLease = 0 })
	rec := e.do(http.MethodPost, hookPath, legacy(testToken), recipeAdd)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d, body %s", rec.Code, rec.Body)
	}
	if strings.Contains(rec.Body.String(), "expires_at") {
		t.Fatalf("lease 0 must register without expiry: %s", rec.Body)
	}
}

func TestHookAuth(t *testing.T) {
	tests := []struct {
		name       string
		hdr        http.Header
		wantStatus int
		wantReason string
	}{
		{"no token", nil, http.StatusUnauthorized, "missing"},
		{"empty legacy header", http.Header{"X-Funkypenguin-Token": {""}}, http.StatusUnauthorized, "missing"},
		{"basic auth is not a token", http.Header{"Authorization": {"Basic dXNlcjpwYXNz"}}, http.StatusUnauthorized, "missing"},
		{"wrong legacy token", legacy("ilovecheese"), http.StatusForbidden, "invalid"},
		{"wrong bearer", bearer(testToken + "x"), http.StatusForbidden, "invalid"},
		{"prefix of the token", bearer(testToken[:5]), http.StatusForbidden, "invalid"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			rec := e.do(http.MethodPost, hookPath, tc.hdr, recipeAdd)
			if rec.Code != tc.wantStatus {
				t.Fatalf("status %d, want %d; body %s", rec.Code, tc.wantStatus, rec.Body)
			}
			if msg := errorMessage(t, rec); msg == "" {
				t.Fatal("no error message")
			}
			if tc.wantStatus == http.StatusUnauthorized && !strings.HasPrefix(rec.Header().Get("WWW-Authenticate"), "Bearer") {
				t.Fatalf("WWW-Authenticate %q", rec.Header().Get("WWW-Authenticate"))
			}
			if n := e.cluster.Calls(); n != 0 {
				t.Fatalf("applier called %d times for an unauthenticated request", n)
			}
			if e.fsm.State().Len() != 0 {
				t.Fatal("state changed")
			}
			metrics := e.do(http.MethodGet, "/metrics", bearer(testToken), "").Body.String()
			if want := `drawbridge_auth_failures_total{reason="` + tc.wantReason + `"} 1`; !strings.Contains(metrics, want) {
				t.Fatalf("metrics lack %s", want)
			}
		})
	}
}

func TestHookBadInput(t *testing.T) {
	const (
		name = `"unifi-adoption"`
		ip   = `"35.244.91.178"`
		add  = `"add"`
	)
	tests := []struct {
		name       string
		body       string
		wantStatus int
		wantMsg    string // substring of the error message
	}{
		{"frontend-port abc", hookBody(name, `"abc"`, `30808`, ip, add), 400, `frontend-port must be a whole number`},
		{"frontend-port 0", hookBody(name, `0`, `30808`, ip, add), 400, `frontend-port 0 is out of range`},
		{"frontend-port \"0\"", hookBody(name, `"0"`, `30808`, ip, add), 400, `frontend-port 0 is out of range`},
		{"frontend-port 70000", hookBody(name, `70000`, `30808`, ip, add), 400, `frontend-port 70000 is out of range`},
		{"frontend-port huge", hookBody(name, `99999999999999999999999`, `30808`, ip, add), 400, `frontend-port`},
		{"frontend-port 8080.5", hookBody(name, `8080.5`, `30808`, ip, add), 400, `frontend-port must be a whole number between 1 and 65535, got "8080.5"`},
		{"frontend-port 8e3", hookBody(name, `8e3`, `30808`, ip, add), 400, `frontend-port must be a whole number`},
		{"frontend-port -1", hookBody(name, `-1`, `30808`, ip, add), 400, `frontend-port must be a whole number between 1 and 65535, got "-1"`},
		{"frontend-port \" 8080\"", hookBody(name, `" 8080"`, `30808`, ip, add), 400, `frontend-port must be a whole number`},
		{"frontend-port true", hookBody(name, `true`, `30808`, ip, add), 400, `frontend-port must be a port number`},
		{"backend-port 65536", hookBody(name, `8080`, `65536`, ip, add), 400, `backend-port 65536 is out of range`},
		{"dst-ip hostname", hookBody(name, `8080`, `30808`, `"node1.example.com"`, add), 400, `dst-ip: address "node1.example.com" is not an IP address`},
		{"dst-ip trailing newline", hookBody(name, `8080`, `30808`, `"1.2.3.4\n"`, add), 400, `is not an IP address`},
		{"dst-ip with port", hookBody(name, `8080`, `30808`, `"1.2.3.4:80"`, add), 400, `is not an IP address`},
		{"dst-ip unspecified", hookBody(name, `8080`, `30808`, `"0.0.0.0"`, add), 400, `cannot be a backend`},
		{"dst-ip number", hookBody(name, `8080`, `30808`, `1234`, add), 400, `dst-ip must be a string`},
		{"name uppercase", hookBody(`"UniFi"`, `8080`, `30808`, ip, add), 400, `name "UniFi" must match`},
		{"name newline", hookBody(`"unifi\nbackend evil"`, `8080`, `30808`, ip, add), 400, `must match`},
		{"name template", hookBody(`"${x}"`, `8080`, `30808`, ip, add), 400, `name "${x}" must match`},
		{"unknown action", hookBody(name, `8080`, `30808`, ip, `"remove"`), 400, `action "remove" must be "add" or "delete"`},
		{"action uppercase", hookBody(name, `8080`, `30808`, ip, `"ADD"`), 400, `action "ADD" must be`},
		{"missing everything", `{}`, 400, `name is required; frontend-port is required; backend-port is required; dst-ip is required; action is required`},
		{"missing action", `{"name":"a","frontend-port":8080,"backend-port":30808,"dst-ip":"1.2.3.4"}`, 400, `action is required`},
		{"null port", hookBody(name, `null`, `30808`, ip, add), 400, `frontend-port is required`},
		{"trailing junk", recipeAdd + ` {"again": true}`, 400, `exactly one JSON object`},
		{"trailing garbage", recipeAdd + `x`, 400, `exactly one JSON object`},
		{"not JSON", `name=unifi&frontend-port=8080`, 400, `not valid JSON`},
		{"array", `[1,2]`, 400, `request body must be a JSON object`},
		{"truncated", `{"name": "a", `, 400, `truncated`},
		{"empty body", ``, 400, `request body is empty`},
		{"body over limit", `{"name":"a","pad":"` + strings.Repeat("x", 2048) + `"}`, 413, `larger than 1024 bytes`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, func(c *api.Config) { c.MaxBodyBytes = 1024 })
			rec := e.do(http.MethodPost, hookPath, legacy(testToken), tc.body)
			if rec.Code != tc.wantStatus {
				t.Fatalf("status %d, want %d; body %s", rec.Code, tc.wantStatus, rec.Body)
			}
			if msg := errorMessage(t, rec); !strings.Contains(msg, tc.wantMsg) {
				t.Fatalf("message %q does not contain %q", msg, tc.wantMsg)
			}
			if n := e.cluster.Calls(); n != 0 {
				t.Fatalf("invalid input reached the applier (%d calls)", n)
			}
		})
	}
}

func TestHookReservedPort(t *testing.T) {
	e := newEnv(t)
	rec := e.do(http.MethodPost, hookPath, legacy(testToken), hookBody(`"sneaky"`, `9001`, `30808`, `"10.0.0.1"`, `"add"`))
	if rec.Code != http.StatusBadRequest {
		t.Fatalf("status %d, body %s", rec.Code, rec.Body)
	}
	if msg := errorMessage(t, rec); !strings.Contains(msg, "port 9001 is reserved") {
		t.Fatalf("message %q", msg)
	}
	if e.cluster.Calls() != 0 {
		t.Fatal("reserved port was proposed")
	}
}

func TestHookConflict(t *testing.T) {
	e := newEnv(t)
	if rec := e.do(http.MethodPost, hookPath, legacy(testToken), recipeAdd); rec.Code != http.StatusOK {
		t.Fatalf("first add: %d %s", rec.Code, rec.Body)
	}
	rec := e.do(http.MethodPost, hookPath, legacy(testToken), hookBody(`"mining-pool"`, `8080`, `3333`, `"10.0.0.9"`, `"add"`))
	if rec.Code != http.StatusConflict {
		t.Fatalf("status %d, body %s", rec.Code, rec.Body)
	}
	if msg := errorMessage(t, rec); !strings.Contains(msg, `"unifi-adoption"`) {
		t.Fatalf("409 message %q does not name the owner", msg)
	}
	r, _ := e.fsm.State().Route(8080)
	if r.Name != "unifi-adoption" || len(r.Backends) != 1 {
		t.Fatalf("conflicting hook changed the route: %+v", r)
	}
}

func TestHookRefreshesLease(t *testing.T) {
	e := newEnv(t)
	for range 3 {
		if rec := e.do(http.MethodPost, hookPath, legacy(testToken), recipeAdd); rec.Code != http.StatusOK {
			t.Fatalf("add: %d %s", rec.Code, rec.Body)
		}
	}
	if n := e.fsm.State().BackendCount(); n != 1 {
		t.Fatalf("re-posting the same backend made %d backends", n)
	}
}

func TestHookApplierUnavailable(t *testing.T) {
	t.Run("no quorum", func(t *testing.T) {
		e := newEnv(t)
		e.cluster.fail(errNoQuorum)
		rec := e.do(http.MethodPost, hookPath, legacy(testToken), recipeAdd)
		if rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("status %d, body %s", rec.Code, rec.Body)
		}
		if msg := errorMessage(t, rec); !strings.Contains(msg, errNoQuorum.Error()) {
			t.Fatalf("message %q does not carry the applier's %q", msg, errNoQuorum)
		}
		if rec.Header().Get("Retry-After") == "" {
			t.Fatal("503 without Retry-After")
		}
	})
	t.Run("deadline", func(t *testing.T) {
		e := newEnv(t, func(c *api.Config) { c.ApplyTimeout = 50 * time.Millisecond })
		e.cluster.block = true
		rec := e.do(http.MethodPost, hookPath, legacy(testToken), recipeAdd)
		if rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("status %d, body %s", rec.Code, rec.Body)
		}
		if msg := errorMessage(t, rec); !strings.Contains(msg, "not confirmed within 50ms") || !strings.Contains(msg, "deadline exceeded") {
			t.Fatalf("message %q", msg)
		}
	})
}

func TestHookDelete(t *testing.T) {
	e := newEnv(t)
	add := func(ip string) {
		t.Helper()
		rec := e.do(http.MethodPost, hookPath, legacy(testToken), hookBody(`"unifi-adoption"`, `8080`, `30808`, `"`+ip+`"`, `"add"`))
		if rec.Code != http.StatusOK {
			t.Fatalf("add %s: %d %s", ip, rec.Code, rec.Body)
		}
	}
	type deleteAnswer struct {
		Route   *fsm.Route `json:"route"`
		Deleted bool       `json:"deleted"`
	}
	del := func(name, ip string, want int) *deleteAnswer {
		t.Helper()
		rec := e.do(http.MethodPost, hookPath, legacy(testToken), hookBody(`"`+name+`"`, `"8080"`, `"30808"`, `"`+ip+`"`, `"delete"`))
		if rec.Code != want {
			t.Fatalf("delete %s: status %d, want %d; body %s", ip, rec.Code, want, rec.Body)
		}
		if want != http.StatusOK {
			return nil
		}
		a := decode[deleteAnswer](t, rec)
		return &a
	}

	add("10.0.0.1")
	add("10.0.0.2")

	if a := del("mining-pool", "10.0.0.1", http.StatusConflict); a != nil {
		t.Fatal("unreachable")
	}
	a := del("unifi-adoption", "10.0.0.1", http.StatusOK)
	if a.Deleted || a.Route == nil || len(a.Route.Backends) != 1 || a.Route.Backends[0].Address != "10.0.0.2" {
		t.Fatalf("first delete: %+v", a)
	}
	if !strings.Contains(e.do(http.MethodPost, hookPath, legacy(testToken),
		hookBody(`"unifi-adoption"`, `8080`, `30808`, `"10.0.0.1"`, `"delete"`)).Body.String(), "not in route") {
		t.Fatal("deleting a gone backend should say it is not in the route")
	}
	a = del("unifi-adoption", "10.0.0.2", http.StatusOK)
	if !a.Deleted || a.Route != nil {
		t.Fatalf("last backend delete: %+v", a)
	}
	if e.fsm.State().Len() != 0 {
		t.Fatal("implicit route survived its last backend")
	}
	del("unifi-adoption", "10.0.0.2", http.StatusNotFound)
}

// The recipe lost acknowledged routes when hooks ran concurrently; here every
// 200 is committed and visible.
func TestHookConcurrentAdds(t *testing.T) {
	e := newEnv(t)
	const n = 50
	codes := make(chan int, n)
	for i := range n {
		go func() {
			body := hookBody(`"pool"`, `3333`, `"30000"`, `"10.0.1.`+strconv.Itoa(i+1)+`"`, `"add"`)
			codes <- e.do(http.MethodPost, hookPath, legacy(testToken), body).Code
		}()
	}
	for range n {
		if code := <-codes; code != http.StatusOK {
			t.Fatalf("concurrent add: %d", code)
		}
	}
	if r, _ := e.fsm.State().Route(3333); len(r.Backends) != n {
		t.Fatalf("%d backends after %d acknowledged adds", len(r.Backends), n)
	}
}
