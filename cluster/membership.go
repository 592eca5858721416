package cluster

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Roles a node can have.
const (
	// RoleEdge runs HAProxy and may hold the floating IP.
	RoleEdge = "edge"
	// RoleWitness is a raft voter only: no HAProxy, never the floating IP.
	RoleWitness = "witness"
)

// Meta is what a node tells the others about itself through gossip. It is
// refreshed whenever it changes and must stay under memberlist's 512-byte
// limit, so field names are short and the error is truncated.
type Meta struct {
	Role     string `json:"r"`
	RaftAddr string `json:"ra"`
	APIURL   string `json:"api"`
	Version  string `json:"v,omitempty"`
	// Bootstrapped is true once the node has raft state (it belongs to a
	// cluster); bootstrap-expect never forms a cluster with such a node.
	Bootstrapped bool `json:"b,omitempty"`
	// Index is the route-table index this node has applied from the log.
	Index uint64 `json:"ti,omitempty"`
	// Applied is the route-table index HAProxy runs on this node; ConfigHash
	// identifies the rendered config; Healthy means HAProxy runs and is not
	// behind this node's table; Error is the last HAProxy error, shortened.
	Applied    uint64 `json:"ai,omitempty"`
	ConfigHash string `json:"ch,omitempty"`
	Healthy    bool   `json:"h,omitempty"`
	Error      string `json:"e,omitempty"`
	// Held counts routes of its table this node's HAProxy does not serve
	// (port taken, failed reload); HeldBack names the first of their ports.
	Held     int   `json:"hn,omitempty"`
	HeldBack []int `json:"hb,omitempty"`
	// Unknown counts log entries this node skipped because a newer
	// drawbridge wrote them: its table may differ from the others'.
	Unknown uint64 `json:"u,omitempty"`
	// FD is how many file descriptors this edge node has for routes'
	// listeners and health checks (its limit less what HAProxy itself and
	// connections keep); 0: not published. The leader admits no write
	// whose table fits no edge node.
	FD int `json:"fd,omitempty"`
	// Leaving is gossiped just before a graceful leave, so peers can tell
	// "left on purpose" (remove the voter) from "failed" (keep it).
	Leaving bool `json:"l,omitempty"`
	// FIP is this edge node's floating-IP claim (nil when none is managed).
	FIP *FIPMeta `json:"f,omitempty"`
	// Batches announces that this node applies batch log entries
	// (fsm.CmdBatch); the leader writes them only while every voter and
	// every member that may become one does (see Reconciler).
	Batches bool `json:"bt,omitempty"`
}

// FIPMeta is an edge node's floating-IP state as gossiped: whether it may
// hold the address, whether it does and with which claim epoch, and how it
// got it.
type FIPMeta struct {
	Eligible bool   `json:"el,omitempty"`
	Holding  bool   `json:"h,omitempty"`
	Epoch    uint64 `json:"e,omitempty"`
	Priority int    `json:"p,omitempty"`
	// Last failover that gave this node the address.
	LastAt   int64  `json:"la,omitempty"` // unix milliseconds
	LastFrom string `json:"lf,omitempty"`
	LastMS   int64  `json:"ld,omitempty"` // duration in milliseconds
	LastWhy  string `json:"lw,omitempty"`
}

// MemberStatus is what gossip says of a member.
type MemberStatus string

// Member statuses. memberlist reports a member as it joins, updates and
// fails or leaves; a suspected member stays alive until declared dead.
const (
	// StatusAlive: the member answers gossip.
	StatusAlive MemberStatus = "alive"
	// StatusDead: gossip declared it failed (it did not say goodbye).
	StatusDead MemberStatus = "dead"
	// StatusLeft: it left on purpose (its metadata said it was leaving).
	StatusLeft MemberStatus = "left"
)

// Member is a node as gossip sees it.
type Member struct {
	Name   string       `json:"name"`
	Addr   string       `json:"addr"`
	Status MemberStatus `json:"status"`
	Meta   Meta         `json:"meta"`
	// gone is when the member was first seen dead or left (zero: alive).
	gone time.Time
}

// DefaultReapAfter is how long failed and departed members are remembered.
const DefaultReapAfter = 72 * time.Hour

// ErrMetaTooLarge means this node's gossip metadata does not fit in
// memberlist's limit even with its free-text fields emptied.
var ErrMetaTooLarge = errors.New("gossip metadata too large")

// Alive reports whether the member is reachable.
func (m Member) Alive() bool { return m.Status == StatusAlive }

// GossipConfig configures memberlist.
type GossipConfig struct {
	NodeName string
	// BindAddr is host:port for gossip (TCP and UDP).
	BindAddr string
	// AdvertiseAddr is host:port others reach us at (default BindAddr).
	AdvertiseAddr string
	// Key encrypts gossip (16, 24 or 32 bytes; nil = plaintext).
	Key []byte
	// Label is stamped on every packet; nodes with another label are ignored,
	// so two clusters on one network never mix.
	Label string
	// AllowedCIDRs, when set, limits gossip to peers whose source address
	// is in one of these networks (memberlist's CIDRsAllowed); packets
	// from anywhere else are dropped before they are decrypted.
	AllowedCIDRs []string
	// ReapAfter is how long a member that failed or left is remembered
	// (default 72h, as Consul's reconnect_timeout). Forgotten members are
	// no longer contacted and no longer counted.
	ReapAfter time.Duration
	// Failure detection (defaults: memberlist's LAN profile).
	ProbeInterval  time.Duration
	ProbeTimeout   time.Duration
	SuspicionMult  int
	GossipInterval time.Duration
}

// ParseGossipKey decodes a base64 gossip key and checks its length.
func ParseGossipKey(s string) ([]byte, error) {
	if s == "" {
		return nil, nil
	}
	k, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("gossip key is not base64: %w", err)
	}
	switch len(k) {
	case 16, 24, 32:
		return k, nil
	}
	return nil, fmt.Errorf("gossip key is %d bytes, want 16, 24 or 32 (drawbridge keygen prints one)", len(k))
}

// Membership is this node's view of the cluster through memberlist.
type Membership struct {
	ml   *memberlist.Memberlist
	log  *slog.Logger
	meta func() Meta

	reapAfter time.Duration

	// mu guards the fields below and nodes. It is never held while the
	// metadata function runs (that function may take the floating-IP
	// owner's lock; see the lock order in internal/agent/doc.go).
	mu       sync.Mutex
	leaving  bool
	lastMeta []byte
	// metaErr is the last metadata that did not fit, reported once.
	metaErr string
	changed chan struct{}
	// nodes is our own copy of the member list, kept by the event
	// delegate: memberlist's Members() hands out pointers whose fields its
	// goroutines keep writing, so reading them would race.
	nodes map[string]Member
}

// NewMembership starts gossip. meta is called whenever memberlist needs this
// node's metadata and by Refresh.
func NewMembership(cfg GossipConfig, meta func() Meta, logger *slog.Logger) (*Membership, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m := &Membership{log: logger.With("component", "gossip"), meta: meta, changed: make(chan struct{}), nodes: map[string]Member{},
		reapAfter: cfg.ReapAfter}
	if m.reapAfter <= 0 {
		m.reapAfter = DefaultReapAfter
	}
	mc := memberlist.DefaultLANConfig()
	if len(cfg.AllowedCIDRs) > 0 {
		nets, err := memberlist.ParseCIDRs(cfg.AllowedCIDRs)
		if err != nil {
			return nil, fmt.Errorf("gossip allowed CIDRs: %w", err)
		}
		mc.CIDRsAllowed = nets
	}
	mc.Name = cfg.NodeName
	host, port, err := splitHostPort(cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("gossip bind address: %w", err)
	}
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertisePort = port
	if cfg.AdvertiseAddr != "" {
		ah, ap, err := splitHostPort(cfg.AdvertiseAddr)
		if err != nil {
			return nil, fmt.Errorf("gossip advertise address: %w", err)
		}
		mc.AdvertiseAddr, mc.AdvertisePort = ah, ap
	}
	mc.SecretKey = cfg.Key
	mc.Label = cfg.Label
	if cfg.ProbeInterval > 0 {
		mc.ProbeInterval = cfg.ProbeInterval
	}
	if cfg.ProbeTimeout > 0 {
		mc.ProbeTimeout = cfg.ProbeTimeout
	}
	if cfg.SuspicionMult > 0 {
		mc.SuspicionMult = cfg.SuspicionMult
	}
	if cfg.GossipInterval > 0 {
		mc.GossipInterval = cfg.GossipInterval
	}
	mc.Delegate = &metaDelegate{m: m}
	mc.Events = &eventDelegate{m: m}
	mc.Logger = log.New(&stdlogWriter{logger: m.log}, "", 0)
	first, err := m.encodeMeta()
	if err != nil {
		return nil, err
	}
	m.lastMeta = first
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("start gossip on %s: %w", cfg.BindAddr, err)
	}
	if len(mc.CIDRsAllowed) > 0 && !slices.ContainsFunc(ml.Members(), func(n *memberlist.Node) bool { return n.Name == cfg.NodeName }) {
		// memberlist refuses its own node when its address is outside
		// the allowed networks, and would run without a local node.
		ml.Shutdown()
		return nil, fmt.Errorf("gossip.allowed_cidrs %v must include this node's own gossip address", cfg.AllowedCIDRs)
	}
	m.ml = ml
	return m, nil
}

func splitHostPort(addr string) (string, int, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", p, err)
	}
	if h == "" {
		h = "0.0.0.0"
	}
	return h, port, nil
}

// maxHeldBackMeta is how many held-back ports a node names in gossip.
const maxHeldBackMeta = 8

// encodeMeta encodes this node's metadata within memberlist's limit. The
// free-text fields (the last HAProxy error, held-back ports, the last
// failover's reason) are shortened, then dropped, to fit; what still does
// not fit is an error, never a silent loss of the node's role.
func (m *Membership) encodeMeta() ([]byte, error) {
	md := m.meta()
	m.mu.Lock()
	md.Leaving = m.leaving
	m.mu.Unlock()
	if len(md.Error) > 120 {
		md.Error = md.Error[:120]
	}
	if md.FIP != nil && len(md.FIP.LastWhy) > 60 {
		md.FIP.LastWhy = md.FIP.LastWhy[:60]
	}
	if len(md.HeldBack) > maxHeldBackMeta {
		md.HeldBack = md.HeldBack[:maxHeldBackMeta]
	}
	b, err := json.Marshal(md)
	if err != nil {
		return nil, fmt.Errorf("encode gossip metadata: %w", err)
	}
	if len(b) <= memberlist.MetaMaxSize {
		return b, nil
	}
	md.Error, md.HeldBack = "(error too long for gossip; see this node's status)", nil
	if md.FIP != nil {
		md.FIP.LastWhy = ""
	}
	if b, err = json.Marshal(md); err == nil && len(b) <= memberlist.MetaMaxSize {
		return b, nil
	}
	return nil, fmt.Errorf("%w: %d bytes encoded, memberlist allows %d (shorten the node name, API address or raft address)", ErrMetaTooLarge, len(b), memberlist.MetaMaxSize)
}

func (m *Membership) notify() {
	m.mu.Lock()
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
}

// Changed returns a channel closed at the next membership or metadata change.
func (m *Membership) Changed() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.changed
}

// Join contacts the given members until one answers or ctx ends, backing off
// between rounds (1s doubling to 30s, with jitter).
func (m *Membership) Join(ctx context.Context, addrs []string) error {
	if len(addrs) == 0 {
		return nil
	}
	backoff := time.Second
	for {
		n, err := m.ml.Join(addrs)
		if n > 0 {
			m.log.Info("joined the cluster", "contacted", n)
			return nil
		}
		m.log.Warn("cannot join yet; retrying", "addrs", addrs, "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff + rand.N(backoff/4+1)):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// Refresh re-reads this node's metadata and gossips it when it changed.
func (m *Membership) Refresh() { m.refresh(false) }

// refresh gossips this node's metadata when it changed or when force is
// set, and then blocks until the update is broadcast. A leave forces it: a
// refresh running at the same moment (another goroutine's) may already
// have recorded the Leaving flag without its broadcast being out yet, and
// a leave message that overtook it would read as a failure to the peers.
func (m *Membership) refresh(force bool) {
	b, err := m.encodeMeta()
	if err != nil {
		// Keep gossiping the last metadata that fit; say so once.
		m.mu.Lock()
		first := m.metaErr != err.Error()
		m.metaErr = err.Error()
		m.mu.Unlock()
		if first {
			m.log.Error("gossip metadata not updated", "err", err)
		}
		return
	}
	m.mu.Lock()
	m.metaErr = ""
	same := string(b) == string(m.lastMeta) && !force
	if !same {
		m.lastMeta = b
	}
	m.mu.Unlock()
	if same {
		return
	}
	if err := m.ml.UpdateNode(2 * time.Second); err != nil {
		m.log.Debug("gossip metadata update", "err", err)
	}
	m.notify()
}

// RunRefresh calls Refresh every interval until ctx ends.
func (m *Membership) RunRefresh(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.Refresh()
		}
	}
}

// RunReconnect, every interval until ctx ends, contacts the members gossip
// declared dead (never those that left). memberlist syncs state only with
// members it believes alive, so after a full partition both sides would
// keep the other dead for good; a successful contact merges the views and
// each side refutes its own death.
func (m *Membership) RunReconnect(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.reap(time.Now())
		var dead []string
		for _, mem := range m.Members() {
			if mem.Status == StatusDead && mem.Addr != "" {
				dead = append(dead, mem.Addr)
			}
		}
		if len(dead) == 0 {
			continue
		}
		if n, err := m.ml.Join(dead); n > 0 {
			m.log.Info("reached members that were declared dead", "contacted", n)
		} else if err != nil {
			m.log.Debug("dead members still unreachable", "err", err)
		}
	}
}

// reap forgets members that have been dead or gone for longer than
// ReapAfter.
func (m *Membership) reap(now time.Time) {
	m.mu.Lock()
	var reaped []string
	for name, mem := range m.nodes {
		if !mem.gone.IsZero() && now.Sub(mem.gone) > m.reapAfter {
			delete(m.nodes, name)
			reaped = append(reaped, name)
		}
	}
	m.mu.Unlock()
	for _, name := range reaped {
		m.log.Info("forgot a member gone for longer than gossip.reap_after", "member", name, "reap_after", m.reapAfter)
	}
	if len(reaped) > 0 {
		m.notify()
	}
}

// HealthScore is memberlist's Lifeguard awareness of this node's own health:
// 0 is healthy; it grows when this node's probes fail without the other
// members confirming (a nack) that the target is unreachable from them too,
// and when it has to refute suspicions of itself: both signs that the
// trouble is this node's own network. It decays with successful probes.
func (m *Membership) HealthScore() int { return m.ml.GetHealthScore() }

// LocalName is this node's gossip name.
func (m *Membership) LocalName() string { return m.ml.LocalNode().Name }

// Members lists every node gossip knows, this one included, sorted by name.
// This node's own metadata is read fresh.
func (m *Membership) Members() []Member {
	local := m.ml.LocalNode().Name
	m.mu.Lock()
	out := make([]Member, 0, len(m.nodes))
	for _, n := range m.nodes {
		out = append(out, n)
	}
	m.mu.Unlock()
	for i := range out {
		if out[i].Name == local {
			out[i].Meta = m.meta()
			out[i].Status = StatusAlive
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Address is where one member listens, as gossip carries it.
type Address struct {
	Name     string
	Addr     string // gossip
	RaftAddr string
	APIURL   string
}

// Addresses lists where every node gossip knows listens, this one
// included, sorted by name. Unlike Members it never calls the metadata
// function (this node's entry holds the addresses it last published, which
// never change while it runs) and copies nothing else: per-request code
// that needs only addresses reads this.
func (m *Membership) Addresses() []Address {
	m.mu.Lock()
	out := make([]Address, 0, len(m.nodes))
	for _, n := range m.nodes {
		out = append(out, Address{Name: n.Name, Addr: n.Addr, RaftAddr: n.Meta.RaftAddr, APIURL: n.Meta.APIURL})
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b Address) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Member returns the node named name as Members would: another node as
// gossip carries it (a map look-up), this node with its metadata read
// fresh.
func (m *Membership) Member(name string) (Member, bool) {
	m.mu.Lock()
	mem, ok := m.nodes[name]
	m.mu.Unlock()
	if ok && name == m.ml.LocalNode().Name {
		mem.Meta = m.meta()
		mem.Status = StatusAlive
	}
	return mem, ok
}

// Others lists the other nodes gossip knows, sorted by name. Unlike
// Members it never calls the metadata function, so code that function calls
// (the floating-IP owner's Claim and the eligibility it asks for) may use
// it without taking its own locks again.
func (m *Membership) Others() []Member {
	local := m.ml.LocalNode().Name
	m.mu.Lock()
	out := make([]Member, 0, len(m.nodes))
	for _, n := range m.nodes {
		if n.Name != local {
			out = append(out, n)
		}
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// record copies a node's fields while memberlist holds its lock (event
// delegates run under it).
func (m *Membership) record(n *memberlist.Node, left bool) {
	mem := Member{Name: n.Name, Addr: n.Address(), Status: StatusAlive}
	_ = json.Unmarshal(n.Meta, &mem.Meta)
	if left {
		// memberlist does not tell a graceful leave from a failure here
		// (the node's State field is stale): the Leaving flag does.
		mem.Status = StatusDead
		if mem.Meta.Leaving {
			mem.Status = StatusLeft
		}
	}
	m.mu.Lock()
	if left {
		mem.gone = time.Now()
		if prev, ok := m.nodes[n.Name]; ok && !prev.gone.IsZero() {
			mem.gone = prev.gone
		}
	}
	m.nodes[n.Name] = mem
	m.mu.Unlock()
	m.notify()
}

func (m *Membership) get(name string) (Member, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	mem, ok := m.nodes[name]
	return mem, ok
}

// MarkLeaving gossips that this node is about to leave on purpose (the
// Leaving flag in its metadata), before it says so to the leader.
func (m *Membership) MarkLeaving() {
	m.mu.Lock()
	m.leaving = true
	m.mu.Unlock()
	m.refresh(true)
}

// Leave tells the others this node is leaving on purpose (first in its
// metadata, then with memberlist's leave message), then stops gossip.
func (m *Membership) Leave(timeout time.Duration) error {
	m.mu.Lock()
	m.leaving = true
	m.mu.Unlock()
	m.refresh(true)
	err := m.ml.Leave(timeout)
	if serr := m.ml.Shutdown(); err == nil {
		err = serr
	}
	return err
}

// Shutdown stops gossip without saying goodbye (others will see us fail).
func (m *Membership) Shutdown() error { return m.ml.Shutdown() }

type metaDelegate struct{ m *Membership }

func (d *metaDelegate) NodeMeta(limit int) []byte {
	d.m.mu.Lock()
	defer d.m.mu.Unlock()
	if len(d.m.lastMeta) > limit {
		return nil
	}
	return d.m.lastMeta
}
func (d *metaDelegate) NotifyMsg([]byte)                           {}
func (d *metaDelegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *metaDelegate) LocalState(join bool) []byte                { return nil }
func (d *metaDelegate) MergeRemoteState(buf []byte, join bool)     {}

type eventDelegate struct{ m *Membership }

func (e *eventDelegate) NotifyJoin(n *memberlist.Node) {
	e.m.log.Info("member joined", "member", n.Name, "addr", n.Address())
	e.m.record(n, false)
}

func (e *eventDelegate) NotifyLeave(n *memberlist.Node) {
	e.m.record(n, true)
	if mem, _ := e.m.get(n.Name); mem.Status == StatusLeft {
		e.m.log.Info("member left", "member", n.Name)
	} else {
		e.m.log.Warn("member failed", "member", n.Name)
	}
}

func (e *eventDelegate) NotifyUpdate(n *memberlist.Node) { e.m.record(n, false) }

// stdlogWriter forwards memberlist's "[LEVEL] memberlist: msg" lines to slog.
type stdlogWriter struct{ logger *slog.Logger }

func (w *stdlogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	lvl := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{"[DEBUG]": slog.LevelDebug, "[INFO]": slog.LevelInfo, "[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError} {
		if strings.HasPrefix(line, prefix) {
			lvl = l
			line = strings.TrimSpace(strings.TrimPrefix(strings.TrimPrefix(line, prefix), " memberlist:"))
			break
		}
	}
	w.logger.Log(context.Background(), lvl, line)
	return len(p), nil
}
