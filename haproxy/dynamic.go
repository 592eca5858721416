package haproxy

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Reload-free routes: a port range (Settings.DynamicPorts) is pre-bound by
// one frontend that looks the destination port up in a map file and hands
// the connection to the backend the map names. The backends are a pool of
// pre-rendered slots, each of one class (balance algorithm and stickiness,
// the settings HAProxy cannot change on a running backend). A route in the
// range owns one slot; its servers are added and removed through the runtime
// API (`add server`, `del server`) and its port is published with
// `add map` / `del map`. So adding, removing or changing a route in the
// range never reloads, and an old worker never outlives a route change.
//
// Options that live on the server line (health checks and their port, PROXY
// protocol) and the kind of check (HTTP checks have slots of their own) are
// changed by moving the route to another free slot of its class: the new
// slot is filled, the map is pointed at it, then the old slot is emptied.
// When no slot of the needed class is free, the change falls back to a
// reload, and every full render leaves headroom in each class in use.
//
// The runtime API's state is never the only copy: the manager keeps the
// layout (port -> slot) it built, and renders it into haproxy.cfg and the
// map file in the background, so a reload, a restart or an adoption starts
// from exactly what the running worker serves.

// PortRange is an inclusive range of TCP ports. The zero value is empty.
type PortRange struct {
	First int `json:"first"`
	Last  int `json:"last"`
}

// MaxDynamicPorts bounds the size of the dynamic range: every port of it is
// a listening socket (one descriptor) in every worker.
const MaxDynamicPorts = 16384

// ParsePortRange parses "FIRST-LAST" (or one port). "" is the empty range.
func ParsePortRange(s string) (PortRange, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return PortRange{}, nil
	}
	a, b, found := strings.Cut(s, "-")
	if !found {
		b = a
	}
	first, err1 := strconv.Atoi(strings.TrimSpace(a))
	last, err2 := strconv.Atoi(strings.TrimSpace(b))
	if err1 != nil || err2 != nil {
		return PortRange{}, fmt.Errorf("port range %q: want FIRST-LAST, e.g. 30000-32767", s)
	}
	r := PortRange{First: first, Last: last}
	return r, r.Validate()
}

// Validate reports whether r is empty or a usable range.
func (r PortRange) Validate() error {
	if r.Empty() {
		return nil
	}
	switch {
	case r.First < 1 || r.Last > 65535 || r.First > r.Last:
		return fmt.Errorf("port range %d-%d: ports must be 1-65535, first <= last", r.First, r.Last)
	case r.Last-r.First+1 > MaxDynamicPorts:
		return fmt.Errorf("port range %d-%d: at most %d ports (each is a listening socket in every worker)", r.First, r.Last, MaxDynamicPorts)
	}
	return nil
}

// Empty reports whether r holds no port.
func (r PortRange) Empty() bool { return r.First == 0 && r.Last == 0 }

// Contains reports whether port is in r.
func (r PortRange) Contains(port int) bool { return !r.Empty() && port >= r.First && port <= r.Last }

// Size is the number of ports in r.
func (r PortRange) Size() int {
	if r.Empty() {
		return 0
	}
	return r.Last - r.First + 1
}

func (r PortRange) String() string {
	if r.Empty() {
		return ""
	}
	return strconv.Itoa(r.First) + "-" + strconv.Itoa(r.Last)
}

// Slot headroom: how many free slots a full render leaves per class. The
// default class (roundrobin, sticky: what the webhook creates) keeps at
// least minFreeDefault free, every other class in use minFreeInUse, each at
// least a quarter of its use; an idle class keeps a few so its first route
// needs no reload either. An empty slot costs about 12 kB in every worker
// (measured on 2.6.12 with its stick table), so 256 spare slots are about
// 3 MB.
const (
	minFreeDefault = 256
	minFreeInUse   = 32
	minFreeIdle    = 2
)

// slotClass is what a slot cannot change at run time: the balance
// algorithm, the stick table, and whether its checks are HTTP (`option
// httpchk` is a backend setting; `add server ... check` on a backend
// without it checks by TCP connect).
type slotClass struct {
	balance string
	sticky  bool
	httpchk bool
}

func classOf(fe Frontend) slotClass {
	b := fe.Balance
	if b == "" {
		b = "roundrobin"
	}
	return slotClass{balance: b, sticky: fe.Sticky, httpchk: fe.HealthCheck && fe.CheckHTTP}
}

// key names the class in slot names and in the saved layout. Classes
// without HTTP checks keep the names they had before HTTP checks existed.
func (c slotClass) key() string {
	k := c.balance
	if c.sticky {
		k += "_sticky"
	}
	if c.httpchk {
		k += "_httpchk"
	}
	return k
}

// allClasses lists every class in a fixed order.
func allClasses() []slotClass {
	var out []slotClass
	for _, h := range []bool{false, true} {
		for _, b := range []string{"roundrobin", "leastconn", "source", "first", "random"} {
			out = append(out, slotClass{b, true, h}, slotClass{b, false, h})
		}
	}
	return out
}

func slotName(c slotClass, n int) string { return "dyn_" + c.key() + "_" + strconv.Itoa(n) }

// layout is which slot each dynamic port uses, and how many slots of each
// class the configuration renders. It is the part of the running state the
// route table does not determine.
type layout struct {
	// Range and Key identify the settings the layout was built for: a
	// layout from other settings is never used for runtime changes.
	Range PortRange      `json:"range"`
	Key   string         `json:"settings"`
	Pool  map[string]int `json:"pool"`  // class key -> slots rendered
	Ports map[int]int    `json:"ports"` // port -> slot number in its route's class
	// Holes are ports of the range that could not be bound when the
	// configuration was rendered (another process held them).
	Holes []int `json:"holes,omitempty"`
}

func (l *layout) clone() *layout {
	c := *l
	c.Pool = make(map[string]int, len(l.Pool))
	for k, v := range l.Pool {
		c.Pool[k] = v
	}
	c.Ports = make(map[int]int, len(l.Ports))
	for k, v := range l.Ports {
		c.Ports[k] = v
	}
	c.Holes = slices.Clone(l.Holes)
	return &c
}

// settingsKey fingerprints the settings that shape rendered slots and
// servers: a saved layout is reused only under the same ones.
func settingsKey(s Settings) string {
	return fmt.Sprintf("%s|%s|%s|%s", s.DynamicPorts, s.MapFile, s.BindAddress, formatDuration(s.CheckInterval))
}

// headroom is how many free slots a full render leaves in class c with used
// slots in use.
func headroom(c slotClass, used int) int {
	switch {
	case c == slotClass{"roundrobin", true, false}:
		return max(minFreeDefault, used/4)
	case used == 0:
		return minFreeIdle
	}
	return max(minFreeInUse, used/4)
}

// compactLayout assigns the dynamic frontends of fes (sorted by port, each
// valid) to slots 0..n-1 of their class, in port order, with headroom.
func compactLayout(s Settings, dyn []Frontend, holes []int) *layout {
	l := &layout{Range: s.DynamicPorts, Key: settingsKey(s), Pool: map[string]int{}, Ports: map[int]int{}, Holes: holes}
	used := map[slotClass]int{}
	for _, fe := range dyn {
		c := classOf(fe)
		l.Ports[fe.Port] = used[c]
		used[c]++
	}
	for _, c := range allClasses() {
		l.Pool[c.key()] = used[c] + headroom(c, used[c])
	}
	return l
}

// bindRanges renders the bind addresses of the dynamic frontend: the range
// minus its holes, as "host:a-b" parts joined by commas ("" when nothing is
// left).
func bindRanges(bindHost string, r PortRange, holes []int) string {
	var parts []string
	start := r.First
	flush := func(end int) {
		switch {
		case end < start:
		case end == start:
			parts = append(parts, bindHost+":"+strconv.Itoa(start))
		default:
			parts = append(parts, bindHost+":"+strconv.Itoa(start)+"-"+strconv.Itoa(end))
		}
	}
	for _, h := range holes {
		if h < r.First || h > r.Last {
			continue
		}
		flush(h - 1)
		start = h + 1
	}
	flush(r.Last)
	return strings.Join(parts, ",")
}

// renderDynamic appends the dynamic frontend and its slots to b, and
// returns the map file's content. dyn are the valid dynamic frontends in
// port order, each with a slot in l.
func renderDynamic(b *bytes.Buffer, s Settings, bindHost string, v6 bool, dyn []Frontend, l *layout, reject func(string, ...any)) []byte {
	binds := bindRanges(bindHost, s.DynamicPorts, l.Holes)
	if binds != "" {
		b.WriteString("\nfrontend fe_dynamic\n")
		fmt.Fprintf(b, "    # ports %s: routes are added and removed through the runtime API\n", s.DynamicPorts)
		fmt.Fprintf(b, "    bind %s\n", binds)
		fmt.Fprintf(b, "    tcp-request connection reject unless { dst_port,map_int(%s) -m found }\n", s.MapFile)
		fmt.Fprintf(b, "    use_backend %%[dst_port,map_int(%s)]\n", s.MapFile)
	}
	type slotUse struct {
		fe Frontend
		ok bool
	}
	bySlot := map[string]slotUse{}
	var m bytes.Buffer
	for _, fe := range dyn {
		name := slotName(classOf(fe), l.Ports[fe.Port])
		bySlot[name] = slotUse{fe, true}
		fmt.Fprintf(&m, "%d %s\n", fe.Port, name)
	}
	for _, c := range allClasses() {
		for n := 0; n < l.Pool[c.key()]; n++ {
			name := slotName(c, n)
			use := bySlot[name]
			fmt.Fprintf(b, "\nbackend %s\n", name)
			if use.ok {
				fmt.Fprintf(b, "    # route %s port %d\n", use.fe.Name, use.fe.Port)
			}
			fmt.Fprintf(b, "    balance %s\n", c.balance)
			if c.balance == "source" {
				// Only consistent hashing takes servers at run time.
				b.WriteString("    hash-type consistent\n")
			}
			if c.sticky {
				typ := "ip"
				if v6 {
					typ = "ipv6"
				}
				fmt.Fprintf(b, "    stick-table type %s size 200k expire 30m\n", typ)
				b.WriteString("    stick on src\n")
			}
			if c.httpchk {
				b.WriteString(httpCheck)
			}
			if use.ok {
				opts := serverOptions(s, use.fe)
				for _, sv := range sortServers(use.fe, reject) {
					fmt.Fprintf(b, "    server %s %s%s\n", serverName(sv), serverAddr(sv), opts)
				}
			}
		}
	}
	return m.Bytes()
}

// runtimePlan is the runtime API commands that turn the running state into
// the next one, and the layout after them.
type runtimePlan struct {
	cmds   []string
	layout *layout
	// routes counts dynamic routes added, removed or changed.
	routes int
}

// planRuntime returns the runtime API commands that turn running (laid out
// as l) into next, or ok=false when that takes a reload: a frontend outside
// the dynamic range added, removed or changed in more than its servers, a
// dynamic port the live worker does not bind, no free slot of a needed
// class, or settings other than those the layout was built for. served
// reports the ports the live worker binds.
func planRuntime(s Settings, running []Frontend, l *layout, next []Frontend, served *portSet) (p runtimePlan, ok bool) {
	if running == nil {
		return p, false
	}
	s, _, _ = checkSettings(s, func(string, ...any) {})
	r := s.DynamicPorts
	if r.Empty() || l == nil {
		// No dynamic range: only server changes of static frontends.
		cmds, ok := planServerChanges(s, running, next)
		return runtimePlan{cmds: cmds, layout: l}, ok
	}
	if l.Range != r || l.Key != settingsKey(s) || s.MapFile == "" {
		return p, false
	}
	chs, ok := changes(running, next)
	if !ok {
		return p, false
	}
	var dyn []change
	var adds, dels []string
	for _, ch := range chs {
		port := ch.b.Port
		if ch.had {
			port = ch.a.Port
		}
		if r.Contains(port) {
			dyn = append(dyn, ch)
			continue
		}
		a, d, ok := serverChanges(s, ch)
		if !ok {
			return p, false
		}
		adds, dels = append(adds, a...), append(dels, d...)
	}
	p.cmds = adds

	// The layout is copied on the first change only, and the slots in use
	// are listed on the first allocation only: a change of one route costs
	// the same at any table size.
	nl := l
	mutable := func() {
		if nl == l {
			nl = l.clone()
		}
	}
	// Slots in use before this plan; a slot emptied by this plan is reused
	// only by a later one, so no command sequence touches a slot twice.
	var inUse map[string]bool
	cursor := map[slotClass]int{}
	alloc := func(c slotClass) (int, bool) {
		if inUse == nil {
			inUse = map[string]bool{}
			for _, fe := range running {
				if n, found := l.Ports[fe.Port]; found && r.Contains(fe.Port) {
					inUse[slotName(classOf(fe), n)] = true
				}
			}
		}
		for n := cursor[c]; n < nl.Pool[c.key()]; n++ {
			if !inUse[slotName(c, n)] {
				inUse[slotName(c, n)] = true
				cursor[c] = n + 1
				return n, true
			}
		}
		cursor[c] = nl.Pool[c.key()]
		return 0, false
	}
	ignore := func(string, ...any) {}
	fill := func(slot string, fe Frontend, servers []Server) {
		for _, sv := range servers {
			name := slot + "/" + serverName(sv)
			p.cmds = append(p.cmds, "add server "+name+" "+serverAddr(sv)+serverOptions(s, fe), "enable server "+name)
			if fe.HealthCheck {
				p.cmds = append(p.cmds, "enable health "+name)
			}
		}
	}
	var empties []string
	empty := func(slot string, sticky bool, servers []Server) {
		for _, sv := range servers {
			name := slot + "/" + serverName(sv)
			empties = append(empties, "set server "+name+" state maint", "shutdown sessions server "+name, "del server "+name)
		}
		if sticky {
			// A later route in this slot must not inherit its clients.
			empties = append(empties, "clear table "+slot)
		}
	}

	for _, ch := range dyn {
		a, had, b, has := ch.a, ch.had, ch.b, ch.has
		port := b.Port
		if had {
			port = a.Port
		}
		if has && (!served.has(port) || slices.Contains(l.Holes, port)) {
			return p, false // the live worker does not bind it: a reload will
		}
		if has {
			if err := checkFrontend(b); err != nil {
				return p, false
			}
		}
		var was, now []Server
		if had {
			if _, found := l.Ports[port]; !found {
				return p, false
			}
			was = sortServers(a, ignore)
		}
		if has {
			now = sortServers(b, ignore)
		}
		switch {
		case had && !has:
			slot := slotName(classOf(a), l.Ports[port])
			p.cmds = append(p.cmds, "del map "+s.MapFile+" "+strconv.Itoa(port))
			empty(slot, a.Sticky, was)
			mutable()
			delete(nl.Ports, port)
			p.routes++
		case !had && has:
			c := classOf(b)
			n, free := alloc(c)
			if !free {
				return p, false
			}
			slot := slotName(c, n)
			fill(slot, b, now)
			p.cmds = append(p.cmds, "add map "+s.MapFile+" "+strconv.Itoa(port)+" "+slot)
			mutable()
			nl.Ports[port] = n
			p.routes++
		case classOf(a) != classOf(b) || a.HealthCheck != b.HealthCheck || a.ProxyProtocol != b.ProxyProtocol ||
			a.CheckPort != b.CheckPort:
			// Move to a fresh slot: fill it, repoint the port, empty the old.
			c := classOf(b)
			n, free := alloc(c)
			if !free {
				return p, false
			}
			slot := slotName(c, n)
			fill(slot, b, now)
			p.cmds = append(p.cmds, "set map "+s.MapFile+" "+strconv.Itoa(port)+" "+slot)
			empty(slotName(classOf(a), l.Ports[port]), a.Sticky, was)
			mutable()
			nl.Ports[port] = n
			p.routes++
		case !slices.Equal(was, now):
			slot := slotName(classOf(b), l.Ports[port])
			var added []Server
			for _, sv := range now {
				if !slices.Contains(was, sv) {
					added = append(added, sv)
				}
			}
			fill(slot, b, added)
			for _, sv := range was {
				if !slices.Contains(now, sv) {
					name := slot + "/" + serverName(sv)
					empties = append(empties, "set server "+name+" state maint", "shutdown sessions server "+name, "del server "+name)
				}
			}
			p.routes++
		}
	}
	p.cmds = append(append(p.cmds, empties...), dels...)
	p.layout = nl
	return p, true
}

// runtimeAnswer is what the runtime API answers cmd with on success.
func runtimeAnswer(cmd string) string {
	switch {
	case strings.HasPrefix(cmd, "add server "):
		return "New server registered.\n\n"
	case strings.HasPrefix(cmd, "del server "):
		return "Server deleted.\n"
	}
	return "\n"
}

// maxRuntimeLine bounds one runtime API request line (commands joined by
// ";"): HAProxy reads a request into one buffer (tune.bufsize, 16 kB).
const maxRuntimeLine = 8000

// runtimeLine is one runtime API request: cmds joined by ";".
type runtimeLine struct {
	text string
	cmds []string
}

// batchRuntime joins cmds into request lines of at most maxRuntimeLine
// bytes.
func batchRuntime(cmds []string) []runtimeLine {
	var lines []runtimeLine
	var line strings.Builder
	first := 0
	for i, c := range cmds {
		if line.Len() > 0 && line.Len()+1+len(c) > maxRuntimeLine {
			lines = append(lines, runtimeLine{text: line.String(), cmds: cmds[first:i]})
			line.Reset()
			first = i
		}
		if line.Len() > 0 {
			line.WriteByte(';')
		}
		line.WriteString(c)
	}
	if line.Len() > 0 {
		lines = append(lines, runtimeLine{text: line.String(), cmds: cmds[first:]})
	}
	return lines
}

// errServerBusy is HAProxy's refusal to delete a server that still has
// connections (its answer names them so).
const errServerBusy = "still has connections"

// readAnswers checks out, the runtime API's answer to cmds sent on one
// line, command by command, and returns the `del server` commands refused
// only because their server still had connections. Any other answer than
// the expected one is an error naming the command. HAProxy prints a
// refusal of `del server` as one line, without the blank line most
// answers end with.
func readAnswers(cmds []string, out string) (busy []string, err error) {
	rest := out
	for _, c := range cmds {
		want := runtimeAnswer(c)
		if strings.HasPrefix(rest, want) {
			rest = rest[len(want):]
			continue
		}
		got, _, _ := strings.Cut(rest, "\n")
		if strings.HasPrefix(c, "del server ") && strings.Contains(got, errServerBusy) {
			busy = append(busy, c)
			rest = rest[len(got)+1:]
			continue
		}
		return nil, fmt.Errorf("runtime API %q: %q", truncateText(c, 300), truncateText(strings.TrimSpace(rest), 300))
	}
	if rest != "" {
		return nil, fmt.Errorf("runtime API: unexpected answer after %d commands: %q", len(cmds), truncateText(rest, 300))
	}
	return busy, nil
}
