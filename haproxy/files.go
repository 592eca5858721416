package haproxy

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"time"
)

// Changes made through the runtime API are live before haproxy.cfg and the
// map say so: rendering and checking a large table on every change is what
// made server-only changes cost more with every route. The file writer
// (runFiles) renders the latest runtime state in the background, checks it
// and installs it, so a later reload or restart starts from exactly what
// the worker serves. Until it has, runtime.pending exists: an agent that
// adopts a master while it does cannot know what the worker serves, and
// reloads with the route table on its next change.
//
// haproxy.state.json records the frontends and slot layout the installed
// files render, with their hash, so a manager that adopts or restarts the
// master can keep making runtime changes instead of reloading first.

// fileJob is a runtime state for the file writer.
type fileJob struct {
	gen uint64
	fes []Frontend
	lay *layout
}

// savedState is haproxy.state.json.
type savedState struct {
	Hash      string     `json:"hash"`
	Frontends []Frontend `json:"frontends"`
	Layout    *layout    `json:"layout,omitempty"`
}

// scheduleFiles hands the file writer the latest runtime state.
func (m *Manager) scheduleFiles(gen uint64, fes []Frontend, lay *layout) {
	m.mu.Lock()
	m.fileJob = &fileJob{gen: gen, fes: fes, lay: lay}
	m.mu.Unlock()
	select {
	case m.fileWake <- struct{}{}:
	default:
	}
}

// fileQuiet is how long the file writer waits for runtime changes to stop
// before it renders and checks: a burst of changes costs one catch-up, not
// one per change (a check of 10,000 routes takes seconds of CPU).
const fileQuiet = 200 * time.Millisecond

// runFiles is the file writer loop.
func (m *Manager) runFiles(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.fileWake:
		}
		for quiet := false; !quiet; {
			select {
			case <-ctx.Done():
				return
			case <-m.fileWake:
			case <-time.After(fileQuiet):
				quiet = true
			}
		}
		m.mu.Lock()
		job := m.fileJob
		m.fileJob = nil
		m.mu.Unlock()
		if job != nil {
			m.writeFiles(ctx, job)
		}
	}
}

// writeFiles renders job, checks it and installs it unless a newer state
// was installed meanwhile (a reload installs its own files).
func (m *Manager) writeFiles(ctx context.Context, job *fileJob) {
	start := time.Now()
	var holes []int
	if job.lay != nil {
		holes = job.lay.Holes
	}
	rendered, _, err := render(m.cfg.Settings, job.fes, job.lay, holes)
	if err != nil {
		m.log.Warn("render of the runtime state left out values", "err", err)
	}
	tmp, err := m.writeTemp(rendered.Config)
	if err != nil {
		m.recordError("write haproxy config after runtime changes", err)
		return
	}
	defer os.Remove(tmp)
	if err := m.ensureMap(); err != nil {
		m.recordError("write haproxy map after runtime changes", err)
		return
	}
	if err := m.check(ctx, tmp); err != nil {
		if ctx.Err() == nil {
			m.recordError("haproxy rejected the configuration of the runtime state; the next change reloads", err)
		}
		return
	}
	m.fileMu.Lock()
	defer m.fileMu.Unlock()
	if job.gen <= m.installedGen {
		return
	}
	if err := m.install(tmp, rendered.Map); err != nil {
		m.recordError("install haproxy config after runtime changes", err)
		return
	}
	m.installedGen = job.gen
	hash := rendered.Hash()
	m.saveState(hash, job.fes, job.lay)
	if m.clearPending(job.gen) {
		m.update(func(s *Status) { s.ConfigHash = hash })
	}
	m.log.Debug("haproxy files caught up with runtime changes", "hash", hash[:12], "took", time.Since(start))
}

// markPending records that the worker is about to run gen, ahead of the
// files.
func (m *Manager) markPending(gen uint64) error {
	m.markMu.Lock()
	defer m.markMu.Unlock()
	m.latestGen = gen
	if m.marked {
		return nil
	}
	if err := os.WriteFile(m.pendingPath, nil, 0o644); err != nil {
		return err
	}
	m.marked = true
	return nil
}

// clearPending removes the marker when gen is what the worker runs, and
// reports whether it is.
func (m *Manager) clearPending(gen uint64) bool {
	m.markMu.Lock()
	defer m.markMu.Unlock()
	if gen < m.latestGen {
		return false
	}
	m.latestGen = gen
	if m.marked {
		if err := os.Remove(m.pendingPath); err != nil && !os.IsNotExist(err) {
			m.log.Warn("remove runtime.pending", "err", err)
			return true
		}
		m.marked = false
	}
	return true
}

// saveState writes haproxy.state.json for the installed files.
func (m *Manager) saveState(hash string, fes []Frontend, lay *layout) {
	b, err := json.Marshal(savedState{Hash: hash, Frontends: fes, Layout: lay})
	if err == nil {
		tmp := m.statePath + ".tmp"
		if err = os.WriteFile(tmp, b, 0o644); err == nil {
			err = os.Rename(tmp, m.statePath)
		}
	}
	if err != nil {
		m.log.Warn("write haproxy state file", "err", err)
		_ = os.Remove(m.statePath)
	}
}

// loadInstalled sets what the live worker serves from the installed files
// (cfg is haproxy.cfg): the ports it binds, its hash and, when the state
// file matches them and the current settings, its frontends and layout.
func (m *Manager) loadInstalled(cfg []byte) {
	r := Rendered{Config: cfg}
	if m.mapPath != "" {
		r.Map, _ = os.ReadFile(m.mapPath)
	}
	m.appliedHash, m.served, m.running, m.runLayout = r.Hash(), boundPorts(cfg), nil, nil
	b, err := os.ReadFile(m.statePath)
	if err != nil {
		return
	}
	var st savedState
	if json.Unmarshal(b, &st) != nil || st.Hash != m.appliedHash {
		return
	}
	s, _, _ := checkSettings(m.cfg.Settings, func(string, ...any) {})
	if st.Layout != nil && (st.Layout.Range != s.DynamicPorts || st.Layout.Key != settingsKey(s)) {
		return
	}
	if st.Layout == nil && !s.DynamicPorts.Empty() {
		return
	}
	// Only a state that renders to exactly these files is trusted.
	var holes []int
	if st.Layout != nil {
		holes = st.Layout.Holes
	}
	again, _, _ := render(m.cfg.Settings, st.Frontends, st.Layout, holes)
	if again.Hash() != m.appliedHash {
		return
	}
	if st.Frontends == nil {
		st.Frontends = []Frontend{}
	}
	m.running, m.runLayout = st.Frontends, st.Layout
}

// ensureMap creates an empty map file when there is none, so that a
// configuration naming it passes haproxy -c.
func (m *Manager) ensureMap() error {
	if m.mapPath == "" {
		return nil
	}
	if _, err := os.Stat(m.mapPath); err == nil {
		return nil
	}
	return m.installMapFrom("", nil)
}

// installMapFrom makes the map file a link to src, or (src "" or missing)
// writes data to it; both atomically.
func (m *Manager) installMapFrom(src string, data []byte) error {
	if src != "" {
		if _, err := os.Stat(src); err == nil {
			return replaceWithLink(src, m.mapPath)
		}
	}
	tmp := m.mapPath + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("write haproxy map: %w", err)
	}
	err = m.shareFile(f)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, m.mapPath)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write haproxy map: %w", err)
	}
	return nil
}

// rangeHoles probes the ports of the dynamic range the live worker does not
// bind and returns those that cannot be bound now.
func (m *Manager) rangeHoles() []int {
	r := m.cfg.Settings.DynamicPorts
	var holes []int
	for p := r.First; !r.Empty() && p <= r.Last; p++ {
		if m.served.has(p) {
			continue
		}
		if probePort(m.cfg.Settings.BindAddress, p) != nil {
			holes = append(holes, p)
		}
	}
	return holes
}

// frontendEqual compares two frontends field by field.
func frontendEqual(a, b Frontend) bool {
	return a.Port == b.Port && a.Name == b.Name && a.Balance == b.Balance && a.Sticky == b.Sticky &&
		a.ProxyProtocol == b.ProxyProtocol && a.HealthCheck == b.HealthCheck && a.CheckPort == b.CheckPort &&
		a.CheckHTTP == b.CheckHTTP && slices.Equal(a.Servers, b.Servers)
}
