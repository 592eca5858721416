package fsm

import (
	"errors"
	"strings"
	"testing"
)

// Every registry entry decodes to the payload of its own type byte, names
// itself, and round-trips through Encode and Decode; a copy from its clone
// is a different value of the same type.
func TestRegistryEntriesAgreeWithTheirTypes(t *testing.T) {
	if len(commands) != 6 {
		t.Errorf("registry holds %d command types; update this test with the new type's cases", len(commands))
	}
	seen := map[string]bool{}
	for typ, spec := range commands {
		t.Run(spec.name, func(t *testing.T) {
			if typ&IgnoreUnknownFlag != 0 {
				t.Fatalf("type %d carries IgnoreUnknownFlag in the registry", uint8(typ))
			}
			if spec.name == "" || strings.HasPrefix(typ.String(), "command-") || seen[spec.name] {
				t.Fatalf("type %d: name %q missing or taken twice", uint8(typ), spec.name)
			}
			seen[spec.name] = true
			c, err := spec.decode([]byte(`{}`))
			if err != nil {
				t.Fatal(err)
			}
			if c.Type() != typ {
				t.Fatalf("decoding type %d gives a %T of type %d", uint8(typ), c, uint8(c.Type()))
			}
			data, err := Encode(c)
			if err != nil {
				t.Fatal(err)
			}
			if data[0] != byte(typ) || data[1] != spec.version {
				t.Fatalf("header %x, want type %d version %d", data[:2], uint8(typ), spec.version)
			}
			back, err := Decode(data)
			if err != nil || back.Type() != typ {
				t.Fatalf("Decode(Encode) = %T, %v", back, err)
			}
			cp, ok := spec.clone(c)
			if !ok || cp == c || cp.Type() != typ {
				t.Fatalf("clone = %p (%v), original %p", cp, ok, c)
			}
		})
	}
}

// A payload claiming a registered type byte it does not belong to is not
// applied as that type.
func TestCloneRefusesAPayloadUnderAnotherTypeByte(t *testing.T) {
	_, err := cloneCommand(impostor{})
	if !errors.Is(err, ErrUnknownCommand) {
		t.Errorf("err = %v, want ErrUnknownCommand", err)
	}
	if res := New().ApplyCommand(1, impostor{}); !errors.Is(res.Err, ErrUnknownCommand) {
		t.Errorf("ApplyCommand: err = %v, want ErrUnknownCommand", res.Err)
	}
}

type impostor struct{}

func (impostor) Type() CommandType { return CmdUpsertRoute }
func (impostor) Validate() error   { return nil }

// A newer version of a known type is refused by Decode with a message that
// names the type, replace-table included.
func TestDecodeNamesANewerVersionOfEveryType(t *testing.T) {
	for typ, spec := range commands {
		_, err := Decode([]byte{byte(typ), spec.version + 1, '{', '}'})
		var u *UnknownCommandError
		if !errors.As(err, &u) || !strings.Contains(err.Error(), spec.name) {
			t.Errorf("%s version %d: err = %v, want an UnknownCommandError naming it", spec.name, spec.version+1, err)
		}
	}
}
