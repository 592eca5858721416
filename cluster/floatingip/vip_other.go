//go:build !linux

package floatingip

import (
	"errors"
	"net/netip"
)

// vipDeps is empty off Linux: there is no vip provider to aim anywhere.
type vipDeps struct{}

// newVIP fails off Linux: the vip provider needs netlink.
func newVIP(Config, netip.Addr, vipDeps) (Provider, error) {
	return nil, errors.New("floating_ip: the vip provider needs Linux")
}
