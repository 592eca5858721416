package cluster

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drawbridge-lb/drawbridge/internal/testenv"
)

func TestGossipAllowedCIDRsDropsOtherSources(t *testing.T) {
	a := startMember(t, "a", memberOpts{}, nil)
	// The closed member, on 127.0.0.2, admits only 127.0.0.2/32; a gossips
	// from 127.0.0.1.
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("no 127.0.0.2 on this machine: %v", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if _, err := NewMembership(GossipConfig{NodeName: "self-excluded", BindAddr: addr, AllowedCIDRs: []string{"10.0.0.0/8"}},
		func() Meta { return Meta{Role: RoleEdge} }, testenv.Logger(t)); err == nil || !strings.Contains(err.Error(), "own gossip address") {
		t.Fatalf("allowed CIDRs without the node's own address: %v", err)
	}
	closed, err := NewMembership(GossipConfig{NodeName: "closed", BindAddr: addr, AllowedCIDRs: []string{"127.0.0.2/32"}},
		func() Meta { return Meta{Role: RoleEdge} }, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer closed.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	// memberlist answers the push/pull but refuses the newcomer's alive
	// state: it never becomes a member on the closed side.
	a.members.Join(ctx, []string{addr})
	deadline := time.Now().Add(time.Second) // observation window
	for time.Now().Before(deadline) {
		for _, m := range closed.Members() {
			if m.Name == "a" {
				t.Fatal("the closed member lists a peer from outside its allowed CIDRs")
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := NewMembership(GossipConfig{NodeName: "x", BindAddr: testenv.FreeAddr(t), AllowedCIDRs: []string{"not-a-cidr"}},
		func() Meta { return Meta{} }, testenv.Logger(t)); err == nil {
		t.Error("a bad CIDR was accepted")
	}
}

func TestGossipMetadataTooLargeIsShortenedOrRefused(t *testing.T) {
	var long atomic.Value
	long.Store(strings.Repeat("e", 2000))
	var api atomic.Value
	api.Store("https://127.0.0.1:9000")
	meta := func() Meta {
		return Meta{Role: RoleEdge, RaftAddr: "127.0.0.1:9001", APIURL: api.Load().(string), Error: long.Load().(string),
			FIP: &FIPMeta{LastWhy: strings.Repeat("w", 500)}}
	}
	m, err := NewMembership(GossipConfig{NodeName: "big", BindAddr: testenv.FreeAddr(t)}, meta, testenv.Logger(t))
	if err != nil {
		t.Fatalf("a long error must be shortened, not refused: %v", err)
	}
	defer m.Shutdown()
	b := m.lastMeta
	if len(b) > 512 || !strings.Contains(string(b), `"r":"edge"`) {
		t.Fatalf("metadata %d bytes, role kept: %v", len(b), strings.Contains(string(b), `"r":"edge"`))
	}
	// An API address too long to fit is an error at start...
	api.Store("https://" + strings.Repeat("a", 600) + ":9000")
	if _, err := NewMembership(GossipConfig{NodeName: "huge", BindAddr: testenv.FreeAddr(t)}, meta, testenv.Logger(t)); !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("metadata over the limit at start: %v", err)
	}
	// ...and at run time the last metadata that fit stays.
	before := string(m.lastMeta)
	m.Refresh()
	if string(m.lastMeta) != before {
		t.Error("oversized metadata replaced the last good one")
	}
	if got := m.ml.LocalNode().Meta; len(got) == 0 {
		t.Error("the node gossips no metadata")
	}
}

func TestGossipReapsMembersGoneLongerThanReapAfter(t *testing.T) {
	a := startMember(t, "a", memberOpts{}, nil)
	b := startMember(t, "b", memberOpts{}, []string{a.gossip})
	testenv.Eventually(t, 5*time.Second, "b visible", func() bool { return len(a.members.Members()) == 2 })
	b.crash()
	testenv.Eventually(t, 10*time.Second, "b dead", func() bool {
		for _, m := range a.members.Members() {
			if m.Name == "b" {
				return m.Status == "dead"
			}
		}
		return false
	})
	a.members.reap(time.Now().Add(DefaultReapAfter - time.Minute))
	if len(a.members.Members()) != 2 {
		t.Fatal("b forgotten before reap_after")
	}
	a.members.reap(time.Now().Add(DefaultReapAfter + time.Minute))
	for _, m := range a.members.Members() {
		if m.Name == "b" {
			t.Fatal("b still known after reap_after")
		}
	}
}
