package haproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Manager.
type Config struct {
	// Bin is the haproxy binary; default "haproxy" looked up in PATH.
	Bin string
	// Dir is the runtime directory: haproxy.cfg, haproxy.cfg.last-good,
	// master.sock, haproxy.pid (and haproxy.start.log).
	Dir      string
	Settings Settings
	// QuietWindow: apply once no submission arrived for this long (default
	// 20ms)...
	QuietWindow time.Duration
	// MaxDelay: ...but never later than this after the first pending
	// submission (default 250ms).
	MaxDelay time.Duration
	// ReloadTimeout bounds starting a master and confirming a reload
	// (default 10s).
	ReloadTimeout time.Duration
	// CheckTimeout bounds one `haproxy -c` (default DefaultCheckTimeout): a
	// hung check must not hold the Manager, its health checks or startup.
	CheckTimeout time.Duration
	// RetryInterval is how often ports held back because they could not be
	// bound are probed again, without a new submission (default 3s).
	RetryInterval time.Duration
	// HealthInterval is how often the master process is checked, and its
	// workers measured (default 1s).
	HealthInterval time.Duration
	// OldWorkersMaxBytes is the memory budget of old workers (left from
	// reloads, serving their long-lived connections): above it the oldest
	// are stopped first. 0 means no budget (hard-stop-after only).
	OldWorkersMaxBytes uint64
	// Isolation runs HAProxy as its own user, chrooted, with only the
	// capabilities it needs (see isolation.go). The zero value runs it as
	// the agent's user, with a scrubbed environment all the same.
	Isolation Isolation
	Logger    *slog.Logger
	// Registerer receives the drawbridge_haproxy_* metrics; nil = none.
	Registerer prometheus.Registerer
}

// PortFailure is a frontend held back: its port could not be bound on this
// node (typically another process listens on it), or the reload that would
// add it failed (Error says which, and why) while the rest of the table was
// applied without it.
type PortFailure struct {
	Port  int
	Name  string
	Error string
}

// Status is a snapshot of what the Manager knows about HAProxy.
type Status struct {
	Running   bool
	MasterPID int
	Adopted   bool // the master was already running when Start was called
	Version   string

	// AppliedIndex is the index of the latest submission that is live in
	// full: every route of it is served. A submission with routes held back
	// (FailedPorts) does not count as applied.
	AppliedIndex uint64
	// ServedIndex is the index of the latest submission that is live
	// except for the routes held back in FailedPorts (equal to AppliedIndex
	// when none are).
	ServedIndex uint64
	ConfigHash  string // Hash of the live haproxy.cfg
	AppliedAt   time.Time

	Reloads            uint64
	LastReloadAt       time.Time
	LastReloadDuration time.Duration
	Restarts           uint64 // masters started again after dying

	LastError   string
	LastErrorAt time.Time
	FailedPorts []PortFailure

	// DynamicPorts is the range served through the runtime API (empty: none).
	DynamicPorts PortRange
	// RuntimeUpdates counts changes applied through the runtime API.
	RuntimeUpdates uint64

	// Workers measures the current and old workers (every HealthInterval).
	Workers WorkerStats
}

// submission is one Submit call.
type submission struct {
	index uint64
	fes   []Frontend
}

// Manager keeps a local HAProxy master-worker in line with the latest
// submitted frontends. All HAProxy operations (render, check, install,
// reload, restart, stop) run one at a time; Submit never blocks.
type Manager struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	cfgPath, lastGoodPath, sockPath, pidPath string
	// mapPath and lastGoodMapPath hold the dynamic range's map; statePath
	// the frontends and layout the installed files render; pendingPath
	// exists while the running worker is ahead of the files (runtime
	// changes not written yet).
	mapPath, lastGoodMapPath, statePath, pendingPath string
	// shareGID is HAProxy's group when it runs as its own user: the files
	// it reads are handed to it (see prepareIsolation).
	shareGID int

	mu           sync.Mutex
	status       Status
	changed      chan struct{} // closed and replaced on every status change
	pending      *submission   // latest submission not yet taken by the loop
	fastTried    *submission   // pending submission the runtime API cannot apply
	firstPending time.Time
	lastSubmit   time.Time
	stopped      bool // StopHAProxy was called: do not restart the master
	wake         chan struct{}

	// opMu serialises every operation on the HAProxy process and the files
	// in Dir. The fields below are guarded by it.
	opMu        sync.Mutex
	desired     *submission // latest submission taken by the loop
	appliedHash string
	served      *portSet // ports the live configuration binds
	// rt is the kept-open runtime API connection to the live worker.
	rt runtimeConn
	// masterReloads is the master's reload count after the last start,
	// adoption or reload this Manager made: a higher count in `show proc`
	// means someone else reloaded HAProxy (see noticeOutsideReload).
	masterReloads int
	// running is what the live worker serves when this manager put it
	// there (nil after adopting or restarting from disk): the base for
	// server-only changes through the runtime API.
	running []Frontend
	// runLayout is the slot layout of the dynamic range in the live worker
	// (nil when unknown or without a range).
	runLayout *layout
	retry     bool // re-apply desired on the next retry tick
	// reloadHeld are new frontends (by port) held back because the reload
	// that added them failed, with the reason; until reloadHeldUntil they
	// are left out up front, so later changes apply without retrying the
	// failing reload each time.
	reloadHeld      map[int]string
	reloadHeldUntil time.Time
	gen             uint64 // bumped on every change of what the worker serves

	// fileMu serialises installing haproxy.cfg, the map and the state
	// file: the apply loop (before a reload) and the file writer that
	// catches the files up with runtime changes. installedGen is the gen
	// the installed files render.
	fileMu       sync.Mutex
	installedGen uint64
	fileJob      *fileJob // latest runtime state to write, under mu
	fileWake     chan struct{}
	// markMu guards latestGen (the gen the worker serves) and pending
	// (marked: pendingPath exists).
	markMu    sync.Mutex
	latestGen uint64
	marked    bool

	// stopping are old workers the memory budget stopped, by PID, with
	// when: the periodic check (runWorkers) and reloads (makeRoom) both
	// stop workers, under budgetMu.
	budgetMu sync.Mutex
	stopping map[int]time.Time

	// crashAfterInstall, set by tests, runs between installing a new
	// haproxy.cfg and reloading; true makes apply stop there, as an agent
	// killed at that moment would.
	crashAfterInstall func() bool

	startOnce sync.Once
	cancel    context.CancelFunc
	done      chan struct{}
}

// NewManager checks cfg and the HAProxy binary; it starts nothing.
func NewManager(cfg Config) (*Manager, error) {
	if cfg.Bin == "" {
		cfg.Bin = "haproxy"
	}
	bin, err := exec.LookPath(cfg.Bin)
	if err != nil {
		return nil, fmt.Errorf("haproxy binary %q not found (install it, e.g. `apt-get install haproxy`): %w", cfg.Bin, err)
	}
	cfg.Bin = bin
	if cfg.Dir == "" {
		return nil, errors.New("haproxy: Config.Dir is required")
	}
	if cfg.Dir, err = filepath.Abs(cfg.Dir); err != nil {
		return nil, fmt.Errorf("haproxy: %w", err)
	}
	cfg.Settings = cfg.Settings.WithDefaults()
	if cfg.Isolation.Chroot {
		cfg.Settings.Chroot = cfg.chrootDir()
	}
	if cfg.isolated() {
		cfg.Settings.SharedSockets = true
	}
	if !cfg.Settings.DynamicPorts.Empty() && cfg.Settings.MapFile == "" {
		cfg.Settings.MapFile = filepath.Join(cfg.Dir, "dynamic.map")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.QuietWindow, 20*time.Millisecond)
	def(&cfg.MaxDelay, 250*time.Millisecond)
	def(&cfg.ReloadTimeout, 10*time.Second)
	def(&cfg.CheckTimeout, DefaultCheckTimeout)
	def(&cfg.RetryInterval, 3*time.Second)
	def(&cfg.HealthInterval, time.Second)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	met, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	m := &Manager{
		cfg:          cfg,
		log:          cfg.Logger.With("component", "haproxy"),
		metrics:      met,
		cfgPath:      filepath.Join(cfg.Dir, "haproxy.cfg"),
		lastGoodPath: filepath.Join(cfg.Dir, "haproxy.cfg.last-good"),
		sockPath:     filepath.Join(cfg.Dir, "master.sock"),
		pidPath:      filepath.Join(cfg.Dir, "haproxy.pid"),
		mapPath:      cfg.Settings.MapFile,
		statePath:    filepath.Join(cfg.Dir, "haproxy.state.json"),
		pendingPath:  filepath.Join(cfg.Dir, "runtime.pending"),
		changed:      make(chan struct{}),
		wake:         make(chan struct{}, 1),
		fileWake:     make(chan struct{}, 1),
		served:       &portSet{},
	}
	m.rt = runtimeConn{sock: cfg.Settings.StatsSocket, master: m.sockPath}
	if m.mapPath != "" {
		m.lastGoodMapPath = m.mapPath + ".last-good"
	}
	return m, nil
}

// Start adopts the HAProxy master already running from Dir (pid file names
// a live process whose master CLI answers `show proc`) without restarting or
// reloading it, or else starts one from the configuration on disk (an empty
// one when there is none). It then runs the apply loop until Close.
func (m *Manager) Start(ctx context.Context) error {
	err := errors.New("haproxy manager already started")
	m.startOnce.Do(func() { err = m.start(ctx) })
	return err
}

func (m *Manager) start(ctx context.Context) error {
	if err := os.MkdirAll(m.cfg.Dir, 0o755); err != nil {
		return fmt.Errorf("haproxy runtime dir: %w", err)
	}
	if err := m.prepareIsolation(); err != nil {
		return err
	}
	m.opMu.Lock()
	p, adopted := m.adopt(ctx)
	var err error
	if !adopted {
		p, err = m.startFromDisk(ctx)
	}
	m.noteMaster(p)
	m.opMu.Unlock()
	if err != nil {
		return err
	}
	m.update(func(s *Status) {
		s.Running, s.MasterPID, s.Adopted, s.Version = true, p.MasterPID, adopted, p.Version
		s.DynamicPorts, s.Workers.BudgetBytes = m.cfg.Settings.DynamicPorts, m.cfg.OldWorkersMaxBytes
		s.ConfigHash = m.appliedHash
	})
	m.metrics.setRunning(true)
	m.log.Info("haproxy master ready", "pid", p.MasterPID, "adopted", adopted, "version", p.Version)
	if adopted {
		m.warnAdoptedUser()
	}

	loopCtx, cancel := context.WithCancel(context.Background())
	m.cancel, m.done = cancel, make(chan struct{})
	filesDone, workersDone := make(chan struct{}), make(chan struct{})
	go func() { defer close(filesDone); m.runFiles(loopCtx) }()
	go func() { defer close(workersDone); m.runWorkers(loopCtx) }()
	go func() { m.run(loopCtx); <-filesDone; <-workersDone; close(m.done) }()
	return nil
}

// adopt takes over a running master. It gives a master in the middle of a
// reload a moment to answer.
func (m *Manager) adopt(ctx context.Context) (procInfo, bool) {
	pid, err := readPIDFile(m.pidPath)
	if err != nil || !processAlive(pid) {
		return procInfo{}, false
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		p, err := showProc(ctx, m.sockPath)
		if err == nil && p.MasterPID == pid {
			cfg, err := os.ReadFile(m.cfgPath)
			if err != nil {
				m.log.Warn("adopted haproxy but cannot read its config", "err", err)
			}
			m.loadInstalled(cfg)
			if _, err := os.Stat(m.pendingPath); err == nil {
				// The agent stopped between runtime changes and writing
				// them, or between installing a config and confirming its
				// reload: what the worker serves is not what the files say.
				// The next change reloads, rendering the route table.
				m.log.Warn("adopted haproxy runs changes its files do not hold yet; the next change reloads it")
				m.appliedHash, m.running, m.runLayout = "", nil, nil
				m.markMu.Lock()
				m.marked = true
				m.markMu.Unlock()
			}
			return p, true
		}
		if time.Now().After(deadline) || ctx.Err() != nil || !processAlive(pid) {
			m.log.Warn("haproxy pid file names a live process whose master CLI does not answer; starting a new master", "pid", pid, "err", err)
			return procInfo{}, false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startFromDisk starts a master from haproxy.cfg, else from last-good, else
// from an empty configuration, each only if it passes haproxy -c and the
// master comes up with it (a port taken meanwhile makes it fail).
func (m *Manager) startFromDisk(ctx context.Context) (procInfo, error) {
	var errs []error
	if err := m.ensureMap(); err != nil {
		return procInfo{}, err
	}
	candidates := []string{m.cfgPath, m.lastGoodPath, ""}
	for _, path := range candidates {
		var cfg, mapData []byte
		var emptyLayout *layout
		if path == "" {
			r, lay, _ := render(m.cfg.Settings, nil, nil, m.rangeHoles())
			cfg, mapData, emptyLayout = r.Config, r.Map, lay
		} else {
			b, err := os.ReadFile(path)
			if err != nil {
				if !os.IsNotExist(err) {
					errs = append(errs, err)
				}
				continue
			}
			cfg = b
		}
		tmp, err := m.writeTemp(cfg)
		if err != nil {
			return procInfo{}, err
		}
		if err := m.check(ctx, tmp); err != nil {
			os.Remove(tmp)
			errs = append(errs, err)
			continue
		}
		if err := os.Rename(tmp, m.cfgPath); err != nil {
			os.Remove(tmp)
			return procInfo{}, fmt.Errorf("install haproxy config: %w", err)
		}
		if path != m.cfgPath && m.mapPath != "" {
			// The map goes with the configuration it was rendered for.
			mp := m.lastGoodMapPath
			if path == "" {
				mp = ""
			}
			if err := m.installMapFrom(mp, mapData); err != nil {
				return procInfo{}, err
			}
		}
		syncDir(m.cfg.Dir)
		p, err := m.startMaster(ctx)
		if err != nil {
			errs = append(errs, err)
			m.log.Warn("haproxy failed to start", "config", path, "err", err)
			continue
		}
		m.loadInstalled(cfg)
		if path == "" && m.mapPath != "" {
			m.running, m.runLayout = []Frontend{}, emptyLayout
		}
		// A new master serves exactly the files: nothing runtime-only.
		m.markMu.Lock()
		if err := os.Remove(m.pendingPath); err == nil || os.IsNotExist(err) {
			m.marked = false
		}
		m.latestGen = m.gen
		m.markMu.Unlock()
		if path != m.cfgPath {
			m.retry = true // what is live is a fallback; re-apply the desired routes
		}
		return p, nil
	}
	return procInfo{}, errors.Join(errs...) // each says "start haproxy"
}

// Submit hands the Manager the frontends of route table index. It never
// blocks; the latest submission wins and bursts are coalesced. It copies
// fes, so the caller may change them afterwards.
func (m *Manager) Submit(index uint64, fes []Frontend) {
	cp := make([]Frontend, len(fes))
	for i, fe := range fes {
		fe.Servers = slices.Clone(fe.Servers)
		cp[i] = fe
	}
	m.SubmitShared(index, cp)
}

// SubmitShared is Submit without the copy, for a caller that never changes
// fes, nor any Frontend's Servers, once submitted (the Manager never
// changes them either): the agent's feed shares the frontends of unchanged
// routes between submissions, so a write costs one converted route instead
// of a copy of the table.
func (m *Manager) SubmitShared(index uint64, fes []Frontend) {
	now := time.Now()
	m.mu.Lock()
	if m.pending == nil {
		m.firstPending = now
	}
	m.pending = &submission{index: index, fes: fes}
	m.lastSubmit = now
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// Status returns a copy of the current status.
func (m *Manager) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.status
	s.FailedPorts = slices.Clone(s.FailedPorts)
	return s
}

// WaitApplied blocks until AppliedIndex >= index or ctx ends.
func (m *Manager) WaitApplied(ctx context.Context, index uint64) error {
	for {
		m.mu.Lock()
		applied, ch := m.status.AppliedIndex, m.changed
		m.mu.Unlock()
		if applied >= index {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for haproxy to apply index %d (applied %d): %w", index, applied, ctx.Err())
		}
	}
}

// Close stops the apply loop. HAProxy keeps running and serving the last
// applied configuration: stopping the agent never stops traffic. A new
// Manager on the same Dir adopts it.
func (m *Manager) Close() error {
	m.mu.Lock()
	cancel, done := m.cancel, m.done
	m.cancel = nil
	m.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	m.opMu.Lock()
	m.rt.close()
	m.opMu.Unlock()
	return nil
}

// StopHAProxy stops the master and its workers (soft stop, then kill) and
// keeps the Manager from starting it again. For tests and uninstall.
func (m *Manager) StopHAProxy(ctx context.Context) error {
	m.mu.Lock()
	m.stopped = true
	pid := m.status.MasterPID
	m.mu.Unlock()
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.rt.close()
	if p, err := readPIDFile(m.pidPath); err == nil {
		pid = p
	}
	grace := 5 * time.Second
	if d, ok := ctx.Deadline(); ok {
		grace = time.Until(d) / 2
	}
	err := stopMaster(ctx, pid, grace)
	if err == nil {
		_ = os.Remove(m.pidPath)
	}
	m.update(func(s *Status) { s.Running = false })
	m.metrics.setRunning(false)
	return err
}

// update changes the status under the lock and wakes WaitApplied callers.
func (m *Manager) update(f func(*Status)) {
	m.mu.Lock()
	f(&m.status)
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
}

func (m *Manager) recordError(msg string, err error) {
	text := msg
	if err != nil {
		text = msg + ": " + err.Error()
	}
	m.update(func(s *Status) { s.LastError, s.LastErrorAt = text, time.Now() })
	if err != nil {
		m.log.Error(msg, "err", err)
	} else {
		m.log.Error(msg)
	}
}

// run is the apply loop: it owns every HAProxy operation after Start.
func (m *Manager) run(ctx context.Context) {
	health := time.NewTicker(m.cfg.HealthInterval)
	defer health.Stop()
	retry := time.NewTicker(m.cfg.RetryInterval)
	defer retry.Stop()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		m.mu.Lock()
		due, has := m.firstPending.Add(m.cfg.MaxDelay), m.pending != nil
		if q := m.lastSubmit.Add(m.cfg.QuietWindow); q.Before(due) {
			due = q
		}
		fresh := has && m.pending != m.fastTried
		m.mu.Unlock()
		if fresh && m.tryFast(ctx) {
			continue
		}
		if has {
			wait := time.Until(due)
			if wait <= 0 {
				m.applyPending(ctx)
				continue
			}
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return
		case <-m.wake:
		case <-timer.C:
		case <-health.C:
			m.checkHealth(ctx)
		case <-retry.C:
			m.opMu.Lock()
			sub, again := m.desired, m.retry
			m.opMu.Unlock()
			m.mu.Lock()
			again = again && !has && m.pending == nil
			m.mu.Unlock()
			if again && sub != nil {
				m.apply(ctx, sub)
			}
		}
	}
}

// tryFast applies the pending submission at once when the runtime API can
// make it (no coalescing wait: such a change costs about a millisecond, and
// the quiet window would be most of its latency). Otherwise it leaves the
// submission pending, marked tried, for the coalesced full path.
func (m *Manager) tryFast(ctx context.Context) bool {
	m.mu.Lock()
	sub := m.pending
	m.pending = nil
	stopped := m.stopped
	m.mu.Unlock()
	if sub == nil || stopped {
		return false
	}
	m.opMu.Lock()
	kept, failed := m.probe(sub.fes)
	prevRetry := m.retry
	m.retry = false
	ok := m.applyFast(ctx, sub.index, kept, failed)
	if ok {
		m.desired = sub
	} else {
		m.retry = prevRetry
	}
	m.opMu.Unlock()
	if !ok {
		m.mu.Lock()
		if m.pending == nil {
			m.pending = sub
		}
		m.fastTried = m.pending
		m.mu.Unlock()
	}
	return ok
}

func (m *Manager) applyPending(ctx context.Context) {
	m.mu.Lock()
	sub := m.pending
	m.pending = nil
	m.mu.Unlock()
	if sub != nil {
		m.apply(ctx, sub)
	}
}

// apply makes sub live. When the running worker's state is known and the
// change is one the runtime API can make (servers of existing backends,
// routes in the dynamic range), it is made there at once, without a render
// or a check on the way, and the files catch up in the background.
// Otherwise: probe new ports, render, skip if unchanged, check, install,
// reload and confirm. A configuration that fails haproxy -c is never
// installed.
func (m *Manager) apply(ctx context.Context, sub *submission) {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.desired = sub
	m.retry = false
	m.mu.Lock()
	stopped := m.stopped
	m.mu.Unlock()
	if stopped {
		return
	}
	kept, failed := m.probe(sub.fes)
	kept, failed = m.skipReloadHeld(kept, failed)
	if m.applyFast(ctx, sub.index, kept, failed) {
		return
	}
	err := m.applyFull(ctx, sub.index, kept, failed)
	var rejected *rejectedError
	var invalid *ValidationError
	if !errors.As(err, &rejected) || ctx.Err() != nil || !(errors.As(err, &invalid) || errors.Is(err, errReloadFailed)) {
		// Only a configuration HAProxy refused can be narrowed down; a
		// master that died or did not answer is the health check's.
		return
	}
	// The check or reload failed. Frontends the live worker already serves
	// (with their new servers, and without the deleted ones) can still
	// change: hold back the new ones and apply the rest, so one change
	// that cannot be applied does not stall every later one.
	safe, held := m.splitNew(kept)
	if len(held) == 0 {
		return
	}
	reason := "held back: the reload adding it failed: " + truncateText(err.Error(), 300) + capacityNote(m.cfg.Settings, kept)
	if m.reloadHeld == nil {
		m.reloadHeld = map[int]string{}
	}
	for _, fe := range held {
		m.reloadHeld[fe.Port] = reason
		failed = append(failed, PortFailure{Port: fe.Port, Name: fe.Name, Error: reason})
	}
	m.reloadHeldUntil = time.Now().Add(m.reloadBackoff())
	slices.SortFunc(failed, func(a, b PortFailure) int { return a.Port - b.Port })
	m.log.Warn("applying the table without the routes the failed reload would add", "index", sub.index,
		"held_back", len(held), "retry_in", m.reloadBackoff())
	if !m.applyFast(ctx, sub.index, safe, failed) {
		_ = m.applyFull(ctx, sub.index, safe, failed)
	}
	m.retry = true
}

// rejectedError is a configuration haproxy -c refused, or a reload that
// failed: what a smaller table may still get past.
type rejectedError struct{ err error }

func (e *rejectedError) Error() string { return e.err.Error() }
func (e *rejectedError) Unwrap() error { return e.err }

// reloadBackoff is how long frontends whose reload failed stay held back
// before a reload with them is tried again.
func (m *Manager) reloadBackoff() time.Duration { return 10 * m.cfg.RetryInterval }

// skipReloadHeld moves the frontends held back by a failed reload from kept
// to failed while their backoff lasts; after it, they are tried again.
func (m *Manager) skipReloadHeld(kept []Frontend, failed []PortFailure) ([]Frontend, []PortFailure) {
	if len(m.reloadHeld) == 0 {
		return kept, failed
	}
	if !time.Now().Before(m.reloadHeldUntil) {
		m.reloadHeld = nil
		return kept, failed
	}
	out := kept[:0:0]
	for _, fe := range kept {
		if reason, ok := m.reloadHeld[fe.Port]; ok {
			failed = append(failed, PortFailure{Port: fe.Port, Name: fe.Name, Error: reason})
			continue
		}
		out = append(out, fe)
	}
	slices.SortFunc(failed, func(a, b PortFailure) int { return a.Port - b.Port })
	return out, failed
}

// splitNew splits fes into those whose port the live configuration binds
// already and the new ones.
func (m *Manager) splitNew(fes []Frontend) (existing, added []Frontend) {
	for _, fe := range fes {
		if m.served.has(fe.Port) {
			existing = append(existing, fe)
		} else {
			added = append(added, fe)
		}
	}
	return existing, added
}

// applyFast makes the change through the runtime API when it can, and
// reports whether the submission is now applied.
func (m *Manager) applyFast(ctx context.Context, index uint64, kept []Frontend, failed []PortFailure) bool {
	s := m.cfg.Settings
	if m.running == nil || s.StatsSocket == "" {
		return false
	}
	start := time.Now()
	plan, ok := planRuntime(s, m.running, m.runLayout, kept, m.served)
	if !ok {
		return false
	}
	if len(plan.cmds) == 0 {
		// Nothing the worker sees changed; at most a name in a comment.
		if !slices.EqualFunc(m.running, kept, frontendEqual) {
			m.running = kept
			m.gen++
			m.scheduleFiles(m.gen, kept, plan.layout)
		}
		m.recordApplied(index, "", failed, false, 0)
		return true
	}
	m.gen++
	if err := m.markPending(m.gen); err != nil {
		m.log.Warn("cannot mark runtime changes pending; reloading instead", "err", err)
		return false
	}
	if err := m.applyRuntime(ctx, plan.cmds); err != nil {
		// What the worker runs is unknown now: the reload renders it all.
		m.running, m.runLayout, m.appliedHash = nil, nil, ""
		m.log.Warn("runtime API update failed; reloading instead", "index", index, "err", err)
		return false
	}
	m.running, m.runLayout, m.appliedHash = kept, plan.layout, ""
	m.scheduleFiles(m.gen, kept, plan.layout)
	took := time.Since(start)
	m.update(func(s *Status) { s.RuntimeUpdates++ })
	if m.metrics != nil {
		m.metrics.runtimeUpdates.Inc()
		m.metrics.runtimeDuration.Observe(took.Seconds())
	}
	m.log.Info("haproxy changed through the runtime API, no reload", "index", index,
		"commands", len(plan.cmds), "dynamic_routes", plan.routes, "took", took)
	m.recordApplied(index, "", failed, false, 0)
	return true
}

// applyFull renders everything, checks it, installs it and reloads.
//
// It returns the error that kept sub from being applied (nil once it is).
func (m *Manager) applyFull(ctx context.Context, index uint64, kept []Frontend, failed []PortFailure) error {
	s := m.cfg.Settings
	rStart := time.Now()
	rendered, lay, renderErr := render(s, kept, nil, m.rangeHoles())
	hash := rendered.Hash()
	renderTook := time.Since(rStart)
	if m.metrics != nil {
		m.metrics.renderDuration.Observe(renderTook.Seconds())
	}
	if renderErr != nil {
		m.log.Warn("render left out values", "index", index, "err", renderErr)
	}
	if hash == m.appliedHash {
		m.running, m.runLayout = kept, lay
		m.recordApplied(index, hash, failed, false, 0)
		return nil
	}

	tmp, err := m.writeTemp(rendered.Config)
	if err != nil {
		m.recordError("write haproxy config", err)
		return err
	}
	defer os.Remove(tmp)
	if err := m.ensureMap(); err != nil {
		m.recordError("write haproxy map", err)
		return err
	}
	vStart := time.Now()
	err = m.check(ctx, tmp)
	checkTook := time.Since(vStart)
	if m.metrics != nil {
		m.metrics.validationDuration.Observe(checkTook.Seconds())
	}
	if err != nil {
		if m.metrics != nil {
			m.metrics.validationFailures.Inc()
		}
		m.recordError(fmt.Sprintf("haproxy config for index %d rejected, keeping the live one", index), err)
		return &rejectedError{err}
	}
	m.fileMu.Lock()
	defer m.fileMu.Unlock()
	m.gen++
	// From the install until the reload is confirmed, the files are ahead
	// of the worker: an agent that dies in between must not let the next
	// one adopt the new file as what runs (it would skip the reload and
	// report a route live that refuses connections). runtime.pending says
	// so; a confirmed reload or a fresh master removes it.
	if err := m.markPending(m.gen); err != nil {
		m.recordError("mark haproxy config pending", err)
		return err
	}
	if err := m.install(tmp, rendered.Map); err != nil {
		m.recordError("install haproxy config", err)
		return err
	}
	m.installedGen = m.gen
	if m.crashAfterInstall != nil && m.crashAfterInstall() {
		return errors.New("stopped after install (test)")
	}

	reloadStart := time.Now()
	err = m.reload(ctx)
	took := time.Since(reloadStart)
	if err != nil && ctx.Err() != nil {
		// Stopping while the reload was being confirmed: the master may
		// well run the new file. Keep it and runtime.pending, so the next
		// manager trusts neither and reloads with the route table; putting
		// last-good back would make it think the new ports are not ours.
		m.running, m.runLayout, m.appliedHash = nil, nil, ""
		m.log.Warn("stopped while confirming a reload; the next start reloads", "index", index, "err", err)
		return err
	}
	if err != nil {
		if m.metrics != nil {
			m.metrics.reloadFailures.Inc()
		}
		if rerr := m.restoreLastGood(); rerr != nil {
			err = errors.Join(err, rerr)
		}
		// A port may have been taken between the probe and the reload: probe
		// again so the next attempt holds it back.
		_, again := m.probe(kept)
		if len(again) > 0 {
			m.retry = true
			for _, f := range again {
				err = fmt.Errorf("%w; port %d (%s): %s", err, f.Port, f.Name, f.Error)
			}
		}
		m.recordError(fmt.Sprintf("reload haproxy for index %d failed, old workers keep serving", index), err)
		return &rejectedError{err}
	}
	m.appliedHash, m.served, m.running, m.runLayout = hash, boundPorts(rendered.Config), kept, lay
	m.saveState(hash, kept, lay)
	m.clearPending(m.gen)
	if m.metrics != nil {
		m.metrics.reloads.Inc()
		m.metrics.reloadDuration.Observe(took.Seconds())
	}
	m.log.Info("haproxy reloaded", "index", index, "hash", hash[:12], "frontends", len(kept),
		"held_back", len(failed), "render", renderTook, "check", checkTook, "reload", took)
	m.recordApplied(index, hash, failed, true, took)
	return nil
}

// check runs haproxy -c on path, bounded by CheckTimeout.
func (m *Manager) check(ctx context.Context, path string) error {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.CheckTimeout)
	defer cancel()
	return Validate(ctx, m.cfg.Bin, path)
}

// applyRuntime sends cmds to the running worker's runtime API, several per
// request line, and checks every answer. A failed command does not stop
// the ones after it on the same line: the caller then reloads, which makes
// the file authoritative again whatever was applied. `shutdown sessions`
// closes a server's connections asynchronously and HAProxy refuses to
// delete a server that still has some, so a `del server` refused for that
// reason is sent again, alone, once the lines are through (see delServer).
// Nothing in a plan runs after a `del server` that needs it done, so the
// common case, a server without connections, costs no exchange of its own:
// one exchange per line instead of one per deleted server cut the
// runtime API's CPU per replaced server by about two thirds, in the
// worker and here alike. The lines go over the kept-open connection (see
// runtimeConn).
func (m *Manager) applyRuntime(ctx context.Context, cmds []string) error {
	var busy []string
	for _, line := range batchRuntime(cmds) {
		out, err := m.runtime(ctx, line.text, len(line.cmds))
		if err != nil {
			return err
		}
		b, err := readAnswers(line.cmds, out)
		if err != nil {
			m.rt.close() // out of step, perhaps: start afresh next time
			return err
		}
		busy = append(busy, b...)
	}
	if len(busy) > 0 {
		m.log.Debug("removed servers still closing connections; deleting them once closed", "servers", len(busy))
	}
	for _, c := range busy {
		if err := m.delServer(ctx, c); err != nil {
			return err
		}
	}
	return nil
}

// runtime sends line (n commands) on the kept-open runtime API connection
// and returns the answers.
func (m *Manager) runtime(ctx context.Context, line string, n int) (string, error) {
	return m.rt.exchange(ctx, line, n)
}

// delServerWait bounds how long a `del server` waits for the server's
// connections to close after `shutdown sessions`.
const delServerWait = 2 * time.Second

func (m *Manager) delServer(ctx context.Context, cmd string) error {
	deadline := time.Now().Add(delServerWait)
	for {
		out, err := m.runtime(ctx, cmd, 1)
		if err != nil {
			return err
		}
		busy, err := readAnswers([]string{cmd}, out)
		if err != nil || len(busy) == 0 {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("runtime API %q: %q", cmd, strings.TrimSpace(out))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func truncateText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// probe splits fes into those whose port is served already or can be bound
// now, and those held back. A port that cannot be bound because this
// HAProxy listens on it is served, whatever the files say (after an
// adoption they may not say what runs).
func (m *Manager) probe(fes []Frontend) (kept []Frontend, failed []PortFailure) {
	// The common case, every port bound already (any runtime API change):
	// fes itself, which nobody changes, instead of a copy of the table.
	all := true
	for _, fe := range fes {
		if !m.served.has(fe.Port) {
			all = false
			break
		}
	}
	if all {
		return fes, nil
	}
	kept = make([]Frontend, 0, len(fes))
	var own map[int]bool
	for _, fe := range fes {
		if !m.served.has(fe.Port) {
			if err := probePort(m.cfg.Settings.BindAddress, fe.Port); err != nil {
				if own == nil {
					m.mu.Lock()
					pid := m.status.MasterPID
					m.mu.Unlock()
					own = listeningPorts(pid)
					if m.cfg.isolated() {
						// Another user's descriptors are closed to the
						// agent: ask the current worker what it serves.
						maps.Copy(own, openFrontendPorts(context.Background(), m.sockPath))
					}
				}
				if !own[fe.Port] {
					failed = append(failed, PortFailure{Port: fe.Port, Name: fe.Name, Error: err.Error()})
					continue
				}
				m.served.add(fe.Port)
			}
		}
		kept = append(kept, fe)
	}
	slices.SortFunc(failed, func(a, b PortFailure) int { return a.Port - b.Port })
	return kept, failed
}

func (m *Manager) recordApplied(index uint64, hash string, failed []PortFailure, reloaded bool, took time.Duration) {
	m.mu.Lock()
	same := slices.Equal(failed, m.status.FailedPorts)
	m.mu.Unlock()
	if len(failed) > 0 {
		m.retry = true
	}
	if len(failed) > 0 && !same {
		var parts []string
		for _, f := range failed {
			parts = append(parts, fmt.Sprintf("%d (%s): %s", f.Port, f.Name, f.Error))
		}
		m.recordError("frontends held back, not served", errors.New(strings.Join(parts, "; ")))
	}
	now := time.Now()
	m.update(func(s *Status) {
		if index > s.ServedIndex {
			s.ServedIndex = index
		}
		// Routes held back are not applied: the index counts only once
		// every route of it is served (a retry that binds them gets there).
		if index > s.AppliedIndex && len(failed) == 0 {
			s.AppliedIndex = index
		}
		if hash != "" { // "" after a runtime change: the file writer sets it
			s.ConfigHash = hash
		}
		s.AppliedAt, s.FailedPorts = now, failed
		if reloaded {
			s.Reloads++
			s.LastReloadAt, s.LastReloadDuration = now, took
		}
		if m.metrics != nil {
			m.metrics.appliedIndex.Set(float64(s.AppliedIndex))
			m.metrics.heldBack.Set(float64(len(failed)))
		}
	})
}

// writeTemp writes cfg to a new file in Dir and fsyncs it.
func (m *Manager) writeTemp(cfg []byte) (string, error) {
	f, err := os.CreateTemp(m.cfg.Dir, "haproxy.cfg.tmp-*")
	if err != nil {
		return "", err
	}
	// HAProxy's own user reads it through its group.
	if err := m.shareFile(f); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", err
	}
	if _, err := f.Write(cfg); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", err
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// install keeps the live haproxy.cfg as haproxy.cfg.last-good and renames
// tmp over haproxy.cfg; both steps are atomic renames. The map of the
// dynamic range (when there is one) goes first, the same way, so the
// configuration never names a map it was not rendered with for longer than
// the two renames.
func (m *Manager) install(tmp string, mapData []byte) error {
	if m.mapPath != "" {
		if _, err := os.Stat(m.mapPath); err == nil {
			if err := replaceWithLink(m.mapPath, m.lastGoodMapPath); err != nil {
				return fmt.Errorf("keep last-good map: %w", err)
			}
		}
		if err := m.installMapFrom("", mapData); err != nil {
			return err
		}
	}
	if _, err := os.Stat(m.cfgPath); err == nil {
		if err := replaceWithLink(m.cfgPath, m.lastGoodPath); err != nil {
			return fmt.Errorf("keep last-good: %w", err)
		}
	}
	if err := os.Rename(tmp, m.cfgPath); err != nil {
		return err
	}
	syncDir(m.cfg.Dir)
	return nil
}

// restoreLastGood puts haproxy.cfg.last-good back as haproxy.cfg, so that a
// later restart of the master uses the configuration the workers run.
func (m *Manager) restoreLastGood() error {
	if _, err := os.Stat(m.lastGoodPath); err != nil {
		return fmt.Errorf("restore last-good: %w", err)
	}
	if err := replaceWithLink(m.lastGoodPath, m.cfgPath); err != nil {
		return fmt.Errorf("restore last-good: %w", err)
	}
	if m.mapPath != "" {
		if err := m.installMapFrom(m.lastGoodMapPath, nil); err != nil {
			return fmt.Errorf("restore last-good: %w", err)
		}
	}
	syncDir(m.cfg.Dir)
	return nil
}

// replaceWithLink atomically makes dst a hard link to src's content.
func replaceWithLink(src, dst string) error {
	tmp := dst + ".tmp-link"
	_ = os.Remove(tmp)
	if err := os.Link(src, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// reload asks the master to reload and waits until `show proc` confirms it:
// the reload counter went up, the failure counter did not, and a new worker
// exists. The master CLI refuses connections while the master re-executes.
func (m *Manager) reload(ctx context.Context) error {
	m.rt.close() // it belongs to the worker this reload replaces
	before, err := showProc(ctx, m.sockPath)
	if err != nil {
		return fmt.Errorf("reload haproxy: master not answering: %w", err)
	}
	m.makeRoom(ctx, before)
	// The connection is closed or reset when the master re-executes; that
	// is the expected answer, so only a failure to connect counts.
	var opErr *net.OpError
	if _, err := masterCommand(ctx, m.sockPath, "reload"); errors.As(err, &opErr) && opErr.Op == "dial" {
		return fmt.Errorf("reload haproxy: %w", err)
	}
	deadline := time.Now().Add(m.cfg.ReloadTimeout)
	var last error
	for {
		p, err := showProc(ctx, m.sockPath)
		switch {
		case err != nil:
			last = err
		case p.Failed > before.Failed:
			m.noteMaster(p)
			return fmt.Errorf("reload haproxy: %w (failed: %d)", errReloadFailed, p.Failed)
		case p.Reloads > before.Reloads && p.hasNewWorker():
			m.noteMaster(p)
			m.update(func(s *Status) { s.MasterPID, s.Version = p.MasterPID, p.Version })
			return nil
		default:
			last = fmt.Errorf("reloads %d -> %d, no new worker yet", before.Reloads, p.Reloads)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("reload haproxy: not confirmed within %v: %w", m.cfg.ReloadTimeout, last)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("reload haproxy: %w", ctx.Err())
		}
		if err != nil && !processAlive(before.MasterPID) {
			// A master re-executing keeps its PID; one that is gone died,
			// and waiting out the timeout would only keep the health check
			// from noticing and restarting it.
			return fmt.Errorf("reload haproxy: master %d died: %w", before.MasterPID, last)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// noticeOutsideReload compares the master's reload count from `show proc`
// with the last one this Manager caused. A higher one means HAProxy was
// reloaded behind its back (a signal to the master, say): the new worker
// runs the files, which may not hold the latest runtime changes yet, and
// the kept-open runtime API connection may still reach the old worker, which
// lives on while clients hold connections to it. So the connection is
// dropped and the table applied again in full. It skips the check while an
// operation holds the Manager (its own reload, for one) rather than wait.
func (m *Manager) noticeOutsideReload(p procInfo) {
	if !m.opMu.TryLock() {
		return
	}
	defer m.opMu.Unlock()
	if p.Reloads <= m.masterReloads {
		return
	}
	m.log.Warn("haproxy was reloaded outside drawbridge; applying the route table again", "reloads", p.Reloads, "expected", m.masterReloads)
	m.noteMaster(p)
	m.rt.close()
	m.running, m.runLayout, m.appliedHash = nil, nil, ""
	m.retry = true
}

// noteMaster records the master's reload count and its current worker, the
// only one runtime API changes may reach (see runtimeConn.worker). Callers
// hold opMu.
func (m *Manager) noteMaster(p procInfo) {
	m.masterReloads = p.Reloads
	m.rt.worker = p.currentWorker()
}

// errReloadFailed is HAProxy's master saying a reload failed: the new
// configuration could not start (in 2.6 it says no more than that).
var errReloadFailed = errors.New("master reported a failed reload")

// checkHealth restarts the master from the last installed configuration
// when it has died.
func (m *Manager) checkHealth(ctx context.Context) {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	pid, stopped := m.status.MasterPID, m.stopped
	m.mu.Unlock()
	if stopped || processAlive(pid) {
		return
	}
	m.metrics.setRunning(false)
	m.update(func(s *Status) { s.Running = false })
	m.recordError(fmt.Sprintf("haproxy master %d died, restarting it", pid), nil)
	m.rt.close()
	p, err := m.startFromDisk(ctx)
	if err != nil {
		m.recordError("restart haproxy", err)
		return
	}
	m.noteMaster(p)
	m.retry = true     // re-check held-back ports and fallbacks against the desired routes
	m.reloadHeld = nil // a fresh master: try everything again
	m.metrics.setRunning(true)
	m.update(func(s *Status) {
		s.Running, s.MasterPID, s.Version, s.Adopted = true, p.MasterPID, p.Version, false
		s.ConfigHash = m.appliedHash
		s.Restarts++
	})
	m.log.Info("haproxy master restarted", "pid", p.MasterPID)
}
