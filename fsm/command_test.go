package fsm

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	upsert := func(mut func(r *Route)) Command {
		r := route(8080, "web", be("10.0.0.1", 30080))
		mut(&r)
		return &UpsertRoute{Route: r}
	}
	withBackend := func(b Backend) Command { return upsert(func(r *Route) { r.Backends = []Backend{b} }) }
	many := func(n int) []Backend {
		out := make([]Backend, n)
		for i := range out {
			out[i] = be(fmt.Sprintf("10.0.%d.%d", i/250, i%250+1), 80)
		}
		return out
	}
	cet := time.FixedZone("CET", 3600)

	tests := []struct {
		name string
		cmd  Command
		err  error   // nil: must validate
		want Command // canonical form, when checked
	}{
		// UpsertRoute: names.
		{"upsert ok", upsert(func(*Route) {}), nil, nil},
		{"name 63 chars", upsert(func(r *Route) { r.Name = strings.Repeat("a", 63) }), nil, nil},
		{"name with . _ -", upsert(func(r *Route) { r.Name = "0web.v2_a-b" }), nil, nil},
		{"name empty", upsert(func(r *Route) { r.Name = "" }), ErrInvalid, nil},
		{"name 64 chars", upsert(func(r *Route) { r.Name = strings.Repeat("a", 64) }), ErrInvalid, nil},
		{"name uppercase", upsert(func(r *Route) { r.Name = "Web" }), ErrInvalid, nil},
		{"name unicode", upsert(func(r *Route) { r.Name = "wéb" }), ErrInvalid, nil},
		{"name trailing newline", upsert(func(r *Route) { r.Name = "web\n" }), ErrInvalid, nil},
		{"name embedded newline", upsert(func(r *Route) { r.Name = "web\nbind :22" }), ErrInvalid, nil},
		{"name hash", upsert(func(r *Route) { r.Name = "web#x" }), ErrInvalid, nil},
		{"name env expansion", upsert(func(r *Route) { r.Name = "${x}" }), ErrInvalid, nil},
		{"name space", upsert(func(r *Route) { r.Name = "web x" }), ErrInvalid, nil},
		{"name leading dash", upsert(func(r *Route) { r.Name = "-web" }), ErrInvalid, nil},
		{"name leading dot", upsert(func(r *Route) { r.Name = ".web" }), ErrInvalid, nil},
		// Ports.
		{"port 1", upsert(func(r *Route) { r.Port = 1 }), nil, nil},
		{"port 65535", upsert(func(r *Route) { r.Port = 65535 }), nil, nil},
		{"port 0", upsert(func(r *Route) { r.Port = 0 }), ErrInvalid, nil},
		{"port 65536", upsert(func(r *Route) { r.Port = 65536 }), ErrInvalid, nil},
		{"port -1", upsert(func(r *Route) { r.Port = -1 }), ErrInvalid, nil},
		{"backend port 0", withBackend(be("10.0.0.1", 0)), ErrInvalid, nil},
		{"backend port 65536", withBackend(be("10.0.0.1", 65536)), ErrInvalid, nil},
		{"backend port -1", withBackend(be("10.0.0.1", -1)), ErrInvalid, nil},
		// Enumerations.
		{"mode http", upsert(func(r *Route) { r.Mode = "http" }), ErrInvalid, nil},
		{"mode empty", upsert(func(r *Route) { r.Mode = "" }), ErrInvalid, nil},
		{"balance leastconn", upsert(func(r *Route) { r.Balance = BalanceLeastConn }), nil, nil},
		{"balance unknown", upsert(func(r *Route) { r.Balance = "rr" }), ErrInvalid, nil},
		{"balance injected", upsert(func(r *Route) { r.Balance = "roundrobin\n  server x 1.2.3.4:22" }), ErrInvalid, nil},
		{"proxy v2", upsert(func(r *Route) { r.ProxyProtocol = ProxyProtocolV2 }), nil, nil},
		{"proxy v3", upsert(func(r *Route) { r.ProxyProtocol = "v3" }), ErrInvalid, nil},
		// Addresses.
		{"hostname", withBackend(be("example.com", 80)), ErrInvalid, nil},
		{"address newline", withBackend(be("1.2.3.4\n", 80)), ErrInvalid, nil},
		{"address with port", withBackend(be("1.2.3.4:80", 80)), ErrInvalid, nil},
		{"address leading space", withBackend(be(" 1.2.3.4", 80)), ErrInvalid, nil},
		{"address empty", withBackend(be("", 80)), ErrInvalid, nil},
		{"address zone", withBackend(be("fe80::1%eth0", 80)), ErrInvalid, nil},
		{"unspecified v4", withBackend(be("0.0.0.0", 80)), ErrInvalid, nil},
		{"unspecified v6", withBackend(be("::", 80)), ErrInvalid, nil},
		{"unspecified mapped", withBackend(be("::ffff:0.0.0.0", 80)), ErrInvalid, nil},
		{"multicast v4", withBackend(be("224.0.0.1", 80)), ErrInvalid, nil},
		{"multicast v6", withBackend(be("ff02::1", 80)), ErrInvalid, nil},
		{"negative ttl", withBackend(Backend{Address: "10.0.0.1", Port: 80, TTL: -time.Second}), ErrInvalid, nil},
		{"ttl kept", withBackend(Backend{Address: "10.0.0.1", Port: 80, TTL: time.Minute}), nil,
			&UpsertRoute{Route: route(8080, "web", Backend{Address: "10.0.0.1", Port: 80, TTL: time.Minute})}},
		{"owner invalid", withBackend(Backend{Address: "10.0.0.1", Port: 80, Owner: "Pod 1"}), ErrInvalid, nil},
		{"ipv4-mapped canonicalised", withBackend(be("::ffff:10.0.0.1", 80)), nil,
			&UpsertRoute{Route: route(8080, "web", be("10.0.0.1", 80))}},
		{"ipv6 lower-cased and compressed", withBackend(be("2001:DB8:0:0::1", 80)), nil,
			&UpsertRoute{Route: route(8080, "web", be("2001:db8::1", 80))}},
		{"lease stored in UTC", withBackend(leased("10.0.0.1", 80, "pod-1", t0.In(cet))), nil,
			&UpsertRoute{Route: route(8080, "web", leased("10.0.0.1", 80, "pod-1", t0))}},
		{"backends sorted", upsert(func(r *Route) {
			r.Backends = []Backend{be("2001:db8::1", 80), be("10.0.0.10", 80), be("10.0.0.9", 81), be("10.0.0.9", 80)}
		}), nil, &UpsertRoute{Route: route(8080, "web",
			be("10.0.0.9", 80), be("10.0.0.9", 81), be("10.0.0.10", 80), be("2001:db8::1", 80))}},
		{"nil backends made empty", upsert(func(r *Route) { r.Backends = nil }), nil,
			&UpsertRoute{Route: route(8080, "web")}},
		{"duplicate backend", upsert(func(r *Route) { r.Backends = []Backend{be("10.0.0.1", 80), be("10.0.0.1", 80)} }), ErrInvalid, nil},
		{"duplicate after canonicalisation", upsert(func(r *Route) {
			r.Backends = []Backend{be("10.0.0.1", 80), be("::ffff:10.0.0.1", 80)}
		}), ErrInvalid, nil},
		{"same address other port", upsert(func(r *Route) { r.Backends = []Backend{be("10.0.0.1", 80), be("10.0.0.1", 81)} }), nil, nil},
		{"256 backends", upsert(func(r *Route) { r.Backends = many(256) }), nil, nil},
		{"257 backends", upsert(func(r *Route) { r.Backends = many(257) }), ErrInvalid, nil},

		// DeleteRoute.
		{"delete ok", &DeleteRoute{Port: 8080}, nil, nil},
		{"delete with name", &DeleteRoute{Port: 8080, Name: "web"}, nil, nil},
		{"delete port 0", &DeleteRoute{Port: 0}, ErrInvalid, nil},
		{"delete port 65536", &DeleteRoute{Port: 65536}, ErrInvalid, nil},
		{"delete bad name", &DeleteRoute{Port: 8080, Name: "Web"}, ErrInvalid, nil},

		// RegisterBackend.
		{"register ok", &RegisterBackend{Port: 8080, Backend: be("10.0.0.1", 80)}, nil, nil},
		{"register port -1", &RegisterBackend{Port: -1, Backend: be("10.0.0.1", 80)}, ErrInvalid, nil},
		{"register bad name", &RegisterBackend{Port: 8080, Name: "a#b", Backend: be("10.0.0.1", 80)}, ErrInvalid, nil},
		{"register hostname", &RegisterBackend{Port: 8080, Backend: be("db.local", 80)}, ErrInvalid, nil},
		{"register backend port 0", &RegisterBackend{Port: 8080, Backend: be("10.0.0.1", 0)}, ErrInvalid, nil},
		{"register mapped address", &RegisterBackend{Port: 8080, Backend: be("::ffff:10.0.0.1", 80)}, nil,
			&RegisterBackend{Port: 8080, Backend: be("10.0.0.1", 80)}},
		{"register create", &RegisterBackend{Port: 8080, Name: "web", Backend: be("10.0.0.1", 80), Create: ptr(route(8080, "web"))}, nil, nil},
		{"register create fills name", &RegisterBackend{Port: 8080, Backend: be("10.0.0.1", 80), Create: ptr(route(8080, "web"))}, nil,
			&RegisterBackend{Port: 8080, Name: "web", Backend: be("10.0.0.1", 80), Create: ptr(route(8080, "web"))}},
		{"register create other port", &RegisterBackend{Port: 8080, Backend: be("10.0.0.1", 80), Create: ptr(route(8081, "web"))}, ErrInvalid, nil},
		{"register create other name", &RegisterBackend{Port: 8080, Name: "web", Backend: be("10.0.0.1", 80), Create: ptr(route(8080, "api"))}, ErrInvalid, nil},
		{"register create invalid", &RegisterBackend{Port: 8080, Backend: be("10.0.0.1", 80), Create: ptr(Route{Port: 8080, Name: "web"})}, ErrInvalid, nil},

		// DeregisterBackend.
		{"deregister ok", &DeregisterBackend{Port: 8080, Address: "10.0.0.1", BackendPort: 80}, nil, nil},
		{"deregister canonicalised", &DeregisterBackend{Port: 8080, Name: "web", Address: "::FFFF:10.0.0.1", BackendPort: 80}, nil,
			&DeregisterBackend{Port: 8080, Name: "web", Address: "10.0.0.1", BackendPort: 80}},
		{"deregister port 0", &DeregisterBackend{Port: 0, Address: "10.0.0.1", BackendPort: 80}, ErrInvalid, nil},
		{"deregister bad name", &DeregisterBackend{Port: 8080, Name: "${x}", Address: "10.0.0.1", BackendPort: 80}, ErrInvalid, nil},
		{"deregister hostname", &DeregisterBackend{Port: 8080, Address: "localhost", BackendPort: 80}, ErrInvalid, nil},
		{"deregister backend port 65536", &DeregisterBackend{Port: 8080, Address: "10.0.0.1", BackendPort: 65536}, ErrInvalid, nil},

		// ExpireLeases.
		{"expire ok", &ExpireLeases{Now: t0}, nil, nil},
		{"expire zero now", &ExpireLeases{}, ErrInvalid, nil},
		{"expire now in UTC", &ExpireLeases{Now: t0.In(cet)}, nil, &ExpireLeases{Now: t0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cmd.Validate()
			switch {
			case tt.err == nil && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tt.err != nil && !errors.Is(err, tt.err):
				t.Fatalf("Validate() = %v, want %v", err, tt.err)
			}
			if tt.want != nil && !reflect.DeepEqual(tt.cmd, tt.want) {
				t.Errorf("canonical form:\n got %+v\nwant %+v", tt.cmd, tt.want)
			}
			if err == nil {
				// Validation is idempotent on the canonical form.
				before := fmt.Sprintf("%+v", tt.cmd)
				if err := tt.cmd.Validate(); err != nil {
					t.Fatalf("second Validate() = %v", err)
				}
				if after := fmt.Sprintf("%+v", tt.cmd); after != before {
					t.Errorf("second Validate changed %s to %s", before, after)
				}
			}
		})
	}
}

func TestBackendKey(t *testing.T) {
	tests := []struct {
		name string
		b    Backend
		want string
	}{
		{"v4", be("10.0.0.1", 80), "10.0.0.1:80"},
		{"v6", be("2001:db8::1", 443), "[2001:db8::1]:443"},
		{"unvalidated hostname does not panic", be("example.com", 80), "example.com:80"},
		{"empty", be("", 0), ":0"},
		{"port out of range", be("10.0.0.1", 70000), "10.0.0.1:70000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.b.Key(); got != tt.want {
				t.Errorf("Key() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestCompareBackends(t *testing.T) {
	tests := []struct {
		name string
		a, b Backend
		want int
	}{
		{"numeric not textual", be("10.0.0.9", 80), be("10.0.0.10", 80), -1},
		{"v4 before v6", be("255.255.255.255", 80), be("::1", 80), -1},
		{"port breaks tie", be("10.0.0.1", 81), be("10.0.0.1", 80), +1},
		{"equal ignores owner and lease", be("10.0.0.1", 80), leased("10.0.0.1", 80, "x", t0), 0},
		{"invalid after valid", be("zzz", 80), be("::1", 80), +1},
		{"invalid by text", be("a", 80), be("b", 80), -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CompareBackends(tt.a, tt.b); got != tt.want {
				t.Errorf("CompareBackends = %d, want %d", got, tt.want)
			}
			if got := CompareBackends(tt.b, tt.a); got != -tt.want {
				t.Errorf("reversed CompareBackends = %d, want %d", got, -tt.want)
			}
		})
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	full := route(8080, "web", leased("10.0.0.1", 80, "pod-1", t0.Add(time.Minute)), be("2001:db8::1", 81))
	full.Balance, full.ProxyProtocol, full.Sticky, full.HealthCheck = BalanceSource, ProxyProtocolV1, false, false
	tests := []struct {
		name string
		cmd  Command
	}{
		{"upsert", &UpsertRoute{Route: full, Force: true}},
		{"delete", &DeleteRoute{Port: 8080, Name: "web"}},
		{"register", &RegisterBackend{Port: 8080, Name: "web", Backend: Backend{Address: "10.0.0.2", Port: 80, Owner: "pod-2", ExpiresAt: t0, TTL: 90 * time.Second}, Create: &full}},
		{"register without create", &RegisterBackend{Port: 8080, Backend: be("10.0.0.2", 80)}},
		{"deregister", &DeregisterBackend{Port: 8080, Name: "web", Address: "10.0.0.1", BackendPort: 80}},
		{"expire", &ExpireLeases{Now: t0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := Encode(tt.cmd)
			if err != nil {
				t.Fatal(err)
			}
			spec, _ := lookup(tt.cmd.Type())
			if CommandType(data[0]) != tt.cmd.Type() || data[1] != spec.version {
				t.Fatalf("header = %x, want type %d version %d", data[:2], tt.cmd.Type(), spec.version)
			}
			// An entry an older drawbridge wrote (version 1, without the
			// fields later versions added) still decodes.
			old := append([]byte(nil), data...)
			old[1] = payloadVersion
			if _, err := Decode(old); err != nil {
				t.Errorf("version 1 entry: %v", err)
			}
			got, err := Decode(data)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(got, tt.cmd) {
				t.Errorf("round trip:\n got %+v\nwant %+v", got, tt.cmd)
			}
			// The ignorable flag on a known type changes nothing.
			data[0] |= byte(IgnoreUnknownFlag)
			if got, err := Decode(data); err != nil || !reflect.DeepEqual(got, tt.cmd) {
				t.Errorf("with flag: %+v, %v", got, err)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name    string
		data    []byte
		unknown *UnknownCommandError // want this *UnknownCommandError
		err     error                // else want this sentinel
	}{
		{"unknown type", []byte{99, 1, '{', '}'}, &UnknownCommandError{Type: 99, Version: 1}, nil},
		{"unknown type ignorable", []byte{99 | 0x80, 1, '{', '}'}, &UnknownCommandError{Type: 99, Version: 1, Ignorable: true}, nil},
		{"type zero", []byte{0, 1, '{', '}'}, &UnknownCommandError{Type: 0, Version: 1}, nil},
		{"unknown version", []byte{byte(CmdUpsertRoute), 4, '{', '}'}, &UnknownCommandError{Type: CmdUpsertRoute, Version: 4}, nil},
		{"version zero", []byte{byte(CmdUpsertRoute), 0, '{', '}'}, &UnknownCommandError{Type: CmdUpsertRoute, Version: 0}, nil},
		{"unknown version ignorable", []byte{byte(CmdDeleteRoute) | 0x80, 7, 'x'}, &UnknownCommandError{Type: CmdDeleteRoute, Version: 7, Ignorable: true}, nil},
		{"empty", nil, nil, ErrMalformed},
		{"type only", []byte{1}, nil, ErrMalformed},
		{"no payload", []byte{1, 1}, nil, ErrMalformed},
		{"garbage payload", []byte{1, 1, 0xff, 0xfe}, nil, ErrMalformed},
		{"wrong field type", []byte("\x02\x01{\"port\":\"80\"}"), nil, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Decode(tt.data)
			if c != nil {
				t.Errorf("Decode returned command %+v", c)
			}
			if tt.unknown != nil {
				var u *UnknownCommandError
				if !errors.As(err, &u) || *u != *tt.unknown {
					t.Fatalf("Decode err = %#v, want %#v", err, tt.unknown)
				}
				if !errors.Is(err, ErrUnknownCommand) || errors.Is(err, ErrMalformed) {
					t.Errorf("err %v should match ErrUnknownCommand only", err)
				}
				return
			}
			if !errors.Is(err, tt.err) || errors.Is(err, ErrUnknownCommand) {
				t.Errorf("Decode err = %v, want %v", err, tt.err)
			}
		})
	}
}

func TestDecodeAllowsUnknownFields(t *testing.T) {
	c, err := Decode([]byte("\x02\x01{\"port\":80,\"name\":\"web\",\"added_in_v2\":{\"x\":1}}"))
	if err != nil {
		t.Fatal(err)
	}
	if want := (&DeleteRoute{Port: 80, Name: "web"}); !reflect.DeepEqual(c, want) {
		t.Errorf("got %+v, want %+v", c, want)
	}
}

func TestUnknownCommandErrorMessage(t *testing.T) {
	tests := []struct {
		err  *UnknownCommandError
		want string
	}{
		{&UnknownCommandError{Type: 42, Version: 1}, "unknown command: type 42 written by a newer drawbridge (upgrade this node)"},
		{&UnknownCommandError{Type: CmdUpsertRoute, Version: 3, Ignorable: true}, "unknown command: upsert-route version 3 written by a newer drawbridge (ignorable)"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
}
