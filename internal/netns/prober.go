package netns

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// ProbeConfig tunes a [Prober]. The zero value probes every 20 ms with a
// 500 ms budget per attempt and counts any line read as a success.
type ProbeConfig struct {
	// Interval between the starts of two attempts (default 20 ms). Attempts
	// overlap when one takes longer, so a stalled connection does not
	// lower the sampling rate.
	Interval time.Duration
	// Timeout bounds one attempt: dial, write, read a line (default 500 ms).
	Timeout time.Duration
	// Send, when set, is written after connecting, for example
	// "GET /healthz HTTP/1.0\r\n\r\n" to probe through HAProxy.
	Send string
	// Expect, when set, must be contained in the line read.
	Expect string
}

// Attempt is the outcome of one probe.
type Attempt struct {
	Start, End time.Time
	OK         bool
	// Line is the line read (without newline) on success; Err the reason
	// of a failure.
	Line, Err string
}

// Window is one outage: from the start of the first failed attempt to the
// start of the next successful one. Open is true while no attempt has
// succeeded yet; End is then the end of the last failed attempt.
type Window struct {
	Start, End time.Time
	Open       bool
}

// Duration returns End - Start.
func (w Window) Duration() time.Duration { return w.End.Sub(w.Start) }

func (w Window) String() string {
	s := fmt.Sprintf("%s at %s", w.Duration().Round(time.Millisecond), w.Start.Format("15:04:05.000"))
	if w.Open {
		s += " (still failing)"
	}
	return s
}

// Prober measures the outages a client sees: from inside a host it opens a
// TCP connection to an address every interval, optionally sends a request,
// reads one line and records the result with timestamps. Start it with
// [Host.Probe]; it stops on [Prober.Stop] or when the lab closes.
type Prober struct {
	h    *Host
	addr string
	cfg  ProbeConfig

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	done   chan struct{}

	mu       sync.Mutex
	attempts []Attempt
	changed  chan struct{} // closed and replaced on every new attempt
}

// Probe starts probing addr ("ip:port") from h. The caller should Stop it;
// the lab stops it at the latest.
func (h *Host) Probe(addr string, cfg ProbeConfig) *Prober {
	if cfg.Interval <= 0 {
		cfg.Interval = 20 * time.Millisecond
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 500 * time.Millisecond
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Prober{h: h, addr: addr, cfg: cfg, ctx: ctx, cancel: cancel,
		done: make(chan struct{}), changed: make(chan struct{})}
	if !h.lab.onClose(p.Stop) {
		cancel()
		close(p.done)
		return p
	}
	go p.loop()
	return p
}

func (p *Prober) loop() {
	defer close(p.done)
	tick := time.NewTicker(p.cfg.Interval)
	defer tick.Stop()
	for {
		p.wg.Add(1)
		go p.attempt()
		select {
		case <-p.ctx.Done():
			p.wg.Wait()
			return
		case <-tick.C:
		}
	}
}

func (p *Prober) attempt() {
	defer p.wg.Done()
	a := Attempt{Start: time.Now()}
	line, err := p.once()
	a.End = time.Now()
	if p.ctx.Err() != nil {
		return // stopped: the failure is ours, not the network's
	}
	if err != nil {
		a.Err = err.Error()
	} else {
		a.OK, a.Line = true, line
	}
	p.mu.Lock()
	p.attempts = append(p.attempts, a)
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

func (p *Prober) once() (string, error) {
	ctx, cancel := context.WithTimeout(p.ctx, p.cfg.Timeout)
	defer cancel()
	conn, err := p.h.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	if p.cfg.Send != "" {
		if _, err := conn.Write([]byte(p.cfg.Send)); err != nil {
			return "", err
		}
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil && line == "" {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if p.cfg.Expect != "" && !strings.Contains(line, p.cfg.Expect) {
		return line, fmt.Errorf("got %q, want it to contain %q", line, p.cfg.Expect)
	}
	return line, nil
}

// Stop ends probing and waits for attempts in flight; they are not recorded.
// It is idempotent.
func (p *Prober) Stop() {
	p.cancel()
	<-p.done
}

// Attempts returns the finished attempts ordered by start time.
func (p *Prober) Attempts() []Attempt {
	p.mu.Lock()
	a := append([]Attempt(nil), p.attempts...)
	p.mu.Unlock()
	sort.SliceStable(a, func(i, j int) bool { return a[i].Start.Before(a[j].Start) })
	return a
}

// Counts returns the numbers of successful and failed attempts.
func (p *Prober) Counts() (ok, failed int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, a := range p.attempts {
		if a.OK {
			ok++
		} else {
			failed++
		}
	}
	return ok, failed
}

// Outages returns the failure windows in order. Precision is about one
// interval.
func (p *Prober) Outages() []Window {
	var ws []Window
	var cur *Window
	for _, a := range p.Attempts() {
		switch {
		case !a.OK && cur == nil:
			cur = &Window{Start: a.Start, End: a.End, Open: true}
		case !a.OK:
			if a.End.After(cur.End) {
				cur.End = a.End
			}
		case cur != nil:
			cur.End, cur.Open = a.Start, false
			ws = append(ws, *cur)
			cur = nil
		}
	}
	if cur != nil {
		ws = append(ws, *cur)
	}
	return ws
}

// LongestOutage returns the duration of the longest failure window, 0 when
// every attempt succeeded.
func (p *Prober) LongestOutage() time.Duration {
	var longest time.Duration
	for _, w := range p.Outages() {
		if d := w.Duration(); d > longest {
			longest = d
		}
	}
	return longest
}

// ErrProbeTimeout is returned by [Prober.WaitFor] when the wanted outcome
// did not show up in time.
var ErrProbeTimeout = errors.New("probe outcome not seen in time")

// WaitFor blocks until an attempt that started after the call finishes with
// the outcome ok (true: success, false: failure), and returns nil; it
// returns ErrProbeTimeout after timeout. It is how a test waits for "the
// client sees the outage" or "the client has recovered" without sleeping.
func (p *Prober) WaitFor(ok bool, timeout time.Duration) error {
	since := time.Now()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	seen := 0
	for {
		p.mu.Lock()
		for _, a := range p.attempts[seen:] {
			if a.OK == ok && !a.Start.Before(since) {
				p.mu.Unlock()
				return nil
			}
		}
		seen = len(p.attempts)
		changed := p.changed
		p.mu.Unlock()
		select {
		case <-changed:
		case <-p.done:
			return fmt.Errorf("prober stopped: %w", ErrProbeTimeout)
		case <-deadline.C:
			return fmt.Errorf("%w: wanted ok=%v from %s to %s within %s", ErrProbeTimeout, ok, p.h, p.addr, timeout)
		}
	}
}
