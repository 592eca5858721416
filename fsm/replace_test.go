package fsm

import (
	"errors"
	"testing"
)

func TestReplaceTable(t *testing.T) {
	f := New()
	mustApply(t, f,
		&UpsertRoute{Route: route(8080, "web", be("10.0.0.1", 80))},
		&UpsertRoute{Route: route(8443, "tls", be("10.0.0.2", 443))},
	)
	res := applyLog(t, f, &ReplaceTable{Routes: []Route{
		route(9000, "other", be("10.0.0.3", 9000)),
		route(3333, "stratum", be("10.0.0.4", 3333), be("10.0.0.5", 3333)),
	}})
	if res.Err != nil {
		t.Fatalf("replace: %v", res.Err)
	}
	if res.Index == 0 {
		t.Error("result carries no index")
	}
	st := f.State()
	if st.Len() != 2 || st.BackendCount() != 3 {
		t.Fatalf("after replace: %d routes, %d backends", st.Len(), st.BackendCount())
	}
	if _, ok := st.Route(8080); ok {
		t.Error("old route survived the replace")
	}
	if got := st.Routes(); got[0].Port != 3333 || got[1].Port != 9000 {
		t.Errorf("routes not sorted by port: %d, %d", got[0].Port, got[1].Port)
	}
	testSnapshotRestore(t, f)

	// An invalid table is refused whole and changes nothing.
	before := f.State().Hash()
	for name, routes := range map[string][]Route{
		"duplicate port":    {route(1000, "a"), route(1000, "b")},
		"invalid name":      {route(1001, "Bad Name")},
		"empty implicit":    {implicit(route(1002, "gone"))},
		"duplicate backend": {route(1003, "dup", be("10.0.0.1", 1), be("10.0.0.1", 1))},
	} {
		res := applyLog(t, f, &ReplaceTable{Routes: routes})
		if !errors.Is(res.Err, ErrInvalid) {
			t.Errorf("%s: want ErrInvalid, got %v", name, res.Err)
		}
		if f.State().Hash() != before {
			t.Errorf("%s: state changed", name)
		}
	}

	// An empty table is a valid replace: it clears everything.
	if res := applyLog(t, f, &ReplaceTable{}); res.Err != nil || f.State().Len() != 0 {
		t.Fatalf("clear: %v, %d routes left", res.Err, f.State().Len())
	}
}

func TestReplaceTableEncodeDecode(t *testing.T) {
	c := &ReplaceTable{Routes: []Route{route(8080, "web", be("10.0.0.1", 80))}}
	data, err := Encode(c)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	rt, ok := got.(*ReplaceTable)
	if !ok || len(rt.Routes) != 1 || rt.Routes[0].Name != "web" || got.Type() != CmdReplaceTable {
		t.Fatalf("round trip: %#v", got)
	}
}
