package fsm

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

func checked(port int, mode string) Route {
	r := route(8080, "web", be("10.0.0.1", 30080))
	r.CheckPort, r.CheckMode = port, mode
	return r
}

func TestCheckFieldsValidate(t *testing.T) {
	tests := []struct {
		name string
		r    Route
		err  error
	}{
		{"unset", checked(0, ""), nil},
		{"port and http", checked(31000, CheckModeHTTP), nil},
		{"port only", checked(65535, ""), nil},
		{"http only", checked(0, CheckModeHTTP), nil},
		{"port negative", checked(-1, ""), ErrInvalid},
		{"port too big", checked(65536, ""), ErrInvalid},
		{"mode unknown", checked(31000, "https"), ErrInvalid},
		{"mode injection", checked(31000, "http\n    option external-check"), ErrInvalid},
		{"mode tcp spelled out", checked(0, "tcp"), ErrInvalid},
		{"without health_check", func() Route { r := checked(31000, CheckModeHTTP); r.HealthCheck = false; return r }(), ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &UpsertRoute{Route: tt.r}
			if err := c.Validate(); !errors.Is(err, tt.err) {
				t.Fatalf("Validate = %v, want %v", err, tt.err)
			}
			// Apply validates again: the same verdict from the log.
			f := New()
			res := applyLog(t, f, c)
			if !errors.Is(res.Err, tt.err) {
				t.Fatalf("Apply = %v, want %v", res.Err, tt.err)
			}
		})
	}
}

// The check fields travel through every command that carries a route and
// through snapshots, at the current versions.
func TestCheckFieldsRoundTrip(t *testing.T) {
	r := checked(31000, CheckModeHTTP)
	cmds := []Command{
		&UpsertRoute{Route: r},
		&RegisterBackend{Port: 8080, Backend: be("10.0.0.2", 30080), Create: &r},
		&ReplaceTable{Routes: []Route{r}},
	}
	for _, c := range cmds {
		data, err := Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		if data[1] != 3 {
			t.Errorf("%s written as version %d, want 3", c.Type(), data[1])
		}
		got, err := Decode(data)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, c) {
			t.Errorf("%s round trip:\n got %+v\nwant %+v", c.Type(), got, c)
		}
		f := New()
		mustApply(t, f, c)
		st, ok := f.State().Route(8080)
		if !ok || st.CheckPort != 31000 || st.CheckMode != CheckModeHTTP {
			t.Fatalf("%s applied: %+v", c.Type(), st)
		}
		var buf bytes.Buffer
		if err := WriteSnapshot(&buf, f.State()); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(buf.String(), `"format":3`) || !strings.Contains(buf.String(), `"check_port":31000,"check_mode":"http"`) {
			t.Fatalf("snapshot: %s", buf.String())
		}
		back, err := ReadSnapshot(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if back.Hash() != f.State().Hash() {
			t.Errorf("%s: snapshot round trip changed the table", c.Type())
		}
	}
	// A table that does not use the fields hashes as before: nothing of
	// them is encoded.
	var buf bytes.Buffer
	f := New()
	mustApply(t, f, &UpsertRoute{Route: route(8080, "web")})
	if err := WriteSnapshot(&buf, f.State()); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), "check_") {
		t.Errorf("unused check fields encoded: %s", buf.String())
	}
}

// An entry or snapshot of an older version replays exactly as the build
// that wrote it applied it: fields it did not know (forged or stray) are
// dropped, not applied, and the entry itself still applies.
func TestCheckFieldsInOlderVersionsReplayWithoutThem(t *testing.T) {
	r := checked(31000, CheckModeHTTP)
	bad := checked(31000, "nonsense") // an older build never looked at it
	for _, c := range []Command{
		&UpsertRoute{Route: r},
		&UpsertRoute{Route: bad},
		&RegisterBackend{Port: 8080, Backend: be("10.0.0.2", 30080), Create: &bad},
		&ReplaceTable{Routes: []Route{bad}},
	} {
		for _, v := range []byte{1, 2} {
			data, err := Encode(c)
			if err != nil {
				t.Fatal(err)
			}
			data[1] = v
			f := New()
			if res := applyLog(t, f, func() Command { d, err := Decode(data); must(t, err); return d }()); res.Err != nil {
				t.Fatalf("%s v%d: %v", c.Type(), v, res.Err)
			}
			st, ok := f.State().Route(8080)
			if !ok || st.CheckPort != 0 || st.CheckMode != "" {
				t.Errorf("%s v%d applied check fields: %+v", c.Type(), v, st)
			}
			// Through raft's entry point too.
			g := New()
			if res := applyRaw(t, g, data); res.Err != nil {
				t.Fatalf("%s v%d raw: %v", c.Type(), v, res.Err)
			}
			if g.State().Hash() != f.State().Hash() {
				t.Errorf("%s v%d: raw apply differs", c.Type(), v)
			}
		}
	}
	for _, format := range []int{1, 2} {
		snap := `{"format":` + string(rune('0'+format)) + `,"index":7,"routes":[{"port":8080,"name":"web","mode":"tcp","balance":"roundrobin","sticky":true,"health_check":true,"check_port":31000,"check_mode":"nonsense","backends":[]}]}` + "\n"
		st, err := ReadSnapshot(strings.NewReader(snap))
		if err != nil {
			t.Fatalf("format %d: %v", format, err)
		}
		got, _ := st.Route(8080)
		if got.CheckPort != 0 || got.CheckMode != "" {
			t.Errorf("format %d read check fields: %+v", format, got)
		}
	}
	// The same fields in a format-3 snapshot are validated, not dropped.
	snap := `{"format":3,"index":7,"routes":[{"port":8080,"name":"web","mode":"tcp","balance":"roundrobin","sticky":true,"health_check":true,"check_port":31000,"check_mode":"nonsense","backends":[]}]}` + "\n"
	if _, err := ReadSnapshot(strings.NewReader(snap)); !errors.Is(err, ErrInvalid) {
		t.Errorf("format 3 with a bad check_mode: %v, want ErrInvalid", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// applyRaw applies an entry's bytes as they would come from the log.
func applyRaw(t *testing.T, f *FSM, data []byte) Result {
	t.Helper()
	out := f.Apply(&raft.Log{Index: f.State().Index + 1, Type: raft.LogCommand, Data: data})
	res, ok := out.(Result)
	if !ok {
		t.Fatalf("Apply returned %T, want Result", out)
	}
	return res
}
