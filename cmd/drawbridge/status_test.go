package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/drawbridge-lb/drawbridge/api"
)

// `drawbridge status` tells an operator to upgrade a node that skipped log
// entries a newer drawbridge wrote, and names the routes held back.
func TestPrintStatusSaysUpgradeAndHeldBack(t *testing.T) {
	var b bytes.Buffer
	st := api.Status{Node: "edge-1", Version: "1.0.0", UnknownCommands: 2,
		HAProxy: api.HAProxyStatus{Running: true, AppliedIndex: 4, ServedIndex: 9,
			FailedPorts: []api.FailedPort{{Port: 8443, Name: "web", Error: "bind: address already in use"}}}}
	if err := printStatus(&b, st); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"UPGRADE", "skipped 2 log entries", "upgrade drawbridge",
		"held back  port 8443 (web): bind: address already in use", "index 9 is not applied"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	b.Reset()
	cl := api.ClusterStatus{Members: []api.MemberStatus{{Name: "edge-1", Role: "edge", Status: "alive", UnknownCommands: 2, Held: 1}}}
	if err := printMembers(&b, cl); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "upgrade: skipped 2 newer log entries") || !strings.Contains(b.String(), "1 route(s) held back") {
		t.Errorf("members table does not say upgrade / held back:\n%s", b.String())
	}
}

// `drawbridge status` repeats the agent's trust warnings (a cluster run
// with cluster.insecure).
func TestPrintStatusShowsTrustWarnings(t *testing.T) {
	var b bytes.Buffer
	st := api.Status{Node: "edge-1", Warnings: []string{"INSECURE: raft runs without mutual TLS: anyone who reaches :9001 can vote"}}
	if err := printStatus(&b, st); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "WARNING  INSECURE: raft runs without mutual TLS") {
		t.Errorf("status output lacks the warning:\n%s", b.String())
	}
}
