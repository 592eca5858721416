package agent

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestDebugPprofAddrMustBeLoopback(t *testing.T) {
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"", true},
		{"127.0.0.1:6060", true},
		{"127.0.0.2:0", true},
		{"[::1]:6060", true},
		{"0.0.0.0:6060", false},
		{":6060", false},
		{"[::]:6060", false},
		{"10.0.0.5:6060", false},
		{"203.0.113.7:6060", false},
		{"localhost:6060", false}, // a name may resolve anywhere
		{"127.0.0.1", false},
		{"127.0.0.1:70000", false},
	} {
		err := DebugConfig{PprofAddr: tc.addr}.check()
		if (err == nil) != tc.ok {
			t.Errorf("pprof_addr %q: err %v, want ok=%v", tc.addr, err, tc.ok)
		}
	}
}

func TestPprofHandlerHidesCmdlineAndCapsSeconds(t *testing.T) {
	h := pprofHandler()
	get := func(path string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec
	}
	if rec := get("/debug/pprof/cmdline"); rec.Code != http.StatusNotFound || strings.Contains(rec.Body.String(), "agent") {
		t.Errorf("cmdline: %d %q, want 404 without the command line", rec.Code, rec.Body.String())
	}
	for _, path := range []string{"/debug/pprof/profile?seconds=3600", "/debug/pprof/profile?seconds=0", "/debug/pprof/trace?seconds=x"} {
		if rec := get(path); rec.Code != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", path, rec.Code)
		}
	}
	if rec := get("/debug/pprof/heap?debug=1"); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "heap profile") {
		t.Errorf("heap: %d, want a heap profile", rec.Code)
	}
}
