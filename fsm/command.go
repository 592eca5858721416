package fsm

import (
	"encoding/json"
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
)

// IgnoreUnknownFlag is OR-ed into the type byte of a command that older nodes
// may skip safely when they do not know its type. Without the flag an unknown
// command is an error result (the node must be upgraded), never a crash.
const IgnoreUnknownFlag CommandType = 0x80

// payloadVersion is the version byte written after the type byte.
const payloadVersion = 1

func (t CommandType) String() string {
	switch t &^ IgnoreUnknownFlag {
	case CmdUpsertRoute:
		return "upsert-route"
	case CmdDeleteRoute:
		return "delete-route"
	case CmdRegisterBackend:
		return "register-backend"
	case CmdDeregisterBackend:
		return "deregister-backend"
	case CmdExpireLeases:
		return "expire-leases"
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
// ErrPortTaken unless Force is set.
type UpsertRoute struct {
	Route Route `json:"route"`
	Force bool  `json:"force,omitempty"`
}

// DeleteRoute removes the route at Port. When Name is set it must match.
type DeleteRoute struct {
	Port int    `json:"port"`
	Name string `json:"name,omitempty"`
}

// RegisterBackend adds or refreshes one backend of the route at Port. When the
// route does not exist and Create is set, it is created from Create (marked
// Implicit); otherwise ErrNotFound. When Name is set and the existing route has
// another name, the result is ErrPortTaken. Refreshing an existing backend
// updates its owner and lease.
type RegisterBackend struct {
	Port    int     `json:"port"`
	Name    string  `json:"name,omitempty"`
	Backend Backend `json:"backend"`
	Create  *Route  `json:"create,omitempty"`
}

// DeregisterBackend removes one backend (Address:BackendPort) from the route
// at Port. An Implicit route is removed with its last backend. When Name is
// set and the route has another name, the result is ErrPortTaken.
type DeregisterBackend struct {
	Port        int    `json:"port"`
	Name        string `json:"name,omitempty"`
	Address     string `json:"address"`
	BackendPort int    `json:"backend_port"`
}

// ExpireLeases removes every backend whose lease ended at or before Now. Now is
// stamped by the leader when it proposes the command; Apply never reads a clock.
type ExpireLeases struct {
	Now time.Time `json:"now"`
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

// Encode turns a command into a log entry: type byte, version byte, JSON.
func Encode(c Command) ([]byte, error) {
	payload, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", c.Type(), err)
	}
	out := make([]byte, 0, len(payload)+2)
	out = append(out, byte(c.Type()), payloadVersion)
	return append(out, payload...), nil
}
