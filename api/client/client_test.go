package client

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/drawbridge-lb/drawbridge/fsm"
	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

const testToken = "example-client-token-not-a-secret"

// recorder answers every request with status and body, and records what
// it received.
type recorder struct {
	srv    *httptest.Server
	mu     sync.Mutex
	got    []string // "METHOD /path?query body"
	status int
	body   string
}

func newRecorder(t *testing.T, status int, body string) *recorder {
	r := &recorder{status: status, body: body}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.got = append(r.got, req.Method+" "+req.URL.RequestURI()+" "+string(b))
		r.mu.Unlock()
		if req.Header.Get("Authorization") != "Bearer "+testToken {
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"error":"missing or invalid token"}`)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(r.status)
		io.WriteString(w, r.body)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *recorder) requests() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got...)
}

func newClient(t *testing.T, members ...string) *Client {
	t.Helper()
	c, err := New(Config{Members: members, Token: testToken})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestTypedCallsSendTheAPIRequests(t *testing.T) {
	ctx := context.Background()
	sticky := false
	tests := []struct {
		name string
		call func(c *Client) error
		want string
	}{
		{"list routes", func(c *Client) error { _, err := c.Routes(ctx); return err }, "GET /v1/routes "},
		{"list routes consistently", func(c *Client) error { _, err := c.Routes(ctx, Consistent()); return err },
			"GET /v1/routes?consistent=true "},
		{"get route", func(c *Client) error { _, err := c.Route(ctx, 25565); return err }, "GET /v1/routes/25565 "},
		{"put route", func(c *Client) error {
			_, err := c.PutRoute(ctx, 25565, RouteSpec{Name: "mc", Sticky: &sticky, Backends: []BackendSpec{{Address: "10.0.0.1", Port: 30565}}}, WaitApplied())
			return err
		}, `PUT /v1/routes/25565?wait=applied {"name":"mc","sticky":false,"backends":[{"address":"10.0.0.1","port":30565}]}`},
		{"delete route by name", func(c *Client) error { return c.DeleteRoute(ctx, 25565, "mc") },
			"DELETE /v1/routes/25565?name=mc "},
		{"register backend", func(c *Client) error {
			_, err := c.RegisterBackend(ctx, 8080, Registration{Address: "10.0.0.5", Port: 30808, TTL: "90s", Name: "web", Create: true})
			return err
		}, `POST /v1/routes/8080/backends {"address":"10.0.0.5","port":30808,"ttl":"90s","name":"web","create":true}`},
		{"deregister an IPv6 backend", func(c *Client) error {
			_, err := c.DeregisterBackend(ctx, 8080, "2001:db8::5", 30808, "web")
			return err
		}, "DELETE /v1/routes/8080/backends/%5B2001:db8::5%5D:30808?name=web "},
		{"cluster", func(c *Client) error { _, err := c.Cluster(ctx); return err }, "GET /v1/cluster "},
		{"status", func(c *Client) error { _, err := c.Status(ctx); return err }, "GET /v1/status "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder(t, http.StatusOK, `{}`)
			if err := tt.call(newClient(t, rec.srv.URL)); err != nil {
				t.Fatal(err)
			}
			if got := rec.requests(); len(got) != 1 || got[0] != tt.want {
				t.Errorf("requests %q, want [%q]", got, tt.want)
			}
		})
	}
}

func TestRouteDecodesTheAnswer(t *testing.T) {
	rec := newRecorder(t, http.StatusOK, `{"port":25565,"name":"mc","mode":"tcp","balance":"roundrobin","sticky":true,"health_check":true,"backends":[{"address":"10.0.0.1","port":30565}]}`)
	r, err := newClient(t, rec.srv.URL).Route(context.Background(), 25565)
	if err != nil {
		t.Fatal(err)
	}
	want := fsm.Route{Port: 25565, Name: "mc", Mode: "tcp", Balance: "roundrobin", Sticky: true, HealthCheck: true,
		Backends: []fsm.Backend{{Address: "10.0.0.1", Port: 30565}}}
	if a, b := mustJSON(t, r), mustJSON(t, want); a != b {
		t.Errorf("route %s, want %s", a, b)
	}
}

func mustJSON(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A member that fails (5xx, unreachable) passes the request on and the
// client stays with the member that answered; a refusal (409) is the answer.
func TestFailoverAndRefusal(t *testing.T) {
	downURL := testenv.DeadURL(t)
	failing := newRecorder(t, http.StatusServiceUnavailable, `{"error":"not committed: no leader"}`)
	good := newRecorder(t, http.StatusOK, `{"index":7,"routes":[]}`)
	c := newClient(t, downURL, failing.srv.URL, good.srv.URL)

	list, err := c.Routes(context.Background())
	if err != nil || list.Index != 7 {
		t.Fatalf("Routes = %+v, %v; want index 7 from the third member", list, err)
	}
	if c.Member() != good.srv.URL {
		t.Errorf("Member() = %s, want the member that answered (%s)", c.Member(), good.srv.URL)
	}
	if _, err := c.Routes(context.Background()); err != nil || len(failing.requests()) != 1 {
		t.Errorf("second call: %v, %d requests to the failing member; want it to start at the one that answered", err, len(failing.requests()))
	}

	conflict := newRecorder(t, http.StatusConflict, `{"error":"port taken: port 8080 belongs to route \"other\"","code":"port_taken"}`)
	spare := newRecorder(t, http.StatusOK, `{}`)
	c = newClient(t, conflict.srv.URL, spare.srv.URL)
	err = c.DeleteRoute(context.Background(), 8080, "mine")
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("err = %v, want an *Error", err)
	}
	if e.Status != http.StatusConflict || e.Retryable() || StatusOf(err) != http.StatusConflict || e.Code != CodePortTaken {
		t.Fatalf("err = %v (code %q), want a 409 *Error with code %s", err, e.Code, CodePortTaken)
	}
	if n := len(spare.requests()); n != 0 {
		t.Errorf("a 409 was sent on to another member (%d requests)", n)
	}
}

func TestEveryMemberFailedNamesEach(t *testing.T) {
	a := newRecorder(t, http.StatusServiceUnavailable, `{"error":"no leader"}`)
	b := newRecorder(t, http.StatusTooManyRequests, `{"error":"slow down"}`)
	c := newClient(t, a.srv.URL, b.srv.URL)
	err := c.Do(context.Background(), http.MethodGet, "/v1/routes", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "all 2 members failed") ||
		!strings.Contains(err.Error(), "no leader") || !strings.Contains(err.Error(), "slow down") {
		t.Fatalf("err = %v, want both members' reasons", err)
	}
	if StatusOf(err) != http.StatusServiceUnavailable {
		t.Errorf("StatusOf = %d, want the first member's 503", StatusOf(err))
	}
	if strings.Contains(err.Error(), testToken) {
		t.Error("the token is in the error")
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no members":           {Token: testToken},
		"no token":             {Members: []string{"http://127.0.0.1:9000"}},
		"member with userinfo": {Members: []string{"https://user:pw@edge-1:9000"}, Token: testToken},
		"member with query":    {Members: []string{"https://edge-1:9000/?x=1"}, Token: testToken},
		"unreadable CA file":   {Members: []string{"https://edge-1:9000"}, Token: testToken, CAFile: "/nonexistent/ca.pem"},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
	c, err := New(Config{Members: []string{"127.0.0.1:9000/"}, Token: testToken})
	if err != nil || c.Member() != "http://127.0.0.1:9000" {
		t.Errorf("a bare host:port member = %v, %v; want http://127.0.0.1:9000", c, err)
	}
}
