package procfs

import (
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		in    string
		state byte
		ppid  int
		ok    bool
	}{
		{"123 (haproxy) S 1 123 123 0", 'S', 1, true},
		{"7 (a) b) (c) Z 42 7", 'Z', 42, true},
		{"9 (no close paren S 1", 0, 0, false},
		{"9 (short) S", 0, 0, false},
		{"9 (bad) S x", 'S', 0, false},
	} {
		st, ppid, ok := ParseStat([]byte(tc.in))
		if ok != tc.ok || (ok && (st != tc.state || ppid != tc.ppid)) {
			t.Errorf("ParseStat(%q) = %c %d %v, want %c %d %v", tc.in, st, ppid, ok, tc.state, tc.ppid, tc.ok)
		}
	}
}

func TestChildren(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if kids := Children(os.Getpid()); !slices.Contains(kids, cmd.Process.Pid) {
		t.Fatalf("Children(self) = %v, want it to hold %d", kids, cmd.Process.Pid)
	}
	if kids := Children(cmd.Process.Pid); len(kids) != 0 {
		t.Errorf("a sleep has children %v", kids)
	}
}

func TestCPUTime(t *testing.T) {
	before, err := CPUTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Burn CPU until /proc shows it (its clock ticks every 10 ms).
	deadline := time.Now().Add(10 * time.Second)
	x := 0
	for time.Now().Before(deadline) {
		for i := 0; i < 1e6; i++ {
			x += i
		}
		if after, err := CPUTime(os.Getpid()); err != nil || after >= before+50*time.Millisecond {
			if err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("10 s of spinning did not show 50 ms of CPU time (%d)", x)
}

func TestCPUTimeOfNoProcess(t *testing.T) {
	if _, err := CPUTime(1 << 30); err == nil {
		t.Fatal("CPUTime of a process that does not exist: no error")
	}
}

func TestMachineBusyCountsThisProcess(t *testing.T) {
	before, err := MachineBusy()
	if err != nil {
		t.Fatal(err)
	}
	self, _ := CPUTime(os.Getpid())
	deadline := time.Now().Add(10 * time.Second)
	x := 0
	for time.Now().Before(deadline) {
		for i := 0; i < 1e6; i++ {
			x += i
		}
		now, _ := CPUTime(os.Getpid())
		if now < self+100*time.Millisecond {
			continue
		}
		after, err := MachineBusy()
		if err != nil {
			t.Fatal(err)
		}
		// The machine was busy at least while this process ran (less a
		// tick of rounding on each side).
		if after-before < now-self-20*time.Millisecond {
			t.Fatalf("machine busy %v while this process ran %v", after-before, now-self)
		}
		return
	}
	t.Fatalf("10 s of spinning did not show 100 ms of CPU time (%d)", x)
}

func TestCPUTimesCountsWaitedChildren(t *testing.T) {
	_, before, err := CPUTimes(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// A child that spins for a while, then is waited for.
	cmd := exec.Command("sh", "-c", `end=$(($(date +%s) + 1)); while [ "$(date +%s)" -le "$end" ]; do :; done`)
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	_, after, err := CPUTimes(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if after-before < 100*time.Millisecond {
		t.Fatalf("children's CPU time %v -> %v after a child spun for a second", before, after)
	}
}
