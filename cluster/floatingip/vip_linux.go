//go:build linux

package floatingip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	// garpCount is how many gratuitous ARP announcements a claim sends.
	garpCount = 3
	// garpInterval is the gap between two announcements.
	garpInterval = 100 * time.Millisecond
)

// VIP is the "vip" provider (Linux): the floating IP is a secondary address
// on a local interface, for LANs and bare metal, and for tests in network
// namespaces.
//
// Claim adds Address/PrefixLen to the interface (an address already there,
// with any prefix length, makes Claim a no-op) and announces it with
// gratuitous ARP so switches and peers update their caches at once: an ARP
// request whose sender and target are the address (RFC 5227 announcement),
// broadcast [garpCount] times [garpInterval] apart. Claim returns after the
// first announcement; the rest go out in the background. Failing to announce
// is logged, not returned: the address is in place and peers will learn it
// by ordinary ARP.
//
// Release removes the address (whatever its prefix length) and stops
// announcements still in flight; an absent address is not an error. Held
// reports whether the address is on the interface.
type VIP struct {
	addr      netip.Addr
	prefixLen int
	ifname    string
	log       *slog.Logger
	nl        *netlink.Handle
	// inNS runs fn where sockets must be created (the namespace the handle
	// talks to); nil runs it on the calling goroutine.
	inNS func(fn func() error) error

	// op serializes Claim, Release and Announce: the owner's periodic
	// Announce must not send an announcement after a concurrent Release
	// (a graceful stop) removed the address.
	op sync.Mutex

	mu       sync.Mutex
	announce context.CancelFunc // stops background announcements
	done     chan struct{}      // closed when they are over
}

var (
	_ Provider  = (*VIP)(nil)
	_ Announcer = (*VIP)(nil)
)

// vipDeps let tests aim the provider at a throwaway network namespace.
type vipDeps struct {
	nl   *netlink.Handle
	inNS func(fn func() error) error
}

func newVIP(cfg Config, addr netip.Addr, deps vipDeps) (*VIP, error) {
	v := &VIP{
		addr:      addr,
		prefixLen: cfg.PrefixLen,
		ifname:    cfg.Interface,
		nl:        deps.nl,
		inNS:      deps.inNS,
	}
	if v.nl == nil {
		// The zero Handle opens a netlink socket per request in the calling
		// thread's namespace: the process's own.
		v.nl = &netlink.Handle{}
	}
	if v.inNS == nil {
		v.inNS = func(fn func() error) error { return fn() }
	}
	if v.ifname == "" {
		name, err := defaultRouteInterface(v.nl)
		if err != nil {
			return nil, fmt.Errorf("floating_ip: vip: %w; set floating_ip.interface", err)
		}
		v.ifname = name
	}
	if _, err := v.nl.LinkByName(v.ifname); err != nil {
		return nil, fmt.Errorf("floating_ip: vip: interface %q: %w", v.ifname, err)
	}
	v.log = cfg.Logger.With("address", addr.String(), "interface", v.ifname)
	return v, nil
}

// defaultRouteInterface returns the name of the interface of the first IPv4
// default route in the main table.
func defaultRouteInterface(h *netlink.Handle) (string, error) {
	routes, err := listRetry(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return "", fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		idx := r.LinkIndex
		if idx == 0 && len(r.MultiPath) > 0 {
			idx = r.MultiPath[0].LinkIndex
		}
		if idx == 0 {
			continue
		}
		l, err := h.LinkByIndex(idx)
		if err != nil {
			return "", fmt.Errorf("default route interface %d: %w", idx, err)
		}
		return l.Attrs().Name, nil
	}
	return "", errors.New("no interface given and no IPv4 default route to take it from")
}

// listRetry repeats a netlink dump a few times while the kernel reports it
// was interrupted by a concurrent change.
func listRetry[T any](fn func() ([]T, error)) ([]T, error) {
	var (
		out []T
		err error
	)
	for range 5 {
		out, err = fn()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return out, err
}

// Name returns "vip".
func (v *VIP) Name() string { return ProviderVIP }

// Interface returns the interface the address goes on.
func (v *VIP) Interface() string { return v.ifname }

// link looks the interface up by name on every call, so an interface that
// was recreated (new index) is still found.
func (v *VIP) link() (netlink.Link, error) {
	l, err := v.nl.LinkByName(v.ifname)
	if err != nil {
		return nil, fmt.Errorf("vip: interface %q: %w", v.ifname, err)
	}
	return l, nil
}

// present returns the addresses on l that carry v.addr (normally zero or one).
func (v *VIP) present(l netlink.Link) ([]netlink.Addr, error) {
	addrs, err := listRetry(func() ([]netlink.Addr, error) { return v.nl.AddrList(l, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("vip: list addresses of %s: %w", v.ifname, err)
	}
	var found []netlink.Addr
	for _, a := range addrs {
		if a.IPNet == nil {
			continue
		}
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == v.addr {
			found = append(found, a)
		}
	}
	return found, nil
}

// Held reports whether the address is on the interface.
func (v *VIP) Held(ctx context.Context) (bool, error) {
	_, found, err := v.lookup(ctx)
	return len(found) > 0, err
}

// lookup finds the interface and the addresses on it that carry v.addr,
// after checking ctx.
func (v *VIP) lookup(ctx context.Context) (netlink.Link, []netlink.Addr, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	l, err := v.link()
	if err != nil {
		return nil, nil, err
	}
	found, err := v.present(l)
	return l, found, err
}

// Claim adds the address to the interface and announces it.
func (v *VIP) Claim(ctx context.Context) error {
	v.op.Lock()
	defer v.op.Unlock()
	l, found, err := v.lookup(ctx)
	if err != nil {
		return err
	}
	if len(found) > 0 {
		// Already ours: announce again, so a network that last heard
		// another holder's announcements comes back to this one.
		v.startAnnounce(l, garpCount)
		return nil
	}
	a := &netlink.Addr{IPNet: &net.IPNet{
		IP:   v.addr.AsSlice(),
		Mask: net.CIDRMask(v.prefixLen, 32),
	}}
	if err := v.nl.AddrAdd(l, a); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("vip: add %s/%d to %s: %w", v.addr, v.prefixLen, v.ifname, err)
	}
	v.log.Info("floating IP added", "prefix_len", v.prefixLen)
	v.startAnnounce(l, garpCount)
	return nil
}

// Announce sends one gratuitous ARP for the address when it is on the
// interface (the owner's periodic refresh; see [Announcer]).
func (v *VIP) Announce(ctx context.Context) error {
	v.op.Lock()
	defer v.op.Unlock()
	l, found, err := v.lookup(ctx)
	if err != nil || len(found) == 0 {
		return err
	}
	v.startAnnounce(l, 1)
	return nil
}

// Release removes the address from the interface.
func (v *VIP) Release(ctx context.Context) error {
	v.op.Lock()
	defer v.op.Unlock()
	v.stopAnnounce()
	l, found, err := v.lookup(ctx)
	if err != nil {
		return err
	}
	for _, a := range found {
		err := v.nl.AddrDel(l, &a)
		if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("vip: delete %s from %s: %w", a.IPNet, v.ifname, err)
		}
		v.log.Info("floating IP removed", "prefix", a.IPNet.String())
	}
	return nil
}

// startAnnounce sends the first of count gratuitous ARPs now and the others
// in the background. Any announcement still running from an earlier claim is
// stopped first.
func (v *VIP) startAnnounce(l netlink.Link, count int) {
	v.stopAnnounce()
	attrs := l.Attrs()
	if len(attrs.HardwareAddr) != 6 {
		v.log.Debug("interface has no Ethernet address; no gratuitous ARP")
		return
	}
	ifi := &net.Interface{Index: attrs.Index, Name: attrs.Name, HardwareAddr: attrs.HardwareAddr, MTU: attrs.MTU}
	frame, err := garpFrame(attrs.HardwareAddr, v.addr)
	if err != nil {
		v.log.Warn("gratuitous ARP not sent", "err", err)
		return
	}
	var conn *packet.Conn
	err = v.inNS(func() error {
		var err error
		conn, err = packet.Listen(ifi, packet.Raw, unix.ETH_P_ARP, nil)
		return err
	})
	if err != nil {
		v.log.Warn("gratuitous ARP not sent: open packet socket", "err", err)
		return
	}
	dst := &packet.Addr{HardwareAddr: ethernet.Broadcast}
	send := func(n int) {
		if _, err := conn.WriteTo(frame, dst); err != nil {
			v.log.Warn("gratuitous ARP failed", "n", n, "err", err)
		}
	}
	send(1)
	if count <= 1 {
		conn.Close()
		return
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	v.mu.Lock()
	v.announce, v.done = cancel, done
	v.mu.Unlock()
	go func() {
		defer close(done)
		defer conn.Close()
		for n := 2; n <= count; n++ {
			if sleepCtx(ctx, garpInterval) != nil {
				return
			}
			send(n)
		}
	}()
}

// stopAnnounce stops background announcements and waits for them to end.
func (v *VIP) stopAnnounce() {
	v.mu.Lock()
	cancel, done := v.announce, v.done
	v.announce, v.done = nil, nil
	v.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// garpFrame builds the Ethernet frame of a gratuitous ARP announcement: an
// ARP request from hw for ip, whose target is ip itself, broadcast.
func garpFrame(hw net.HardwareAddr, ip netip.Addr) ([]byte, error) {
	p, err := arp.NewPacket(arp.OperationRequest, hw, ip, net.HardwareAddr{0, 0, 0, 0, 0, 0}, ip)
	if err != nil {
		return nil, err
	}
	pb, err := p.MarshalBinary()
	if err != nil {
		return nil, err
	}
	f := &ethernet.Frame{
		Destination: ethernet.Broadcast,
		Source:      hw,
		EtherType:   ethernet.EtherTypeARP,
		Payload:     pb,
	}
	return f.MarshalBinary()
}
