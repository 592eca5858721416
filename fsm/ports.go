package fsm

import (
	"slices"
	"strconv"
	"strings"
)

// PortRange is an inclusive range of TCP ports; First == Last for one port.
type PortRange struct {
	First int
	Last  int
}

// String renders "9000" or "10000-10100", the syntax ParsePortRanges reads.
func (r PortRange) String() string {
	if r.First == r.Last {
		return strconv.Itoa(r.First)
	}
	return strconv.Itoa(r.First) + "-" + strconv.Itoa(r.Last)
}

// PortRanges is a set of ports as sorted, non-overlapping, non-adjacent
// ranges (ParsePortRanges merges its input). The zero value is empty.
//
// It expresses port policy such as the reserved ports a route may not use
// (the node's own API, raft and gossip ports and a configured deny list).
// api/ checks it before proposing; Apply never does, because the nodes'
// configurations may differ and Apply must reach the same state everywhere.
type PortRanges []PortRange

// ParsePortRanges reads ports ("9000") and inclusive ranges ("10000-10100").
// An element may also hold a comma-separated list ("9000,9100-9200"), which is
// how a list arrives from one environment variable; blank items are skipped.
// The result is sorted and merged. Errors wrap ErrInvalid.
func ParsePortRanges(specs []string) (PortRanges, error) {
	var out PortRanges
	for _, spec := range specs {
		for item := range strings.SplitSeq(spec, ",") {
			item = strings.TrimSpace(item)
			if item == "" {
				continue
			}
			r, err := parsePortRange(item)
			if err != nil {
				return nil, err
			}
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b PortRange) int { return a.First - b.First })
	merged := out[:0]
	for _, r := range out {
		if n := len(merged); n > 0 && r.First <= merged[n-1].Last+1 {
			merged[n-1].Last = max(merged[n-1].Last, r.Last)
			continue
		}
		merged = append(merged, r)
	}
	return merged, nil
}

func parsePortRange(item string) (PortRange, error) {
	lo, hi, isRange := strings.Cut(item, "-")
	first, err := parsePortNumber(strings.TrimSpace(lo))
	if err != nil {
		return PortRange{}, invalid("port range %q: %v", truncate(item), err)
	}
	last := first
	if isRange {
		if last, err = parsePortNumber(strings.TrimSpace(hi)); err != nil {
			return PortRange{}, invalid("port range %q: %v", truncate(item), err)
		}
	}
	if first > last {
		return PortRange{}, invalid("port range %q: %d is above %d", truncate(item), first, last)
	}
	return PortRange{First: first, Last: last}, nil
}

// parsePortNumber accepts plain decimal digits only (no sign, no spaces).
func parsePortNumber(s string) (int, error) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" || len(s) > 5 {
		return 0, errNotAPort(s)
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, errNotAPort(s)
	}
	return n, nil
}

// errNotAPort is the detail ParsePortRanges wraps into ErrInvalid.
type errNotAPort string

// Error implements error.
func (e errNotAPort) Error() string {
	return strconv.Quote(truncate(string(e))) + " is not a port (1-65535)"
}

// Contains reports whether port falls in one of the ranges.
func (p PortRanges) Contains(port int) bool {
	_, found := slices.BinarySearchFunc(p, port, func(r PortRange, port int) int {
		switch {
		case r.Last < port:
			return -1
		case r.First > port:
			return +1
		}
		return 0
	})
	return found
}

// String renders the ranges comma-separated ("9000-9002,10000-10100"), which
// ParsePortRanges reads back. Empty ranges render as "".
func (p PortRanges) String() string {
	parts := make([]string, len(p))
	for i, r := range p {
		parts[i] = r.String()
	}
	return strings.Join(parts, ",")
}

// CheckPort refuses a port that is out of range or reserved, with an error
// wrapping ErrInvalid that names the reserved ports so the caller can pick
// another one.
func CheckPort(port int, reserved PortRanges) error {
	if err := ValidatePort("port", port); err != nil {
		return err
	}
	if reserved.Contains(port) {
		return invalid("port %d is reserved (reserved ports: %s)", port, reserved)
	}
	return nil
}
