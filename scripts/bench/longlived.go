package main

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// runLongLived reproduces the long-lived-connection experiment: 2,000
// routes on one node, then 12 route additions 0.6 s apart with 5
// long-lived connections opened through existing routes before each. After
// every change it prints the HAProxy processes and their memory. It runs
// the additions outside the dynamic range (a reload each, no memory budget,
// as before), outside it with the default budget, and inside it.
func runLongLived(bin string) error {
	hold, stopHold := startHoldBackend()
	defer stopHold()
	fmt.Printf("drawbridge long-lived connections benchmark: one dev node, 2000 routes (health checks off), 12 route additions 0.6 s apart, 5 long-lived connections opened before each\n")
	first, _ := parseRange(dynamicRange)
	for _, run := range []struct {
		label, dyn, budget string
		inRange            bool
	}{
		{"old path as before: dynamic range off, no memory budget (old_workers_max_mb 0)", "off", "0", false},
		{"old path with the default budget: additions outside the dynamic range, old_workers_max_mb default", dynamicRange, "", false},
		{"new path: additions inside the dynamic range " + dynamicRange, dynamicRange, "", true},
	} {
		fmt.Printf("\n-- %s\n", run.label)
		if err := longLivedRun(bin, run.dyn, run.budget, run.inRange, first, hold); err != nil {
			fmt.Printf("   stopped: %v\n", err)
		}
	}
	return nil
}

func longLivedRun(bin, dyn, budget string, inRange bool, first, hold int) error {
	env := []string{"DRAWBRIDGE_HAPROXY_DYNAMIC_PORTS=" + dyn}
	if budget != "" {
		env = append(env, "DRAWBRIDGE_HAPROXY_OLD_WORKERS_MAX_MB="+budget)
	}
	a, err := startAgent(bin, env...)
	if err != nil {
		return err
	}
	defer a.stop()
	client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	// 2,000 base routes, half outside the range and half inside it, so
	// connections are held through both kinds.
	nextPort = 20000
	base := freePorts(1000)
	for p := first + 100; p < first+1100; p++ {
		base = append(base, p)
	}
	work := make(chan int)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for c := 0; c < 64; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for port := range work {
				if putRoute(client, a, port, false, hold) != nil {
					failed.Add(1)
				}
			}
		}()
	}
	for _, p := range base {
		work <- p
	}
	close(work)
	wg.Wait()
	st, _ := a.status()
	for deadline := time.Now().Add(3 * time.Minute); ; {
		s, err := a.status()
		if err == nil && s.HAProxy.AppliedIndex >= st.State.Index {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("2000 routes not applied: %s", a.statusText())
		}
		time.Sleep(20 * time.Millisecond)
	}
	procs, rss := haproxyProcs(a.dir)
	fmt.Printf("2000 routes loaded (%d failed): HAProxy %d processes, %s\n", failed.Load(), procs, mb(rss))
	time.Sleep(2 * time.Second) // let workers of the loading reloads finish
	reloads0 := a.reloads()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	var adds []int
	if inRange {
		for p := first + 2000; len(adds) < 12; p++ {
			adds = append(adds, p)
		}
	} else {
		adds = freePorts(12)
	}
	var maxRSS, maxOld uint64
	for i, port := range adds {
		for k := 0; k < 5; k++ {
			target := base[(i*5+k)*37%len(base)]
			c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(target), time.Second)
			if err != nil {
				return fmt.Errorf("long-lived connection to %d: %v", target, err)
			}
			conns = append(conns, c)
		}
		if err := putRoute(client, a, port, false, hold); err != nil {
			return err
		}
		time.Sleep(600 * time.Millisecond)
		procs, rss := haproxyProcs(a.dir)
		maxRSS = max(maxRSS, rss)
		st, _ := a.status()
		w := st.HAProxy.Workers
		maxOld = max(maxOld, w.OldWorkersRSS)
		fmt.Printf("  change %2d (port %d): HAProxy %2d processes, %s resident; old workers %d holding %d connections, %s; %d reloads so far\n",
			i+1, port, procs, mb(rss), w.OldWorkers, w.OldWorkerConns, mb(w.OldWorkersRSS), a.reloads()-reloads0)
	}
	time.Sleep(2 * time.Second) // one more budget check
	procs, rss = haproxyProcs(a.dir)
	alive := 0
	for _, c := range conns {
		if connAlive(c) {
			alive++
		}
	}
	st, _ = a.status()
	w := st.HAProxy.Workers
	budgetText := "no budget"
	if w.Budget > 0 {
		budgetText = "budget " + mb(w.Budget)
	}
	fmt.Printf("  after the 12 changes: %d reloads; HAProxy %d processes, %s resident (peak %s); old workers peak %s (%s), %d stopped by the budget closing %d connections; %d of %d long-lived connections still open\n",
		a.reloads()-reloads0, procs, mb(rss), mb(maxRSS), mb(maxOld), budgetText, w.OldWorkersStopped, w.ConnsClosed, alive, len(conns))
	return nil
}

// connAlive reports whether c is still open: a short read times out on an
// open idle connection and fails at once on a closed one.
func connAlive(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// startHoldBackend accepts connections and keeps them open, answering
// nothing, like an idle device or miner.
func startHoldBackend() (int, func()) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port, func() {
		ln.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	}
}
