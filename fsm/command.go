package fsm

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// CommandType is the first byte of every log entry drawbridge writes.
type CommandType uint8

// Command types. Values are part of the on-disk log format: never renumber.
const (
	CmdUpsertRoute       CommandType = 1
	CmdDeleteRoute       CommandType = 2
	CmdRegisterBackend   CommandType = 3
	CmdDeregisterBackend CommandType = 4
	CmdExpireLeases      CommandType = 5
	CmdReplaceTable      CommandType = 6
	// CmdBatch holds several of the others (batch.go).
	CmdBatch CommandType = 7
)

// IgnoreUnknownFlag is OR-ed into the type byte of a command that older nodes
// may skip safely when they do not know its type. Without the flag an unknown
// command is an error result (the node must be upgraded), never a crash.
const IgnoreUnknownFlag CommandType = 0x80

// payloadVersion is the first payload version of every command type (the
// version byte written after the type byte). Each type's current version is
// in its registry entry (registry.go).
const payloadVersion = 1

// String names the type for errors and logs ("upsert-route"), ignoring
// IgnoreUnknownFlag.
func (t CommandType) String() string {
	if spec, ok := lookup(t); ok {
		return spec.name
	}
	if t == CmdBatch {
		return "batch"
	}
	return fmt.Sprintf("command-%d", uint8(t))
}

// Command is implemented by every payload the route table accepts.
type Command interface {
	// Type is the command's type byte.
	Type() CommandType
	// Validate checks (and canonicalises) the payload before it is proposed.
	// Apply validates again, so a bad entry can never change state.
	Validate() error
}

// UpsertRoute creates or replaces the route at Route.Port. Replacing keeps
// nothing of the old route but its port; a different name owning the port is
// ErrPortTaken unless Force is set. The stored route is always explicit
// (Route.Implicit is ignored): it stays, even empty, until deleted.
type UpsertRoute struct {
	Route Route `json:"route"`
	Force bool  `json:"force,omitempty"`
	// Scope, when set, names the register token the command acts for: Apply
	// refuses (ErrForbidden) to change a route another token owns. The
	// leader checks it before proposing too; Apply makes it exact when two
	// writes race for one port.
	Scope string `json:"scope,omitempty"`
}

// DeleteRoute removes the route at Port. When Name is set it must match.
type DeleteRoute struct {
	Port int    `json:"port"`
	Name string `json:"name,omitempty"`
	// Scope: see UpsertRoute.Scope.
	Scope string `json:"scope,omitempty"`
}

// RegisterBackend adds or refreshes one backend of the route at Port. When the
// route does not exist and Create is set, it is created from Create (marked
// Implicit); otherwise ErrNotFound. When Name is set and the existing route has
// another name, the result is ErrPortTaken. Refreshing an existing backend
// replaces its owner and lease (ExpiresAt, TTL) with the registration's. Validate fills an empty Name from Create, so a
// registration that would create a route also claims its name when the route
// already exists.
type RegisterBackend struct {
	Port    int     `json:"port"`
	Name    string  `json:"name,omitempty"`
	Backend Backend `json:"backend"`
	Create  *Route  `json:"create,omitempty"`
	// Scope: see UpsertRoute.Scope.
	Scope string `json:"scope,omitempty"`
}

// DeregisterBackend removes one backend (Address:BackendPort) from the route
// at Port. An Implicit route is removed with its last backend. When Name is
// set and the route has another name, the result is ErrPortTaken.
type DeregisterBackend struct {
	Port        int    `json:"port"`
	Name        string `json:"name,omitempty"`
	Address     string `json:"address"`
	BackendPort int    `json:"backend_port"`
	// Scope: see UpsertRoute.Scope.
	Scope string `json:"scope,omitempty"`
}

// ExpireLeases removes every backend whose lease ended at or before Now. Now is
// stamped by the leader when it proposes the command; Apply never reads a clock.
// When Only is set, just those backends are removed (each only if its lease
// ended by Now): the leader gives each backend its own grace after an
// election, so one long lease never holds back the others.
type ExpireLeases struct {
	Now  time.Time  `json:"now"`
	Only []LeaseRef `json:"only,omitempty"`
}

// LeaseRef names one backend of one route.
type LeaseRef struct {
	Port        int    `json:"port"`
	Address     string `json:"address"`
	BackendPort int    `json:"backend_port"`
}

// Type implements Command.
func (UpsertRoute) Type() CommandType { return CmdUpsertRoute }

// Type implements Command.
func (DeleteRoute) Type() CommandType { return CmdDeleteRoute }

// Type implements Command.
func (RegisterBackend) Type() CommandType { return CmdRegisterBackend }

// Type implements Command.
func (DeregisterBackend) Type() CommandType { return CmdDeregisterBackend }

// Type implements Command.
func (ExpireLeases) Type() CommandType { return CmdExpireLeases }

// ReplaceTable swaps the whole route table for Routes: the restore half of
// `drawbridge snapshot save/restore`. It goes through the log like any other
// change, so every node ends with the same table.
type ReplaceTable struct {
	Routes []Route `json:"routes"`
}

// Type implements Command.
func (ReplaceTable) Type() CommandType { return CmdReplaceTable }

// Validate implements Command: every route valid, no port twice, no empty
// implicit route (the same rules a snapshot restore applies).
func (c *ReplaceTable) Validate() error {
	st, err := NewState(0, c.Routes)
	if err != nil {
		return err
	}
	c.Routes = st.Routes()
	return nil
}

// Encode turns a command into a log entry: type byte, version byte, JSON.
// It does not validate; callers validate before proposing, and Apply
// validates again. Decode reads it back.
func Encode(c Command) ([]byte, error) {
	payload, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", c.Type(), err)
	}
	version := uint8(payloadVersion)
	if spec, ok := lookup(c.Type()); ok {
		version = spec.version
	}
	out := make([]byte, 0, len(payload)+2)
	out = append(out, byte(c.Type()), version)
	return append(out, payload...), nil
}

// ErrMalformed means a log entry could not be decoded at all: too short, or a
// known type and version whose payload is not valid JSON for it. drawbridge
// never writes such an entry, so Apply treats it as corruption and panics.
var ErrMalformed = errors.New("malformed command")

// UnknownCommandError is returned by Decode (and carried in Result.Err) for an
// entry this node cannot interpret: a type or payload version written by a
// newer drawbridge. It matches ErrUnknownCommand with errors.Is.
type UnknownCommandError struct {
	// Type is the entry's type byte without IgnoreUnknownFlag.
	Type CommandType
	// Version is the entry's payload version byte.
	Version uint8
	// Ignorable reports whether the writer set IgnoreUnknownFlag, i.e. the
	// entry may be skipped without diverging on anything this node serves.
	Ignorable bool
}

// Error implements error.
func (e *UnknownCommandError) Error() string {
	what := fmt.Sprintf("type %d", uint8(e.Type))
	if known(e.Type) {
		what = fmt.Sprintf("%s version %d", e.Type, e.Version)
	}
	skip := "upgrade this node"
	if e.Ignorable {
		skip = "ignorable"
	}
	return fmt.Sprintf("%s: %s written by a newer drawbridge (%s)", ErrUnknownCommand, what, skip)
}

// Unwrap makes errors.Is(err, ErrUnknownCommand) true.
func (e *UnknownCommandError) Unwrap() error { return ErrUnknownCommand }

// known reports whether t (without the flag) is a type this build decodes.
func known(t CommandType) bool {
	_, ok := lookup(t)
	return ok
}

// Decode parses a log entry written by Encode. It returns the payload as a
// pointer (*UpsertRoute, *DeleteRoute, …) and does not validate it: Apply does.
//
// An unknown type or version yields an *UnknownCommandError; a truncated entry
// or unparsable payload an error wrapping ErrMalformed. Unknown JSON fields are
// accepted so a newer node may add optional fields without breaking older ones.
func Decode(data []byte) (Command, error) {
	if len(data) < 2 {
		return nil, fmt.Errorf("%w: entry of %d bytes, need type and version", ErrMalformed, len(data))
	}
	raw := CommandType(data[0])
	typ, version := raw&^IgnoreUnknownFlag, data[1]
	if typ == CmdBatch {
		// Apply splits batches; where one command belongs, a batch is
		// not one.
		return nil, fmt.Errorf("%w: a batch entry where one command belongs", ErrMalformed)
	}
	spec, ok := lookup(typ)
	if !ok || version < spec.oldest || version > spec.version {
		return nil, &UnknownCommandError{Type: typ, Version: version, Ignorable: raw&IgnoreUnknownFlag != 0}
	}
	c, err := spec.decode(data[2:])
	if err != nil {
		return nil, fmt.Errorf("%w: decode %s: %v", ErrMalformed, typ, err)
	}
	if spec.legacy != nil && version < spec.legacyBelow {
		spec.legacy(c)
	}
	return c, nil
}

// Validate implements Command. It checks the route and canonicalises it.
func (c *UpsertRoute) Validate() error {
	if err := validateScope(c.Scope); err != nil {
		return err
	}
	return c.Route.Validate()
}

// validateScope checks a command's Scope (a token name, or empty).
func validateScope(scope string) error {
	if scope == "" {
		return nil
	}
	return ValidateName("scope", scope)
}

// Validate implements Command.
func (c *DeleteRoute) Validate() error {
	if err := ValidatePort("port", c.Port); err != nil {
		return err
	}
	if err := validateScope(c.Scope); err != nil {
		return err
	}
	if c.Name != "" {
		return ValidateName("name", c.Name)
	}
	return nil
}

// Validate implements Command. It canonicalises the backend and Create, and
// fills an empty Name from Create.Name.
func (c *RegisterBackend) Validate() error {
	if err := ValidatePort("port", c.Port); err != nil {
		return err
	}
	if err := validateScope(c.Scope); err != nil {
		return err
	}
	if c.Name != "" {
		if err := ValidateName("name", c.Name); err != nil {
			return err
		}
	}
	if err := c.Backend.Validate(); err != nil {
		return err
	}
	if c.Create == nil {
		return nil
	}
	if err := c.Create.Validate(); err != nil {
		return fmt.Errorf("create: %w", err)
	}
	if c.Create.Port != c.Port {
		return invalid("create.port %d differs from port %d", c.Create.Port, c.Port)
	}
	if c.Name == "" {
		c.Name = c.Create.Name
	} else if c.Create.Name != c.Name {
		return invalid("create.name %q differs from name %q", c.Create.Name, c.Name)
	}
	return nil
}

// Validate implements Command. It canonicalises Address.
func (c *DeregisterBackend) Validate() error {
	if err := ValidatePort("port", c.Port); err != nil {
		return err
	}
	if err := validateScope(c.Scope); err != nil {
		return err
	}
	if c.Name != "" {
		if err := ValidateName("name", c.Name); err != nil {
			return err
		}
	}
	addr, err := CanonicalAddress(c.Address)
	if err != nil {
		return err
	}
	c.Address = addr
	return ValidatePort("backend port", c.BackendPort)
}

// Validate implements Command. Now must be set (the leader stamps it); it is
// stored in UTC.
func (c *ExpireLeases) Validate() error {
	if c.Now.IsZero() {
		return invalid("expire-leases needs a non-zero now")
	}
	c.Now = c.Now.UTC()
	for i := range c.Only {
		addr, err := CanonicalAddress(c.Only[i].Address)
		if err != nil {
			return err
		}
		c.Only[i].Address = addr
	}
	return nil
}

// Interface guards: every payload is a Command (through its pointer, since
// Validate canonicalises in place).
var (
	_ Command = (*UpsertRoute)(nil)
	_ Command = (*DeleteRoute)(nil)
	_ Command = (*RegisterBackend)(nil)
	_ Command = (*DeregisterBackend)(nil)
	_ Command = (*ExpireLeases)(nil)
	_ Command = (*ReplaceTable)(nil)
)
