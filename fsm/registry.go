package fsm

import (
	"encoding/json"
	"reflect"
)

// commands is the one list of command types this build knows. Decode,
// Encode, CommandType.String, the private copy Apply validates and the
// dispatch of Apply all read it, so adding a command is: a payload type with
// Type and Validate (command.go), the State method that applies it
// (state.go), and one entry here. A type byte, once used, is never reused
// and never renumbered: it is part of the log format.
var commands = map[CommandType]commandSpec{
	// Version 2 of the route commands adds Scope and Route.Token (the
	// owner token); a version-1 entry has neither and applies as before.
	// Version 3 of the commands that carry a route adds Route.CheckPort
	// and Route.CheckMode: an older entry is read without them (see
	// withoutCheckFields), exactly as the build that wrote it applied it.
	CmdUpsertRoute: before(command("upsert-route", 3,
		func(c UpsertRoute) UpsertRoute { c.Route = c.Route.Clone(); return c },
		(*State).upsertRoute), 3, func(c *UpsertRoute) { c.Route = withoutCheckFields(c.Route) }),
	CmdDeleteRoute: command("delete-route", 2, nil,
		(*State).deleteRoute),
	CmdRegisterBackend: before(command("register-backend", 3,
		func(c RegisterBackend) RegisterBackend {
			if c.Create != nil {
				r := c.Create.Clone()
				c.Create = &r
			}
			return c
		},
		(*State).registerBackend), 3, func(c *RegisterBackend) {
		if c.Create != nil {
			r := withoutCheckFields(*c.Create)
			c.Create = &r
		}
	}),
	CmdDeregisterBackend: command("deregister-backend", 2, nil,
		(*State).deregisterBackend),
	// Version 2 adds Only: a version-1 entry (no Only) applies as before.
	CmdExpireLeases: command("expire-leases", 2,
		func(c ExpireLeases) ExpireLeases { c.Only = append([]LeaseRef(nil), c.Only...); return c },
		func(s *State, index uint64, c *ExpireLeases) (*State, Result) {
			return s.expireLeases(index, c.Now, c.Only)
		}),
	CmdReplaceTable: before(command("replace-table", 3,
		func(c ReplaceTable) ReplaceTable {
			routes := make([]Route, len(c.Routes))
			for i, r := range c.Routes {
				routes[i] = r.Clone()
			}
			c.Routes = routes
			return c
		},
		(*State).replaceTable), 3, func(c *ReplaceTable) {
		for i := range c.Routes {
			c.Routes[i] = withoutCheckFields(c.Routes[i])
		}
	}),
}

// commandSpec is everything the FSM knows about one command type.
type commandSpec struct {
	// name is the type's name in errors and logs ("upsert-route").
	name string
	// version is the payload version this build writes and the only one
	// it reads. Bump it whenever the same bytes would apply differently,
	// including when Validate accepts less or more (fsm/DESIGN.md,
	// "Validation inside Apply").
	version uint8
	// oldest is the oldest version this build still reads. Every version
	// from oldest to version decodes with the same decoder and applies with
	// today's rules, which is right only while the newer versions merely
	// add fields whose absence applies exactly as the older version did
	// (expire-leases 2 adds Only). A change to what existing fields mean
	// needs a decoder of its own per version instead.
	oldest uint8
	// decode parses a payload into a fresh command (not validated).
	decode func(payload []byte) (Command, error)
	// clone deep-copies c so Apply neither mutates its argument nor keeps
	// references into it; false when c is a nil pointer or not this type's
	// payload.
	clone func(c Command) (Command, bool)
	// apply computes the state after c (validated, private) as entry index.
	apply func(s *State, index uint64, c Command) (*State, Result)
	// legacy, when set, rewrites a freshly decoded payload of an older
	// version (below legacyBelow) into what that version meant: it drops
	// fields the older build did not know, so a forged or stray field in an
	// old entry never applies differently from how its writer applied it.
	legacy      func(c Command)
	legacyBelow uint8
}

// before registers fix to run on every payload of a version below v.
func before[C any, P interface {
	*C
	Command
}](spec commandSpec, v uint8, fix func(P)) commandSpec {
	spec.legacyBelow = v
	spec.legacy = func(c Command) {
		if p, ok := c.(P); ok && p != nil {
			fix(p)
		}
	}
	return spec
}

// withoutCheckFields is r as a build before version 3 of the route
// commands (and snapshot format 3) read it: no check port, TCP checks.
func withoutCheckFields(r Route) Route {
	r.CheckPort, r.CheckMode = 0, CheckModeTCP
	return r
}

// command builds a commandSpec for the payload type C, applied through P
// (*C). deepCopy copies what a shallow copy of C would share (slices,
// pointers); nil when a shallow copy is enough.
func command[C any, P interface {
	*C
	Command
}](name string, version uint8, deepCopy func(C) C, apply func(*State, uint64, P) (*State, Result)) commandSpec {
	return commandSpec{
		name:    name,
		version: version,
		oldest:  payloadVersion,
		decode: func(payload []byte) (Command, error) {
			p := P(new(C))
			if err := json.Unmarshal(payload, p); err != nil {
				return nil, err
			}
			return p, nil
		},
		clone: func(c Command) (Command, bool) {
			p, ok := c.(P)
			if !ok || p == nil {
				return nil, false
			}
			cp := *p
			if deepCopy != nil {
				cp = deepCopy(cp)
			}
			return P(&cp), true
		},
		apply: func(s *State, index uint64, c Command) (*State, Result) { return apply(s, index, c.(P)) },
	}
}

// lookup returns the spec of t, ignoring IgnoreUnknownFlag.
func lookup(t CommandType) (commandSpec, bool) {
	spec, ok := commands[t&^IgnoreUnknownFlag]
	return spec, ok
}

// cloneCommand deep-copies a command this build knows, so Apply neither
// mutates its argument nor keeps references into it.
func cloneCommand(c Command) (Command, error) {
	if c == nil {
		return nil, invalid("nil command")
	}
	if v := reflect.ValueOf(c); v.Kind() == reflect.Pointer && v.IsNil() {
		return nil, invalid("nil command")
	}
	spec, ok := lookup(c.Type())
	if !ok {
		return nil, &UnknownCommandError{Type: c.Type(), Version: payloadVersion}
	}
	cp, ok := spec.clone(c)
	if !ok {
		// A type byte of ours on a payload that is not: never decoded
		// from the log, so no node applies it.
		return nil, &UnknownCommandError{Type: c.Type(), Version: spec.version}
	}
	return cp, nil
}
