package netns

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// kernelNetemMissing is set once tc reports that the kernel has no netem
// qdisc; from then on [Host.Netem] goes straight to the userspace relay.
var kernelNetemMissing atomic.Bool

// Netem impairs the traffic the host sends, as
// `tc qdisc replace dev eth0 root netem SPEC` would, for example
// "delay 50ms 10ms loss 1%". Replies are affected in the sense that they
// answer delayed requests, so a 50 ms delay adds 50 ms to every round trip
// that starts at this host or ends at it. Calling it again replaces the
// previous impairment.
//
// With kernel netem (sch_netem) every netem option works. Without it, a
// userspace relay in the switch namespace stands in the host's cable and
// understands "delay D [JITTER]" (uniform jitter; packet order is kept) and
// "loss P%"; any other option is an error.
func (h *Host) Netem(spec string) error {
	fields := strings.Fields(spec)
	if len(fields) == 0 {
		return errors.New("netem: empty spec")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !kernelNetemMissing.Load() {
		args := append([]string{"-n", h.NS, "qdisc", "replace", "dev", h.Iface, "root", "netem"}, fields...)
		out, err := run("tc", args...)
		if err == nil {
			return nil
		}
		if !strings.Contains(out, "qdisc kind is unknown") {
			return fmt.Errorf("netem on %s: %w", h, err)
		}
		kernelNetemMissing.Store(true)
	}
	p, err := parseNetem(fields)
	if err != nil {
		return fmt.Errorf("netem on %s (userspace relay, the kernel has no sch_netem): %w", h, err)
	}
	if h.relay == nil {
		r, err := startRelay(h)
		if err != nil {
			return fmt.Errorf("netem on %s: %w", h, err)
		}
		h.relay = r
	}
	h.relay.params.Store(&p)
	return nil
}

// ClearNetem removes any impairment set with [Host.Netem].
func (h *Host) ClearNetem() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.relay != nil {
		err := h.relay.stop()
		h.relay = nil
		if err != nil {
			return fmt.Errorf("clear netem on %s: %w", h, err)
		}
		return nil
	}
	if kernelNetemMissing.Load() {
		return nil
	}
	out, err := run("tc", "-n", h.NS, "qdisc", "del", "dev", h.Iface, "root")
	if err != nil && !strings.Contains(out, "handle of zero") && !strings.Contains(out, "No such file") {
		return fmt.Errorf("clear netem on %s: %w", h, err)
	}
	return nil
}

// netemParams is what the userspace relay emulates.
type netemParams struct {
	delay, jitter time.Duration
	loss          float64 // probability in [0, 1]
}

func parseNetem(f []string) (netemParams, error) {
	var p netemParams
	for i := 0; i < len(f); i++ {
		switch f[i] {
		case "delay":
			if i+1 >= len(f) {
				return p, errors.New(`"delay" needs a duration`)
			}
			d, err := parseTCTime(f[i+1])
			if err != nil {
				return p, err
			}
			p.delay = d
			i++
			if i+1 < len(f) {
				if j, err := parseTCTime(f[i+1]); err == nil {
					p.jitter = j
					i++
				}
			}
		case "loss":
			if i+1 < len(f) && f[i+1] == "random" {
				i++
			}
			if i+1 >= len(f) || !strings.HasSuffix(f[i+1], "%") {
				return p, errors.New(`"loss" needs a percentage like 1%`)
			}
			v, err := strconv.ParseFloat(strings.TrimSuffix(f[i+1], "%"), 64)
			if err != nil || v < 0 || v > 100 {
				return p, fmt.Errorf("bad loss %q", f[i+1])
			}
			p.loss = v / 100
			i++
		default:
			return p, fmt.Errorf("option %q is not supported (only delay D [JITTER] and loss P%%)", f[i])
		}
	}
	if p.jitter > p.delay {
		return p, errors.New("jitter larger than delay")
	}
	return p, nil
}

// parseTCTime parses tc's time syntax: a Go duration, or a bare number of
// microseconds.
func parseTCTime(s string) (time.Duration, error) {
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return d, nil
	}
	if v, err := strconv.ParseFloat(s, 64); err == nil && v >= 0 {
		return time.Duration(v * float64(time.Microsecond)), nil
	}
	return 0, fmt.Errorf("bad time %q", s)
}

// relay is the userspace stand-in for netem. In the switch namespace the
// host's bridge port hN is moved to a private bridge xN together with TAP aN;
// TAP bN is a port of the lab bridge. The relay copies frames between the two
// TAPs and delays or drops those the host sends:
//
//	host eth0 ── hN ─[xN]─ aN ⇄ relay ⇄ bN ─[br0]─ other hosts
//
// Cut and Block keep working, since they act on hN and on MAC addresses.
type relay struct {
	h      *Host
	a, b   *os.File
	bridge string
	params atomic.Pointer[netemParams]
	wg     sync.WaitGroup
	once   sync.Once
	err    error
}

func startRelay(h *Host) (*relay, error) {
	l := h.lab
	n := strings.TrimPrefix(h.port, "h")
	r := &relay{h: h, bridge: "x" + n}
	swPath := netnsDir + "/" + l.sw
	var err error
	if r.a, err = openTap(swPath, "a"+n); err != nil {
		return nil, err
	}
	if r.b, err = openTap(swPath, "b"+n); err != nil {
		r.a.Close()
		return nil, err
	}
	steps := [][]string{
		{"ip", "-n", l.sw, "link", "add", r.bridge, "type", "bridge",
			"stp_state", "0", "forward_delay", "0", "mcast_snooping", "0"},
		{"ip", "-n", l.sw, "link", "set", r.bridge, "up"},
		{"ip", "-n", l.sw, "link", "set", "a" + n, "master", r.bridge, "up"},
		{"ip", "-n", l.sw, "link", "set", "b" + n, "master", bridgeName, "up"},
		{"ip", "-n", l.sw, "link", "set", h.port, "master", r.bridge},
	}
	for _, s := range steps {
		if _, err := run(s[0], s[1:]...); err != nil {
			r.a.Close()
			r.b.Close()
			_, _ = run("ip", "-n", l.sw, "link", "set", h.port, "master", bridgeName)
			_, _ = run("ip", "-n", l.sw, "link", "del", r.bridge)
			return nil, err
		}
	}
	r.params.Store(&netemParams{})
	queue := make(chan frame, 4096)
	r.wg.Add(3)
	go r.egress(queue)
	go r.deliver(queue)
	go r.ingress()
	if !l.onClose(func() { _ = r.stop() }) {
		_ = r.stop()
		return nil, errors.New("lab closed")
	}
	return r, nil
}

type frame struct {
	data []byte
	due  time.Time
}

// egress reads what the host sends, drops or stamps it with a due time, and
// queues it. Due times never go backwards, so frames keep their order.
func (r *relay) egress(queue chan<- frame) {
	defer r.wg.Done()
	defer close(queue)
	buf := make([]byte, 65536)
	var last time.Time
	for {
		n, err := r.a.Read(buf)
		if err != nil {
			return
		}
		p := r.params.Load()
		if p.loss > 0 && rand.Float64() < p.loss {
			continue
		}
		d := p.delay
		if p.jitter > 0 {
			d += time.Duration((rand.Float64()*2 - 1) * float64(p.jitter))
		}
		due := time.Now().Add(d)
		if due.Before(last) {
			due = last
		}
		last = due
		select {
		case queue <- frame{data: append([]byte(nil), buf[:n]...), due: due}:
		default: // queue full: drop, like a full qdisc
		}
	}
}

// deliver writes queued frames into the lab bridge when they are due.
func (r *relay) deliver(queue <-chan frame) {
	defer r.wg.Done()
	for f := range queue {
		if d := time.Until(f.due); d > 0 {
			time.Sleep(d)
		}
		if _, err := r.b.Write(f.data); err != nil && errors.Is(err, os.ErrClosed) {
			for range queue { // drain until egress closes the queue
			}
			return
		}
	}
}

// ingress passes what the lab sends to the host through unchanged.
func (r *relay) ingress() {
	defer r.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, err := r.b.Read(buf)
		if err != nil {
			return
		}
		_, _ = r.a.Write(buf[:n])
	}
}

// stop puts the host's port back on the lab bridge and removes the relay.
func (r *relay) stop() error {
	r.once.Do(func() {
		l := r.h.lab
		_, err := run("ip", "-n", l.sw, "link", "set", r.h.port, "master", bridgeName)
		r.a.Close()
		r.b.Close()
		r.wg.Wait()
		if _, derr := run("ip", "-n", l.sw, "link", "del", r.bridge); derr != nil && err == nil {
			err = derr
		}
		r.err = err
	})
	return r.err
}
