package api_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/fsm"
)

type routeList struct {
	Index  uint64      `json:"index"`
	Routes []fsm.Route `json:"routes"`
}

func TestListAndGetRoutes(t *testing.T) {
	e := newEnv(t)
	got := decode[routeList](t, e.must(http.StatusOK, http.MethodGet, "/v1/routes", ""))
	if got.Index != 0 || got.Routes == nil || len(got.Routes) != 0 {
		t.Fatalf("empty table: %+v (routes must be [], not null)", got)
	}

	e.must(http.StatusOK, http.MethodPut, "/v1/routes/8443", `{"name":"web"}`)
	e.must(http.StatusOK, http.MethodPut, "/v1/routes/3333", `{"name":"pool"}`)
	got = decode[routeList](t, e.must(http.StatusOK, http.MethodGet, "/v1/routes", ""))
	if got.Index != 2 || len(got.Routes) != 2 || got.Routes[0].Port != 3333 || got.Routes[1].Port != 8443 {
		t.Fatalf("list: %+v", got)
	}

	r := decode[fsm.Route](t, e.must(http.StatusOK, http.MethodGet, "/v1/routes/8443", ""))
	if r.Name != "web" {
		t.Fatalf("get: %+v", r)
	}
	rec := e.must(http.StatusNotFound, http.MethodGet, "/v1/routes/8444", "")
	if msg := errorMessage(t, rec); msg != "no route on port 8444" {
		t.Fatalf("404 message %q", msg)
	}
	for _, p := range []string{"abc", "0", "65536", "-1", "80.5"} {
		rec := e.must(http.StatusBadRequest, http.MethodGet, "/v1/routes/"+p, "")
		if msg := errorMessage(t, rec); !strings.Contains(msg, "port") {
			t.Fatalf("bad port %s: %q", p, msg)
		}
	}
}

func TestPutRoute(t *testing.T) {
	tests := []struct {
		name       string
		path       string
		body       string
		wantStatus int
		wantMsg    string
		want       func() fsm.Route
	}{
		{
			name: "defaults", path: "/v1/routes/8080", body: `{"name":"unifi"}`, wantStatus: 200,
			want: func() fsm.Route { return fsm.NewRoute(8080, "unifi") },
		},
		{
			name: "every option", path: "/v1/routes/8080",
			body: `{"port":8080,"name":"unifi","balance":"leastconn","sticky":false,"proxy_protocol":"v2","health_check":false,
			        "backends":[{"address":"10.0.0.9","port":30808},{"address":"::ffff:10.0.0.2","port":30808,"owner":"node-b"}]}`,
			wantStatus: 200,
			want: func() fsm.Route {
				r := fsm.NewRoute(8080, "unifi")
				r.Balance, r.Sticky, r.ProxyProtocol, r.HealthCheck = "leastconn", false, "v2", false
				// Canonicalised and sorted by the FSM: 10.0.0.2 before 10.0.0.9.
				r.Backends = []fsm.Backend{{Address: "10.0.0.2", Port: 30808, Owner: "node-b"}, {Address: "10.0.0.9", Port: 30808}}
				return r
			},
		},
		{
			name: "check port and http check", path: "/v1/routes/8080",
			body:       `{"name":"svc","check_port":31500,"check_mode":"http","backends":[{"address":"10.0.0.9","port":30808}]}`,
			wantStatus: 200,
			want: func() fsm.Route {
				r := fsm.NewRoute(8080, "svc")
				r.CheckPort, r.CheckMode = 31500, fsm.CheckModeHTTP
				r.Backends = []fsm.Backend{{Address: "10.0.0.9", Port: 30808}}
				return r
			},
		},
		{name: "check port zero", path: "/v1/routes/8080", body: `{"name":"x","check_port":0}`, wantStatus: 200,
			want: func() fsm.Route { return fsm.NewRoute(8080, "x") }},
		{name: "check port too big", path: "/v1/routes/8080", body: `{"name":"x","check_port":65536}`, wantStatus: 400, wantMsg: "check_port 65536 out of range"},
		{name: "check port negative", path: "/v1/routes/8080", body: `{"name":"x","check_port":-1}`, wantStatus: 400, wantMsg: "check_port -1 out of range"},
		{name: "check port string", path: "/v1/routes/8080", body: `{"name":"x","check_port":"31500"}`, wantStatus: 400, wantMsg: `"check_port"`},
		{name: "check port float", path: "/v1/routes/8080", body: `{"name":"x","check_port":31500.5}`, wantStatus: 400, wantMsg: `"check_port" must be a whole number`},
		{name: "check mode unknown", path: "/v1/routes/8080", body: `{"name":"x","check_mode":"https"}`, wantStatus: 400, wantMsg: "check_mode"},
		{name: "check mode injection", path: "/v1/routes/8080", body: `{"name":"x","check_mode":"http\n    option external-check"}`, wantStatus: 400, wantMsg: "check_mode"},
		{name: "check mode without checks", path: "/v1/routes/8080", body: `{"name":"x","health_check":false,"check_mode":"http"}`, wantStatus: 400, wantMsg: "need health_check on"},
		{name: "port mismatch", path: "/v1/routes/8080", body: `{"port":8081,"name":"x"}`, wantStatus: 400, wantMsg: "port 8081 in the body differs from port 8080"},
		{name: "missing name", path: "/v1/routes/8080", body: `{"balance":"source"}`, wantStatus: 400, wantMsg: "name is required"},
		{name: "bad name", path: "/v1/routes/8080", body: `{"name":"a b"}`, wantStatus: 400, wantMsg: `name "a b" must match`},
		{name: "bad balance", path: "/v1/routes/8080", body: `{"name":"x","balance":"static-rr\n"}`, wantStatus: 400, wantMsg: "balance"},
		{name: "bad proxy protocol", path: "/v1/routes/8080", body: `{"name":"x","proxy_protocol":"v3"}`, wantStatus: 400, wantMsg: "proxy_protocol"},
		{name: "unknown field", path: "/v1/routes/8080", body: `{"name":"x","helth_check":false}`, wantStatus: 400, wantMsg: `unknown field "helth_check"`},
		{name: "wrong type", path: "/v1/routes/8080", body: `{"name":"x","sticky":"yes"}`, wantStatus: 400, wantMsg: `"sticky" must be true or false, got string`},
		{name: "float backend port", path: "/v1/routes/8080", body: `{"name":"x","backends":[{"address":"10.0.0.1","port":80.5}]}`, wantStatus: 400, wantMsg: `"backends.port" must be a whole number`},
		{name: "backend hostname", path: "/v1/routes/8080", body: `{"name":"x","backends":[{"address":"db.internal","port":80}]}`, wantStatus: 400, wantMsg: "not an IP address"},
		{name: "backend without address", path: "/v1/routes/8080", body: `{"name":"x","backends":[{"port":80}]}`, wantStatus: 400, wantMsg: "backends[0]: address is required"},
		{name: "duplicate backend", path: "/v1/routes/8080", body: `{"name":"x","backends":[{"address":"10.0.0.1","port":80},{"address":"10.0.0.1","port":80}]}`, wantStatus: 400, wantMsg: "listed twice"},
		{name: "reserved port", path: "/v1/routes/9000", body: `{"name":"x"}`, wantStatus: 400, wantMsg: "port 9000 is reserved"},
		{name: "path port junk", path: "/v1/routes/80a", body: `{"name":"x"}`, wantStatus: 400, wantMsg: "port must be a whole number"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			rec := e.must(tc.wantStatus, http.MethodPut, tc.path, tc.body)
			if tc.want == nil {
				if msg := errorMessage(t, rec); !strings.Contains(msg, tc.wantMsg) {
					t.Fatalf("message %q does not contain %q", msg, tc.wantMsg)
				}
				if e.cluster.Calls() != 0 {
					t.Fatal("invalid PUT reached the applier")
				}
				return
			}
			assertRoute(t, decode[fsm.Route](t, rec), tc.want())
		})
	}
}

func TestPutRouteConflictAndForce(t *testing.T) {
	e := newEnv(t)
	e.must(http.StatusOK, http.MethodPut, "/v1/routes/8080", `{"name":"unifi","backends":[{"address":"10.0.0.1","port":1}]}`)
	rec := e.must(http.StatusConflict, http.MethodPut, "/v1/routes/8080", `{"name":"other"}`)
	if msg := errorMessage(t, rec); !strings.Contains(msg, `"unifi"`) {
		t.Fatalf("409 message %q does not name the owner", msg)
	}
	r := decode[fsm.Route](t, e.must(http.StatusOK, http.MethodPut, "/v1/routes/8080", `{"name":"other","force":true}`))
	if r.Name != "other" || len(r.Backends) != 0 {
		t.Fatalf("forced upsert: %+v", r)
	}
}

func TestDeleteRoute(t *testing.T) {
	e := newEnv(t)
	e.must(http.StatusOK, http.MethodPut, "/v1/routes/8080", `{"name":"unifi"}`)
	e.must(http.StatusBadRequest, http.MethodDelete, "/v1/routes/8080?name=Not%20Valid", "")
	e.must(http.StatusConflict, http.MethodDelete, "/v1/routes/8080?name=other", "")
	got := decode[struct {
		Deleted bool `json:"deleted"`
		Port    int  `json:"port"`
	}](t, e.must(http.StatusOK, http.MethodDelete, "/v1/routes/8080?name=unifi", ""))
	if !got.Deleted || got.Port != 8080 {
		t.Fatalf("delete answer %+v", got)
	}
	e.must(http.StatusNotFound, http.MethodDelete, "/v1/routes/8080", "")
	e.must(http.StatusNotFound, http.MethodGet, "/v1/routes/8080", "")
}

func TestRegisterBackend(t *testing.T) {
	tests := []struct {
		name       string
		setup      string // PUT body for /v1/routes/8080, "" for none
		body       string
		wantStatus int
		wantMsg    string
		want       func() fsm.Route
	}{
		{
			name: "ttl as duration string", setup: `{"name":"web"}`,
			body: `{"address":"10.0.0.5","port":30000,"owner":"node-a","ttl":"90s"}`, wantStatus: 200,
			want: func() fsm.Route {
				r := fsm.NewRoute(8080, "web")
				r.Backends = []fsm.Backend{{Address: "10.0.0.5", Port: 30000, Owner: "node-a", ExpiresAt: fixedNow.Add(90 * time.Second), TTL: 90 * time.Second}}
				return r
			},
		},
		{
			name: "ttl as seconds", setup: `{"name":"web"}`,
			body: `{"address":"10.0.0.5","port":30000,"ttl":120}`, wantStatus: 200,
			want: func() fsm.Route {
				r := fsm.NewRoute(8080, "web")
				r.Backends = []fsm.Backend{{Address: "10.0.0.5", Port: 30000, ExpiresAt: fixedNow.Add(120 * time.Second), TTL: 120 * time.Second}}
				return r
			},
		},
		{
			name: "no ttl, no lease", setup: `{"name":"web"}`,
			body: `{"address":"10.0.0.5","port":30000,"ttl":0}`, wantStatus: 200,
			want: func() fsm.Route {
				r := fsm.NewRoute(8080, "web")
				r.Backends = []fsm.Backend{{Address: "10.0.0.5", Port: 30000}}
				return r
			},
		},
		{
			name:       "create with options, IPv6",
			body:       `{"address":"2001:DB8::5","port":30000,"name":"game","create":true,"balance":"source","sticky":false,"proxy_protocol":"v1","health_check":false}`,
			wantStatus: 200,
			want: func() fsm.Route {
				r := fsm.NewRoute(8080, "game")
				r.Implicit = true
				r.Balance, r.Sticky, r.ProxyProtocol, r.HealthCheck = "source", false, "v1", false
				r.Backends = []fsm.Backend{{Address: "2001:db8::5", Port: 30000}}
				return r
			},
		},
		{name: "missing route", body: `{"address":"10.0.0.5","port":30000}`, wantStatus: 404, wantMsg: "no route on port 8080"},
		{name: "name mismatch", setup: `{"name":"web"}`, body: `{"address":"10.0.0.5","port":30000,"name":"other"}`, wantStatus: 409, wantMsg: `"web"`},
		{name: "create without name", body: `{"address":"10.0.0.5","port":30000,"create":true}`, wantStatus: 400, wantMsg: "name is required when create is true"},
		{name: "options without create", setup: `{"name":"web"}`, body: `{"address":"10.0.0.5","port":30000,"balance":"source"}`, wantStatus: 400, wantMsg: "only apply with create"},
		{name: "missing address", body: `{"port":30000}`, wantStatus: 400, wantMsg: "address is required"},
		{name: "missing port", body: `{"address":"10.0.0.5"}`, wantStatus: 400, wantMsg: "port is required"},
		{name: "negative ttl", body: `{"address":"10.0.0.5","port":30000,"ttl":-1}`, wantStatus: 400, wantMsg: "ttl must not be negative"},
		{name: "negative ttl string", body: `{"address":"10.0.0.5","port":30000,"ttl":"-5m"}`, wantStatus: 400, wantMsg: "ttl must not be negative"},
		{name: "bad ttl", body: `{"address":"10.0.0.5","port":30000,"ttl":"soon"}`, wantStatus: 400, wantMsg: `ttl must be a duration such as "90s" or a number of seconds, got "soon"`},
		{name: "huge ttl", body: `{"address":"10.0.0.5","port":30000,"ttl":"100000h"}`, wantStatus: 400, wantMsg: "ttl must be at most"},
		{name: "ttl object", body: `{"address":"10.0.0.5","port":30000,"ttl":{}}`, wantStatus: 400, wantMsg: "ttl must be a duration"},
		{name: "bad owner", body: `{"address":"10.0.0.5","port":30000,"owner":"Node A"}`, wantStatus: 400, wantMsg: `owner "Node A" must match`},
		{name: "reserved port", body: `{"address":"10.0.0.5","port":30000}`, wantStatus: 400, wantMsg: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			path := "/v1/routes/8080/backends"
			if tc.name == "reserved port" {
				path = "/v1/routes/9002/backends"
				tc.wantMsg = "port 9002 is reserved"
			}
			if tc.setup != "" {
				e.must(http.StatusOK, http.MethodPut, "/v1/routes/8080", tc.setup)
			}
			calls := e.cluster.Calls()
			rec := e.must(tc.wantStatus, http.MethodPost, path, tc.body)
			if tc.want == nil {
				if msg := errorMessage(t, rec); !strings.Contains(msg, tc.wantMsg) {
					t.Fatalf("message %q does not contain %q", msg, tc.wantMsg)
				}
				if tc.wantStatus == http.StatusBadRequest && e.cluster.Calls() != calls {
					t.Fatal("invalid registration reached the applier")
				}
				return
			}
			assertRoute(t, decode[fsm.Route](t, rec), tc.want())
		})
	}
}

func TestDeregisterBackend(t *testing.T) {
	type answer struct {
		Port         int        `json:"port"`
		Backend      string     `json:"backend"`
		Route        *fsm.Route `json:"route"`
		RouteDeleted bool       `json:"route_deleted"`
	}
	e := newEnv(t)
	e.must(http.StatusOK, http.MethodPost, "/v1/routes/8080/backends", `{"address":"2001:db8::5","port":30000,"name":"game","create":true}`)
	e.must(http.StatusOK, http.MethodPost, "/v1/routes/8080/backends", `{"address":"10.0.0.5","port":30000,"name":"game"}`)

	tests := []struct {
		name       string
		path       string
		wantStatus int
		check      func(t *testing.T, a answer)
	}{
		{name: "not ip:port", path: "/v1/routes/8080/backends/10.0.0.5", wantStatus: 400},
		{name: "hostname", path: "/v1/routes/8080/backends/db:30000", wantStatus: 400},
		{name: "unbracketed v6", path: "/v1/routes/8080/backends/2001:db8::5:30000", wantStatus: 400},
		{name: "wrong name", path: "/v1/routes/8080/backends/10.0.0.5:30000?name=web", wantStatus: 409},
		{name: "unknown backend", path: "/v1/routes/8080/backends/10.0.0.6:30000", wantStatus: 404},
		{name: "unknown route", path: "/v1/routes/8081/backends/10.0.0.5:30000", wantStatus: 404},
		{
			name: "v4", path: "/v1/routes/8080/backends/10.0.0.5:30000?name=game", wantStatus: 200,
			check: func(t *testing.T, a answer) {
				if a.RouteDeleted || a.Route == nil || len(a.Route.Backends) != 1 || a.Backend != "10.0.0.5:30000" {
					t.Fatalf("answer %+v", a)
				}
			},
		},
		{
			name: "v6 percent-encoded brackets, last backend of an implicit route", path: "/v1/routes/8080/backends/%5B2001:db8::5%5D:30000", wantStatus: 200,
			check: func(t *testing.T, a answer) {
				if !a.RouteDeleted || a.Route != nil || a.Backend != "[2001:db8::5]:30000" || a.Port != 8080 {
					t.Fatalf("answer %+v", a)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := e.must(tc.wantStatus, http.MethodDelete, tc.path, "")
			if tc.check != nil {
				tc.check(t, decode[answer](t, rec))
			} else if errorMessage(t, rec) == "" {
				t.Fatal("error without message")
			}
		})
	}
	if e.fsm.State().Len() != 0 {
		t.Fatal("route left behind")
	}
}

func TestDeregisterBackendRawV6Brackets(t *testing.T) {
	e := newEnv(t)
	e.must(http.StatusOK, http.MethodPut, "/v1/routes/8080", `{"name":"web","backends":[{"address":"2001:db8::7","port":443}]}`)
	// Literal brackets, as curl -g sends them.
	req, _ := http.NewRequest(http.MethodDelete, "http://x/v1/routes/8080/backends/[2001:db8::7]:443", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	rec := httptest.NewRecorder()
	e.handler.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d, body %s", rec.Code, rec.Body)
	}
	// An explicit route stays when its last backend goes.
	if r, ok := e.fsm.State().Route(8080); !ok || len(r.Backends) != 0 {
		t.Fatalf("route after delete: %+v %v", r, ok)
	}
}

func TestGetRouteShowsCheckFields(t *testing.T) {
	e := newEnv(t)
	e.must(200, http.MethodPut, "/v1/routes/8080", `{"name":"svc","check_port":31500,"check_mode":"http"}`)
	for _, path := range []string{"/v1/routes/8080", "/v1/routes"} {
		rec := e.must(200, http.MethodGet, path, "")
		if body := rec.Body.String(); !strings.Contains(body, `"check_port":31500,"check_mode":"http"`) {
			t.Errorf("GET %s does not show the check fields: %s", path, body)
		}
	}
}
