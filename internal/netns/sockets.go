package netns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
)

// DialContext connects to address from inside the host's namespace. The
// host part of address must be an IP literal (no name resolution happens in
// the namespace). It fits http.Transport.DialContext, so an HTTP client can
// speak to drawbridge as the host would.
func (h *Host) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if err := ipLiteral(address); err != nil {
		return nil, err
	}
	var conn net.Conn
	err := inNetns(h.nsPath(), func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, address)
		return err
	})
	return conn, err
}

// Listen opens a listener inside the host's namespace, for example a backend
// served by the test process. address must use an IP literal or an empty
// host.
func (h *Host) Listen(network, address string) (net.Listener, error) {
	if err := ipLiteral(address); err != nil {
		return nil, err
	}
	var ln net.Listener
	err := inNetns(h.nsPath(), func() error {
		var err error
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// ListenPacket opens a packet listener (UDP) inside the host's namespace.
func (h *Host) ListenPacket(network, address string) (net.PacketConn, error) {
	if err := ipLiteral(address); err != nil {
		return nil, err
	}
	var pc net.PacketConn
	err := inNetns(h.nsPath(), func() error {
		var err error
		pc, err = net.ListenPacket(network, address)
		return err
	})
	return pc, err
}

func (h *Host) nsPath() string { return filepath.Join(netnsDir, h.NS) }

// ipLiteral rejects addresses that would need name resolution.
func ipLiteral(address string) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("address %q: %w", address, err)
	}
	if host == "" {
		return nil
	}
	if _, err := netip.ParseAddr(strings.Trim(host, "[]")); err != nil {
		return fmt.Errorf("address %q: host must be an IP literal inside a namespace", address)
	}
	return nil
}
