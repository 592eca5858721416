package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// scaleFirstPort is where the scale bench's routes start; the new path's
// dynamic range covers them.
const scaleFirstPort = 18000

// scaleRounds is how many times each size measures one more route and one
// more backend (-rounds).
var scaleRounds = 5

// runScale loads 1k, 5k, 10k routes (the sizes given) into one node, once
// with every route on the old path (dynamic range off) and once with every
// route in the dynamic range, and prints at each size: time to acknowledge
// the batch, time until HAProxy applied all of it after the last
// acknowledgement, reloads, agent and HAProxy memory, and what one more
// route and one more backend cost.
func runScale(bin, sizeList string) error {
	var sizes []int
	for _, f := range strings.Split(sizeList, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 16000 {
			return fmt.Errorf("bad size %q", f)
		}
		sizes = append(sizes, n)
	}
	largest := sizes[len(sizes)-1]
	bport, stopBackend := startBackend()
	defer stopBackend()
	fmt.Printf("drawbridge scale benchmark: one dev node, routes on 127.0.0.1:%d.. with one backend each, health checks off (so %d checks do not load this shared machine), 64 clients\n",
		scaleFirstPort, largest)
	for _, path := range []struct {
		label, dyn string
	}{
		{"old path: dynamic range off, a frontend per route, a reload per change", "off"},
		{fmt.Sprintf("new path: every route in the dynamic range %d-%d (runtime API)", scaleFirstPort, scaleFirstPort+largest+99), fmt.Sprintf("%d-%d", scaleFirstPort, scaleFirstPort+largest+99)},
	} {
		fmt.Printf("\n-- %s\n", path.label)
		if err := scalePath(bin, path.dyn, sizes, bport); err != nil {
			fmt.Printf("   stopped: %v\n", err)
		}
	}
	return nil
}

func scalePath(bin, dyn string, sizes []int, bport int) error {
	a, err := startAgent(bin, "DRAWBRIDGE_HAPROXY_DYNAMIC_PORTS="+dyn)
	if err != nil {
		return err
	}
	defer a.stop()
	client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	loaded := 0
	extra := scaleFirstPort + sizes[len(sizes)-1] + 50 // one more route goes here
	if dyn == "off" {
		nextPort = scaleFirstPort + 10500 // above the routes, below the ephemeral ports
		extra = freePorts(1)[0]
	}
	for _, size := range sizes {
		reloads0 := a.reloads()
		t0 := time.Now()
		var failed atomic.Int64
		var lastErr atomic.Value
		work := make(chan int)
		var wg sync.WaitGroup
		for c := 0; c < 64; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for port := range work {
					if err := putRoute(client, a, port, false, bport); err != nil {
						failed.Add(1)
						lastErr.Store(err.Error())
					}
				}
			}()
		}
		for p := scaleFirstPort + loaded; p < scaleFirstPort+size; p++ {
			work <- p
		}
		close(work)
		wg.Wait()
		ack := time.Since(t0)
		tAck := time.Now()
		st, err := a.status()
		if err != nil {
			return err
		}
		target := st.State.Index
		deadline := time.Now().Add(5 * time.Minute)
		for {
			s, err := a.status()
			if err == nil && s.HAProxy.AppliedIndex >= target {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%d routes: HAProxy did not apply index %d within 5 minutes (status: %s)", size, target, a.statusText())
			}
			time.Sleep(5 * time.Millisecond)
		}
		applied := time.Since(tAck)
		st, _ = a.status()
		procs, hrss := haproxyProcs(a.dir)
		fmt.Printf("%5d routes: %d added, acknowledged in %s (%d failed%s), all applied %s after the last acknowledgement, %d reloads; agent %s, HAProxy %d processes %s; table %d routes\n",
			size, size-loaded, ms(ack), failed.Load(), errSuffix(&lastErr), ms(applied), a.reloads()-reloads0,
			mb(procRSS(a.cmd.Process.Pid)), procs, mb(hrss), st.State.Routes)
		loaded = size

		// One more route, posted and timed until it answers, and right
		// after it one more backend on an existing route (a server-only
		// change), timed until HAProxy applied it; scaleRounds times, both
		// taken back between rounds. On the old path every round's route
		// reloads, so every backend change follows a reload: the moment the
		// old worker may still answer on the stats socket.
		var routeTimes, backendTimes []time.Duration
		var routeReloads, backendReloads uint64
		for range scaleRounds {
			r0 := a.reloads()
			t1 := time.Now()
			if err := putRoute(client, a, extra, false, bport); err != nil {
				return err
			}
			if !waitLive(extra, 60*time.Second) {
				return fmt.Errorf("one more route at %d routes never went live", size)
			}
			routeTimes = append(routeTimes, time.Since(t1))
			// A reload is confirmed a moment after the new worker answers:
			// wait for it, so it is counted here and does not delay the
			// next change.
			if err := waitApplied(a, time.Minute); err != nil {
				return err
			}
			routeReloads += a.reloads() - r0
			r0 = a.reloads()
			t2 := time.Now()
			if err := putRoute(client, a, scaleFirstPort, true, bport); err != nil {
				return err
			}
			if err := waitApplied(a, time.Minute); err != nil {
				return err
			}
			backendTimes = append(backendTimes, time.Since(t2))
			backendReloads += a.reloads() - r0
			// Put both back so the next round, and size, start from the
			// same table.
			_ = deleteRoute(client, a, extra)
			_ = putRoute(client, a, scaleFirstPort, false, bport)
			_ = waitApplied(a, time.Minute)
		}
		line := fmt.Sprintf("       one more route: live in %s (median of %d; %d reloads); one more backend right after it (server-only change): applied in %s (median; %d of %d made by a reload)",
			ms(pct(routeTimes, .5)), scaleRounds, routeReloads, ms(pct(backendTimes, .5)), backendReloads, scaleRounds)
		if dyn == "off" {
			// What the old hot path also ran before every runtime change.
			if d, err := timeCheck(filepath.Join(a.dir, "haproxy", "haproxy.cfg")); err == nil {
				line += fmt.Sprintf("; before this change a server-only change also rendered and ran haproxy -c on the whole file: %s at this size", ms(d))
			}
		}
		fmt.Println(line)
	}
	return nil
}

func errSuffix(v *atomic.Value) string {
	if s, ok := v.Load().(string); ok {
		return ", last: " + s
	}
	return ""
}

// putRoute upserts route port with one backend (two with second).
func putRoute(client *http.Client, a *agent, port int, second bool, bport int) error {
	backends := []map[string]any{{"address": "127.0.0.1", "port": bport}}
	if second {
		backends = append(backends, map[string]any{"address": "127.0.0.2", "port": bport})
	}
	body, _ := json.Marshal(map[string]any{"name": "s" + strconv.Itoa(port), "health_check": false, "backends": backends})
	req, _ := http.NewRequest("PUT", fmt.Sprintf("%s/v1/routes/%d", a.url(), port), bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return fmt.Errorf("PUT route %d: %d %s", port, resp.StatusCode, strings.TrimSpace(b.String()))
	}
	return nil
}

func deleteRoute(client *http.Client, a *agent, port int) error {
	req, _ := http.NewRequest("DELETE", fmt.Sprintf("%s/v1/routes/%d", a.url(), port), nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// timeCheck times haproxy -c on a copy of cfg.
func timeCheck(cfg string) (time.Duration, error) {
	t0 := time.Now()
	out, err := exec.Command("haproxy", "-W", "-c", "-f", cfg).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("%v: %s", err, out)
	}
	return time.Since(t0), nil
}

// waitApplied waits until HAProxy runs the table's latest index.
func waitApplied(a *agent, within time.Duration) error {
	st, err := a.status()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(within)
	for {
		s, err := a.status()
		if err == nil && s.HAProxy.AppliedIndex >= st.State.Index {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("index %d not applied within %v: %s", st.State.Index, within, a.statusText())
		}
		time.Sleep(time.Millisecond)
	}
}
